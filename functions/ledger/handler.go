package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// commandBytesMax bounds the body of a delivered command.
const commandBytesMax = 64 << 10

// Handler is the ledger's HTTP surface: POST / receives one kawase.order.command.v1 CloudEvent
// (binary or structured mode) from the ordered KafkaSource. Knative's delivery contract decides the
// status codes: 200 with the result once applied (or applied before); 400 for an event that can never
// be applied (dead-lettered at once); 503 for a transient failure (redelivered, the partition waits).
func (l *Ledger) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", l.serveCommand)
	return mux
}

func (l *Ledger) serveCommand(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, commandBytesMax)
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
				Title: "command too large", Detail: err.Error()})
			return
		}
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "not_a_cloudevent",
			Title: "not a CloudEvent", Detail: err.Error()})
		return
	}
	cmd, err := eventing.Decode[eventing.OrderCommandV1](*ev, eventing.TypeOrderCommand)
	if err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_command",
			Title: "invalid order command", Detail: err.Error()})
		return
	}
	if pk := eventing.PartitionKey(*ev); pk != "" && pk != cmd.AccountID {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "wrong_partition_key",
			Title: "command keyed by another account", Detail: "partitionkey " + pk + " is not account " + cmd.AccountID})
		return
	}
	l.awaitFirstQuotes(r.Context())
	res, err := l.Apply(r.Context(), cmd)
	if err != nil {
		l.log.Warnw("command failed; asking for redelivery", "command", cmd.CommandID, "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "ledger_unavailable",
			Title: "command not applied; retry", Detail: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// firstQuotesWaitMs bounds how long a command delivered before the ledger has any quote waits for
// the first ones (the rates stream's snapshot arrives within moments of start-up). After that it is
// applied anyway, and an order that needs a price is rejected no_price: a final answer, rather than
// a redelivery that would end in the dead letters if the rates service stayed away.
const firstQuotesWaitMs = 3_000

// quoteWaiter is a PriceSource that can say whether it holds quotes and wait for the next change, as
// the QuoteBook does.
type quoteWaiter interface {
	Ready(ctx context.Context) error
	Changed() <-chan struct{}
}

// awaitFirstQuotes holds a command that arrived before any quote until quotes arrive, for at most
// firstQuotesWaitMs: right after a restart the first deliveries would otherwise be rejected for want
// of a price that is moments away.
func (l *Ledger) awaitFirstQuotes(ctx context.Context) {
	qw, ok := l.prices.(quoteWaiter)
	if !ok || qw.Ready(ctx) == nil {
		return
	}
	deadline := time.NewTimer(firstQuotesWaitMs * time.Millisecond)
	defer deadline.Stop()
	for {
		changed := qw.Changed()
		if qw.Ready(ctx) == nil {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// isRetryable reports whether err is a conflict PostgreSQL resolves by aborting one transaction
// (serialization failure, deadlock), which the same command can simply run again.
func isRetryable(err error) bool {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return false
	}
	return pg.Code == "40001" || pg.Code == "40P01"
}
