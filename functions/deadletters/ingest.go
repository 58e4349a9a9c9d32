package deadletters

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// deadLetterBytesMax bounds a delivered dead letter: Kafka's default record limit.
const deadLetterBytesMax = 1 << 20

// ingest stores one dead letter delivered by the KafkaSource. It answers 204 once the letter is
// durable, 503 when the database is not (the source retries), and 400 only for a body that is not a
// CloudEvent at all (it goes to the overflow sink).
func (s *Service) ingest(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, deadLetterBytesMax)
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "bad_cloudevent",
			Title: "not a CloudEvent", Detail: err.Error()})
		return
	}
	in := readDeadLetter(e)
	id, inserted, err := s.store.put(r.Context(), in)
	if err != nil {
		s.log.Errorw("storing a dead letter failed; the source will redeliver it", "eventId", in.eventID, "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "store_unavailable",
			Title: "dead letter not stored", Detail: "the database is unavailable; retry"})
		return
	}
	s.received.WithLabelValues(in.category).Inc()
	if inserted {
		s.log.Debugw("dead letter stored", "id", id, "eventId", in.eventID, "type", in.eventType,
			"category", in.category, "dest", in.dest, "code", in.errorCode)
	}
	w.WriteHeader(http.StatusNoContent)
}

// readDeadLetter splits a dead-lettered event into the original event and Knative's error
// extensions, and categorizes it.
func readDeadLetter(e *cloudevents.Event) incoming {
	attrs := map[string]string{"specversion": e.SpecVersion(), "id": e.ID(), "source": e.Source(), "type": e.Type()}
	for k, v := range map[string]string{"subject": e.Subject(), "datacontenttype": e.DataContentType(),
		"dataschema": e.DataSchema()} {
		if v != "" {
			attrs[k] = v
		}
	}
	if !e.Time().IsZero() {
		attrs["time"] = e.Time().UTC().Format(time.RFC3339Nano)
	}
	in := incoming{eventID: e.ID(), source: e.Source(), eventType: e.Type(), data: e.Data()}
	for k, v := range e.Extensions() {
		s, err := types.Format(v)
		if err != nil {
			s = ""
		}
		switch k {
		case extErrorDest:
			in.dest = s
		case extErrorCode:
			if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
				in.errorCode = &n
			}
		case extErrorData:
			if b, err := base64.StdEncoding.DecodeString(s); err == nil {
				in.errorData = b
			} else {
				in.errorData = []byte(s) // not base64 after all: keep what came
			}
		case extKafkaPartition:
			if n, err := strconv.ParseInt(s, 10, 32); err == nil {
				p := int32(n)
				in.kafkaPartition = &p
			}
		case extKafkaOffset:
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				in.kafkaOffset = &n
			}
		default:
			attrs[k] = s
		}
	}
	in.attributes = attrs
	in.partitionKey = attrs[extPartitionKey]
	code := 0
	if in.errorCode != nil {
		code = *in.errorCode
	}
	in.category = categorize(code)
	return in
}
