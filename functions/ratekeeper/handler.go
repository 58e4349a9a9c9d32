package ratekeeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// Limits of a delivery.
const (
	eventBytesMax = 64 << 10
)

// ErrOutOfRange marks a well-formed rate whose time or price cannot be a real quote (see
// eventing.RateV1.CheckRange); like eventing.ErrInvalid it is permanent.
var ErrOutOfRange = eventing.ErrOutOfRange

// Handler is the KafkaSource sink: POST / with one kawase.rate.v1 CloudEvent (binary or structured
// mode). It answers 200 once the rate is processed or found already processed, 4xx (dead-letter) for
// an event that can never be processed, and 503 (retry) when the database cannot commit it now.
func (k *Keeper) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", k.receiveRate)
	return mux
}

func (k *Keeper) receiveRate(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, eventBytesMax)
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		k.refuse(w, readProblem(err))
		return
	}
	rate, err := eventing.Decode[eventing.RateV1](*ev, eventing.TypeRate)
	if err == nil {
		err = rate.CheckRange(k.cfg.Now())
	}
	if err != nil {
		k.refuse(w, decodeProblem(err))
		return
	}
	outcome, err := k.Process(r.Context(), rate)
	if err != nil {
		p := observe.Problem{Status: http.StatusServiceUnavailable, Code: "store_unavailable",
			Title: "rate not committed; retry", Detail: err.Error()}
		if errors.Is(err, ErrOverloaded) {
			p.Code, p.Title = "overloaded", "too many rates waiting; retry"
		}
		w.Header().Set("Retry-After", "1")
		observe.WriteProblem(w, p)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"outcome": string(outcome), "id": rate.EventID()})
}

// refuse answers a delivery that can never be processed, so Knative dead-letters it with the reason.
func (k *Keeper) refuse(w http.ResponseWriter, p observe.Problem) {
	k.metrics.outcomes[OutcomeInvalid].Inc()
	k.metrics.refused.WithLabelValues(p.Code).Inc()
	k.log.Warnw("rate refused", "code", p.Code, "detail", p.Detail)
	observe.WriteProblem(w, p)
}

// refusalCodes are the problem codes refuse answers with (readProblem's and decodeProblem's).
var refusalCodes = []string{"invalid_cloudevent", "event_too_large", "invalid_rate", "unknown_event_type", "rate_out_of_range"}

func readProblem(err error) observe.Problem {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return observe.Problem{Status: http.StatusRequestEntityTooLarge, Code: "event_too_large",
			Title: "event too large", Detail: fmt.Sprintf("an event is at most %d bytes", eventBytesMax)}
	}
	return observe.Problem{Status: http.StatusBadRequest, Code: "invalid_cloudevent",
		Title: "not a CloudEvent", Detail: err.Error()}
}

func decodeProblem(err error) observe.Problem {
	p := observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_rate", Title: "invalid rate",
		Detail: err.Error()}
	switch {
	case errors.Is(err, eventing.ErrUnknownType):
		p.Code, p.Title = "unknown_event_type", "not a kawase.rate.v1 event"
	case errors.Is(err, ErrOutOfRange):
		p.Code, p.Title = "rate_out_of_range", "rate out of range"
	}
	return p
}
