// Package ledgertest holds test tools for the ledger that tests elsewhere in the module (the trading
// end-to-end tests in cmd/kawase) share: a delivery loop that plays the ordered KafkaSource between
// kawase.commands and the ledger's HTTP handler, and a RateService gRPC server over a QuoteBook, so
// tests price from a real gRPC stream.
package ledgertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/ledger"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Retry schedule of the delivery loop (Knative retries 5xx with backoff and keeps the partition
// waiting meanwhile).
const (
	deliverBackoffMinMs = 20
	deliverBackoffMaxMs = 500
	deliverTimeoutMs    = 15_000
	// heldPollMs is how often a held delivery looks whether it may go.
	heldPollMs        = 10
	commitQueueMax    = 1024
	partitionQueueMax = 64
	// idleConnsMax keeps a connection per partition delivering at once (http.DefaultClient keeps two
	// per host, so most deliveries would dial anew).
	idleConnsMax = 64
)

// Dispatcher delivers the records of a topic to a CloudEvents sink over HTTP with Knative's ordered
// semantics: one record in flight per partition, 2xx commits, 5xx and transport errors retry, any
// other 4xx is dead-lettered (counted) and committed.
type Dispatcher struct {
	Brokers []string
	Topic   string
	Group   string
	// URL is the sink (the ledger's POST /).
	URL string
	// Client posts the deliveries; nil: one that keeps a connection per partition.
	Client *http.Client
	// Delivered and DeadLettered count records by outcome.
	Delivered, DeadLettered atomic.Int64
	// Held, while true, holds every delivery back, as a ledger that is slow or restarting would.
	Held atomic.Bool
}

// Run delivers until ctx ends or the reader fails. Offsets are committed asynchronously, the latest
// delivered record of each partition at a time (as Knative's dispatcher does), so commits never hold
// up delivery; records delivered but not yet committed when ctx ends are delivered again by the next
// Dispatcher of the group, as after a crash.
func (d *Dispatcher) Run(ctx context.Context) error {
	r := cekafka.NewGroupReader(d.Brokers, d.Topic, d.Group)
	defer r.Close()
	client := d.Client
	if client == nil {
		tr := &http.Transport{MaxIdleConns: idleConnsMax, MaxIdleConnsPerHost: idleConnsMax}
		defer tr.CloseIdleConnections()
		client = &http.Client{Transport: tr}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	commits := make(chan kafka.Message, commitQueueMax)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { commitLoop(ctx, r, commits) })
	workers := map[int]chan kafka.Message{}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dispatcher fetch: %w", err)
		}
		ch, ok := workers[m.Partition]
		if !ok {
			ch = make(chan kafka.Message, partitionQueueMax)
			workers[m.Partition] = ch
			wg.Go(func() { d.partition(ctx, client, ch, commits) })
		}
		select {
		case ch <- m:
		case <-ctx.Done():
			return nil
		}
	}
}

// commitLoop commits, whenever it can, the latest delivered record of every partition.
func commitLoop(ctx context.Context, r *kafka.Reader, commits <-chan kafka.Message) {
	for {
		var m kafka.Message
		select {
		case <-ctx.Done():
			return
		case m = <-commits:
		}
		latest := map[int]kafka.Message{m.Partition: m}
	drain:
		for {
			select {
			case m := <-commits:
				latest[m.Partition] = m
			default:
				break drain
			}
		}
		batch := make([]kafka.Message, 0, len(latest))
		for _, m := range latest {
			batch = append(batch, m)
		}
		if err := r.CommitMessages(ctx, batch...); err != nil {
			return
		}
	}
}

func (d *Dispatcher) partition(ctx context.Context, client *http.Client, ch <-chan kafka.Message, commits chan<- kafka.Message) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			if !d.deliver(ctx, client, m) {
				return
			}
			select {
			case commits <- m:
			case <-ctx.Done():
				return
			}
		}
	}
}

// deliver posts one record until the sink takes it or dead-letters it; false when ctx ended first.
func (d *Dispatcher) deliver(ctx context.Context, client *http.Client, m kafka.Message) bool {
	for d.Held.Load() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(heldPollMs * time.Millisecond):
		}
	}
	ev, err := cekafka.FromMessage(m)
	if err != nil {
		d.DeadLettered.Add(1)
		return true
	}
	backoff := deliverBackoffMinMs * time.Millisecond
	for {
		status, err := d.post(ctx, client, ev)
		switch {
		case ctx.Err() != nil:
			return false
		case err == nil && status/100 == 2:
			d.Delivered.Add(1)
			return true
		case err == nil && status/100 == 4 && !retryable4xx(status):
			d.DeadLettered.Add(1)
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, deliverBackoffMaxMs*time.Millisecond)
	}
}

func retryable4xx(status int) bool {
	return status == http.StatusNotFound || status == http.StatusRequestTimeout || status == http.StatusConflict ||
		status == http.StatusTooManyRequests
}

func (d *Dispatcher) post(ctx context.Context, client *http.Client, ev cloudevents.Event) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, deliverTimeoutMs*time.Millisecond)
	defer cancel()
	req, err := cehttp.NewHTTPRequestFromEvent(ctx, d.URL, ev)
	if err != nil {
		return 0, fmt.Errorf("dispatcher request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("dispatcher post: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// RateServer is a RateService gRPC server over a QuoteBook: GetRates answers from it and WatchRates
// streams a snapshot, then every change.
type RateServer struct {
	ratesv1.UnimplementedRateServiceServer
	Book *ledger.QuoteBook
}

// GetRates returns the book's quotes of the requested pairs.
func (s *RateServer) GetRates(_ context.Context, r *ratesv1.GetRatesRequest) (*ratesv1.GetRatesResponse, error) {
	return &ratesv1.GetRatesResponse{Rates: s.rates(r.GetPairs())}, nil
}

// WatchRates streams the snapshot, then the full book again after every change (tests have few pairs).
func (s *RateServer) WatchRates(r *ratesv1.WatchRatesRequest, stream grpc.ServerStreamingServer[ratesv1.WatchRatesResponse]) error {
	snapshot := true
	for {
		changed := s.Book.Changed()
		if err := stream.Send(&ratesv1.WatchRatesResponse{Snapshot: snapshot, Rates: s.rates(r.GetPairs())}); err != nil {
			return err
		}
		snapshot = false
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

func (s *RateServer) rates(pairs []string) []*ratesv1.Rate {
	var out []*ratesv1.Rate
	want := s.Book.Pairs()
	if len(pairs) > 0 {
		want = want[:0]
		for _, p := range pairs {
			want = append(want, fx.Pair(p))
		}
	}
	for _, p := range want {
		if q, ok := s.Book.Quote(p); ok {
			out = append(out, ledger.QuoteToProto(q))
		}
	}
	return out
}

// ServeRates serves a RateServer on a loopback TCP port until the returned stop is called; it returns
// the address.
func ServeRates(book *ledger.QuoteBook) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("serve rates: %w", err)
	}
	gs := grpc.NewServer()
	ratesv1.RegisterRateServiceServer(gs, &RateServer{Book: book})
	go func() { _ = gs.Serve(ln) }()
	return ln.Addr().String(), gs.Stop, nil
}

// bookChecks are the ledger's invariants as queries that return the rows violating them.
var bookChecks = []struct{ name, sql string }{
	{"currency not conserved", `SELECT currency, sum(amount) FROM ledger.postings GROUP BY currency HAVING sum(amount) <> 0`},
	{"unbalanced entry", `SELECT entry_account, entry_tx, currency FROM ledger.postings GROUP BY 1, 2, 3 HAVING sum(amount) <> 0`},
	{"balance differs from its postings", `SELECT a.id, a.balance, coalesce(sum(p.amount), 0) FROM ledger.accounts a
		LEFT JOIN ledger.postings p ON p.book = a.id AND p.currency = a.currency
		WHERE a.kind = 'customer' GROUP BY a.id, a.balance HAVING a.balance <> coalesce(sum(p.amount), 0)`},
	{"customer posting in a foreign currency", `SELECT p.book, p.currency FROM ledger.postings p
		JOIN ledger.accounts a ON a.id = p.book WHERE a.kind = 'customer' AND p.currency <> a.currency`},
	{"transaction ids with gaps", `SELECT a.id, a.tx_seq, count(t.id), max(t.id) FROM ledger.accounts a
		LEFT JOIN ledger.transactions t ON t.account_id = a.id WHERE a.kind = 'customer'
		GROUP BY a.id, a.tx_seq HAVING count(t.id) <> a.tx_seq OR coalesce(max(t.id), 0) <> a.tx_seq`},
	{"execution sequence with gaps", `SELECT a.id, a.exec_seq, count(x.id) FROM ledger.accounts a
		LEFT JOIN ledger.executions x ON x.account_id = a.id WHERE a.kind = 'customer'
		GROUP BY a.id, a.exec_seq HAVING count(x.id) <> a.exec_seq OR coalesce(max(x.account_seq), 0) <> a.exec_seq`},
	{"filled order without exactly one execution", `SELECT o.id, o.status, count(x.id) FROM ledger.orders o
		LEFT JOIN ledger.executions x ON x.order_id = o.id GROUP BY o.id, o.status
		HAVING (o.status = 'filled') <> (count(x.id) = 1) OR count(x.id) > 1`},
	{"position differs from the net of executions", `WITH n AS (SELECT account_id, pair,
		sum(CASE side WHEN 'buy' THEN units ELSE -units END) AS units FROM ledger.executions GROUP BY 1, 2)
		SELECT coalesce(n.account_id, p.account_id), coalesce(n.pair, p.pair), n.units, p.units
		FROM n FULL JOIN ledger.positions p ON p.account_id = n.account_id AND p.pair = n.pair
		WHERE coalesce(n.units, 0) <> coalesce(p.units, 0)`},
	{"balance differs from deposit plus realized P&L", `SELECT a.id, a.balance, a.deposit + coalesce(sum(x.realized_pl), 0)
		FROM ledger.accounts a LEFT JOIN ledger.executions x ON x.account_id = a.id WHERE a.kind = 'customer'
		GROUP BY a.id HAVING a.balance <> a.deposit + coalesce(sum(x.realized_pl), 0)`},
}

// CheckBooks checks the ledger's invariants over its whole database and describes each violation:
// every currency sums to zero over all postings (house accounts included) and every entry balances;
// every customer balance is the sum of its postings, in its currency only, and its deposit plus its
// realized P&L; transaction ids and execution sequences have no gaps; a filled order has exactly one
// execution and no other order has any; every position is the net of the account's executions.
func CheckBooks(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	var out []string
	for _, c := range bookChecks {
		rows, err := pool.Query(ctx, c.sql)
		if err != nil {
			return nil, fmt.Errorf("check %s: %w", c.name, err)
		}
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("check %s: %w", c.name, err)
			}
			out = append(out, fmt.Sprintf("%s: %v", c.name, vals))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("check %s: %w", c.name, err)
		}
	}
	return out, nil
}
