package ledger_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/functions/ledger"
	"github.com/kawase-fx/kawase/functions/ledger/ledgertest"
)

// Size of the crash test (the is 20,000 orders with kill -9; this is the same shape scaled to
// a shared two-core machine).
const (
	crashAccounts     = 20
	crashCommands     = 3_000
	crashRunMinMs     = 30
	crashRunMaxMs     = 600
	crashRoundsMax    = 2_000
	crashDepositJPY   = "50000000"
	crashLimitEvery   = 5
	crashCancelEvery  = 7
	crashPriceMoveBps = 20
)

// TestCrashRecovery kills the ledger's consumer again and again — its context is cancelled at random
// points, abandoning in-flight HTTP requests, database transactions, outbox rounds and offset
// commits, and a new ledger instance with a new consumer of the same group takes over — while
// thousands of commands flow. Afterwards every command has exactly one outcome (one inbox entry, one
// order per placement), no execution is duplicated, every currency is conserved, every balance
// matches its postings, and every execution and result reached Kafka (deduplicated by id, with the
// executions of each account numbered without gaps).
func TestCrashRecovery(t *testing.T) {
	e := newEnv(t, testConfig())
	for i := range crashAccounts {
		e.open(t, acctName(i), "JPY", crashDepositJPY)
	}
	cmds := crashCommandStream()
	w := cekafka.NewWriter(e.brokers, eventing.TopicCommands)
	defer w.Close()
	rng := rand.New(rand.NewPCG(7, 11))
	published := 0
	crashes := 0
	var replays, failures float64
	for round := 0; ; round++ {
		if round > crashRoundsMax {
			t.Fatalf("not done after %d rounds", round)
		}
		// Keep publishing while crashing, as clients would.
		if published < len(cmds) {
			n := min(len(cmds)-published, 150)
			if err := cekafka.Publish(context.Background(), w, cmds[published:published+n]...); err != nil {
				t.Fatal(err)
			}
			published += n
		}
		movePrices(e.book, rng)
		done := e.count(t, `SELECT count(*) FROM ledger.inbox`)
		if published == len(cmds) && done == len(cmds) {
			break
		}
		r, f := e.crashRound(t, time.Duration(crashRunMinMs+rng.IntN(crashRunMaxMs-crashRunMinMs))*time.Millisecond)
		replays, failures = replays+r, failures+f
		crashes++
	}
	// A last, clean run drains the outbox.
	r, f := e.crashRound(t, 0)
	replays, failures = replays+r, failures+f
	t.Logf("%d commands applied across %d crashes; %.0f redeliveries answered from the inbox, %.0f attempts cut off",
		len(cmds), crashes, replays, failures)
	if replays == 0 {
		t.Error("no command was redelivered after being applied: the crashes exercised nothing")
	}
	e.verifyCrashOutcome(t, cmds)
}

func acctName(i int) string { return fmt.Sprintf("acct-%02d", i) }

// crashCommandStream is the commands of the test: per account, market orders both ways in several
// pairs, limit orders, and cancels of earlier limit orders.
func crashCommandStream() []cloudevents.Event {
	pairs := []string{"USD_JPY", "EUR_USD", "EUR_JPY", "GBP_USD", "EUR_GBP"}
	var out []cloudevents.Event
	for n := range crashCommands {
		acct := acctName(n % crashAccounts)
		k := n / crashAccounts
		id := fmt.Sprintf("%s-%04d", acct, k)
		var cmd *eventing.OrderCommandV1
		switch {
		case k%crashCancelEvery == crashCancelEvery-1 && k >= crashLimitEvery:
			target := fmt.Sprintf("%s-%04d", acct, (k/crashLimitEvery)*crashLimitEvery-1)
			cmd = &eventing.OrderCommandV1{CommandID: "cancel:" + id, Kind: eventing.CommandCancel, AccountID: acct,
				OrderID: target, RequestedAt: time.Now().UTC()}
		case k%crashLimitEvery == crashLimitEvery-1:
			cmd = pending(acct, id, "USD_JPY", "buy", "1000", "limit", "140.000")
		default:
			side := "buy"
			if k%2 == 1 {
				side = "sell"
			}
			cmd = market(acct, id, pairs[k%len(pairs)], side, strconv.Itoa(1000*(1+k%3)))
		}
		ev, err := eventing.NewEvent(eventing.TypeOrderCommand, cmd.CommandID, cmd)
		if err != nil {
			panic(err)
		}
		out = append(out, ev)
	}
	return out
}

// movePrices moves every quote by up to crashPriceMoveBps, so fills realize profits and losses.
func movePrices(b *ledger.QuoteBook, rng *rand.Rand) {
	for _, p := range b.Pairs() {
		q, _ := b.Quote(p)
		f := d(strconv.FormatFloat(1+float64(rng.IntN(2*crashPriceMoveBps+1)-crashPriceMoveBps)/10_000, 'f', 4, 64))
		spread := q.Ask.Sub(q.Bid)
		prec := int32(5)
		if q.Bid.Exponent() == -3 {
			prec = 3
		}
		q.Bid = q.Bid.Mul(f).Round(prec)
		q.Ask = q.Bid.Add(spread)
		q.Time = time.Now().UTC()
		b.Set(q)
	}
}

// crashRound runs a fresh ledger instance (publisher and watcher included) with a fresh consumer for
// about life, then kills both by cancelling their context. life 0 runs until the commands are all
// applied and the outbox is empty.
func (e *env) crashRound(t *testing.T, life time.Duration) (replays, failures float64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := ledger.New(e.cfg, ledger.Deps{Pool: e.pool, Prices: e.book, Brokers: e.brokers, Log: zapNop(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := httptest.NewServer(l.Handler())
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	disp := &ledgertest.Dispatcher{Brokers: e.brokers, Topic: eventing.TopicCommands, Group: "ledger", URL: srv.URL + "/"}
	go func() { _ = l.Run(ctx); done <- struct{}{} }()
	go func() { _ = disp.Run(ctx); done <- struct{}{} }()
	if life > 0 {
		time.Sleep(life)
	} else {
		eventually(t, "all commands applied and published", func() bool {
			return e.count(t, `SELECT count(*) FROM ledger.inbox`) == crashCommands &&
				e.count(t, `SELECT count(*) FROM ledger.outbox`) == 0
		})
	}
	cancel()
	<-done
	<-done
	srv.CloseClientConnections()
	if n := disp.DeadLettered.Load(); n > 0 {
		t.Errorf("%d commands dead-lettered", n)
	}
	if replays, err = metrictest.Value(reg, "kawase_ledger_commands_total", map[string]string{"outcome": "replay"}); err != nil {
		t.Fatal(err)
	}
	if failures, err = metrictest.Value(reg, "kawase_ledger_command_errors_total", nil); err != nil {
		t.Fatal(err)
	}
	return replays, failures
}

func (e *env) verifyCrashOutcome(t *testing.T, cmds []cloudevents.Event) {
	t.Helper()
	ctx := context.Background()
	if n := e.count(t, `SELECT count(*) FROM ledger.inbox WHERE command_id = ANY($1)`, eventIDs(cmds)); n != len(cmds) {
		t.Errorf("commands with an outcome = %d, want %d", n, len(cmds))
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.inbox`); n != len(cmds) {
		t.Errorf("inbox entries = %d, want exactly the %d commands", n, len(cmds))
	}
	places := 0
	for _, c := range cmds {
		if len(c.ID()) > 6 && c.ID()[:6] == "place:" {
			places++
		}
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.orders`); n != places {
		t.Errorf("orders = %d, want one per placement (%d)", n, places)
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.orders WHERE type = 'market' AND status NOT IN ('filled', 'rejected')`); n != 0 {
		t.Errorf("%d market orders without a final state", n)
	}
	checkBooks(t, e.pool)
	fills := e.count(t, `SELECT count(*) FROM ledger.executions`)
	if fills == 0 {
		t.Fatal("no executions: the test exercised nothing")
	}
	execs := readTopic(t, e.brokers, eventing.TopicExecutions)
	seqs := map[string]map[int64]string{}
	dups := 0
	for _, ev := range execs {
		x, err := eventing.Decode[eventing.TradeExecutedV1](ev, eventing.TypeTradeExecuted)
		if err != nil {
			t.Fatal(err)
		}
		if seqs[x.AccountID] == nil {
			seqs[x.AccountID] = map[int64]string{}
		}
		if prev, ok := seqs[x.AccountID][x.AccountSeq]; ok {
			if prev != x.ExecutionID {
				t.Errorf("account %s seq %d names %s and %s", x.AccountID, x.AccountSeq, prev, x.ExecutionID)
			}
			dups++
			continue
		}
		seqs[x.AccountID][x.AccountSeq] = x.ExecutionID
	}
	distinct := 0
	for acct, m := range seqs {
		for s := int64(1); s <= int64(len(m)); s++ {
			if _, ok := m[s]; !ok {
				t.Errorf("account %s: execution seq %d missing from the topic", acct, s)
			}
		}
		distinct += len(m)
	}
	if distinct != fills {
		t.Errorf("distinct executions on the topic = %d, in the ledger %d", distinct, fills)
	}
	results := readTopic(t, e.brokers, eventing.TopicOrderResults)
	seen := map[string]bool{}
	for _, ev := range results {
		seen[ev.ID()] = true
	}
	for _, c := range cmds {
		if !seen[ledger.ResultEventID(c.ID())] {
			t.Errorf("no result event for %s", c.ID())
		}
	}
	t.Logf("%d executions (%d republished duplicates on the topic), %d results", fills, dups, len(seen))
	_ = ctx
}

func eventIDs(evs []cloudevents.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID()
	}
	return out
}

// readTopic reads every record of every partition of topic, from the start to the current end.
func readTopic(t *testing.T, brokers []string, topic string) []cloudevents.Event {
	t.Helper()
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out []cloudevents.Event
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := lc.ReadLastOffset()
		lc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ev)
			if m.Offset >= last-1 {
				break
			}
		}
		r.Close()
	}
	return out
}
