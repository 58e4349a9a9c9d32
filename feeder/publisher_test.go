package feeder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap/zaptest"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// TestFencedConnRefusesAfterDeadline: a connection dialed during a term writes while the lease is
// held and refuses every write once its deadline passed — what a process woken from SIGSTOP meets.
func TestFencedConnRefusesAfterDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		received <- b
	}()
	lease := newLease(nil)
	lease.epoch.Store(1)
	lease.prove(time.Now(), 100*time.Millisecond)
	c, err := fencedDialer(lease)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("held;")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if _, err := c.Write([]byte("stale")); !errors.Is(err, errFenced) {
		t.Fatalf("write after the deadline: %v", err)
	}
	if _, err := fencedDialer(lease)(context.Background(), "tcp", ln.Addr().String()); !errors.Is(err, errFenced) {
		t.Fatalf("dial after the deadline: %v", err)
	}
	_ = c.Close()
	if got := string(<-received); got != "held;" {
		t.Fatalf("peer received %q", got)
	}
}

// publisherTest is a publisher of a few pairs to a kfake cluster of its own.
type publisherTest struct {
	cluster *kfake.Cluster
	addr    string
	pairs   []fx.Pair
	reg     *prometheus.Registry
	pub     *publisher
}

func newPublisherTest(t *testing.T, brokers int) (*publisherTest, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	pt := &publisherTest{cluster: cluster, addr: cluster.ListenAddrs()[0], reg: prometheus.NewRegistry(),
		pairs: []fx.Pair{"USD_JPY", "EUR_USD", "GBP_USD", "AUD_USD", "EUR_JPY", "GBP_JPY"}}
	if err := broker.EnsureTopics(ctx, []string{pt.addr}, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	return pt, ctx
}

// start primes the publisher: it learns the partitions and their leaders now.
func (pt *publisherTest) start(t *testing.T, ctx context.Context) {
	t.Helper()
	lease := newLease(nil)
	lease.epoch.Store(1)
	lease.prove(time.Now(), time.Hour)
	m := NewMetrics(pt.reg)
	pub, err := newPublisher(ctx, &Config{Pairs: pt.pairs, Brokers: []string{pt.addr}, Topic: eventing.TopicRates,
		Logger: zaptest.NewLogger(t), Metrics: m}, lease, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.close)
	pt.pub = pub
}

// batch is three rates of every pair, quote ids "<pair>-<n>".
func (pt *publisherTest) batch() []*pending {
	var batch []*pending
	for seq := range 3 {
		for _, pair := range pt.pairs {
			spec, _ := fx.Lookup(pair)
			bid := decimal.New(100_000+int64(seq), -spec.Precision)
			batch = append(batch, &pending{pair: pair, receivedAt: time.Now(), rate: eventing.RateV1{
				Pair: pair, Bid: bid, Ask: bid.Add(decimal.New(3, -spec.Precision)), ProviderTime: time.Now().UTC(),
				QuoteID: fmt.Sprintf("%s-%d", pair, seq), Session: "test", Epoch: 1, Seq: int64(seq + 1),
				ReceivedAt: time.Now().UTC()}})
		}
	}
	return batch
}

// checkOutcome fails unless the feeder counted failedAttempts failed produce attempts and the topic
// holds exactly n rates, each pair's in order.
func (pt *publisherTest) checkOutcome(t *testing.T, failedAttempts float64, n int) {
	t.Helper()
	if got := (&runningFeeder{reg: pt.reg}).metric("kawase_feeder_publish_errors_total", nil); got != failedAttempts {
		t.Fatalf("publish errors counted: %v, want %v", got, failedAttempts)
	}
	pt.checkTopic(t, n)
}

// checkTopic reads the rates topic and fails unless it holds exactly n rates, each pair's in order.
func (pt *publisherTest) checkTopic(t *testing.T, n int) {
	t.Helper()
	tl := tailRates(t, pt.addr)
	waitFor(t, 10*time.Second, "every rate on the topic", func() bool { return tl.count() >= n })
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive in this time
	seen, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("%d rates on the topic, want %d", len(seen), n)
	}
	for pair, rs := range byPair(seen) {
		for i, r := range rs {
			if want := fmt.Sprintf("%s-%d", pair, i); r.rate.QuoteID != want {
				t.Fatalf("%s rate %d is quote %s, want %s", pair, i, r.rate.QuoteID, want)
			}
		}
	}
}

// producedPartitions records the partitions of each produce request and the broker it reached.
type producedPartitions struct {
	mu       sync.Mutex
	requests [][]int32
	nodes    []int32
}

func (pp *producedPartitions) observe(c *kfake.Cluster, req *kmsg.ProduceRequest) []int32 {
	var parts []int32
	for _, rt := range req.Topics {
		for i := range rt.Partitions {
			parts = append(parts, rt.Partitions[i].Partition)
		}
	}
	pp.requests = append(pp.requests, parts)
	pp.nodes = append(pp.nodes, c.CurrentNode())
	return parts
}

// recordProduces records every produce request the cluster receives, leaving it to be handled.
func (pt *publisherTest) recordProduces() *producedPartitions {
	pp := &producedPartitions{}
	pt.cluster.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		pp.mu.Lock()
		defer pp.mu.Unlock()
		pp.observe(pt.cluster, kreq.(*kmsg.ProduceRequest))
		return nil, nil, false
	})
	return pp
}

// TestPublishRetriesOnlyRefusedPartitions: a batch goes out as one produce request for all its
// partitions; when the broker refuses one partition of it, only that partition is sent again, so the
// topic holds every rate once and in order.
func TestPublishRetriesOnlyRefusedPartitions(t *testing.T) {
	pt, ctx := newPublisherTest(t, 1)
	var pp producedPartitions
	refused := int32(-1)
	pt.cluster.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		req := kreq.(*kmsg.ProduceRequest)
		pp.mu.Lock()
		defer pp.mu.Unlock()
		if parts := pp.observe(pt.cluster, req); refused < 0 && len(parts) > 1 {
			// Spoil the first partition's batch: the broker answers it with CORRUPT_MESSAGE and
			// appends the others.
			p := &req.Topics[0].Partitions[0]
			p.Records = slices.Clone(p.Records)
			p.Records[len(p.Records)-1] ^= 0xff
			refused = p.Partition
		}
		return nil, nil, false
	})
	pt.start(t, ctx)
	batch := pt.batch()
	if err := pt.pub.publish(ctx, batch); err != nil {
		t.Fatalf("publish: %v", err)
	}

	pp.mu.Lock()
	got := slices.Clone(pp.requests)
	pp.mu.Unlock()
	distinct := map[int]bool{}
	for _, pair := range pt.pairs {
		distinct[pt.pub.partitionOf[pair]] = true
	}
	if len(got) != 2 || len(got[0]) != len(distinct) || !slices.Equal(got[1], []int32{refused}) {
		t.Fatalf("produce requests %v: want one for all %d partitions, then one for partition %d alone",
			got, len(distinct), refused)
	}
	pt.checkOutcome(t, 1, len(batch))
}

// TestPublishFollowsLeadersAcrossBrokers: with the partitions spread over three brokers, a batch goes
// out as one request per leader; when a partition's leader moves after the publisher learned it, the
// old leader refuses it and the next attempt finds the new one (kafka-go's cached metadata would
// still point at the old leader for seconds).
func TestPublishFollowsLeadersAcrossBrokers(t *testing.T) {
	pt, ctx := newPublisherTest(t, 3)
	pp := pt.recordProduces()
	pt.start(t, ctx)
	// kfake places leaders at random, which now and then puts every one of these pairs' partitions on
	// one broker; spread them over the three, so the test never depends on chance.
	spread := map[int32]bool{}
	for _, pair := range pt.pairs {
		part := int32(pt.pub.partitionOf[pair])
		if spread[part] {
			continue
		}
		to := int32(len(spread) % 3)
		spread[part] = true
		if pt.cluster.LeaderFor(eventing.TopicRates, part) != to {
			if err := pt.cluster.MoveTopicPartition(eventing.TopicRates, part, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	// kafka-go refreshes its metadata at random within its TTL; with an hour, the move below stays
	// unseen until the publisher reconnects.
	pt.pub.metadataTTL = time.Hour
	pt.pub.reconnect(ctx)
	leaders := map[int32]bool{}
	for _, pair := range pt.pairs {
		leaders[pt.cluster.LeaderFor(eventing.TopicRates, int32(pt.pub.partitionOf[pair]))] = true
	}
	if len(leaders) < 2 {
		t.Fatalf("the pairs' partitions all have one leader (%v); the test needs several", leaders)
	}
	batch := pt.batch()
	if err := pt.pub.publish(ctx, batch[:len(pt.pairs)]); err != nil {
		t.Fatalf("publish: %v", err)
	}
	pp.mu.Lock()
	first := slices.Clone(pp.nodes)
	pp.mu.Unlock()
	slices.Sort(first)
	if len(first) != len(leaders) || len(slices.Compact(first)) != len(leaders) {
		t.Fatalf("the first batch went to brokers %v; want one request to each of the %d leaders", first, len(leaders))
	}

	moved := int32(pt.pub.partitionOf[pt.pairs[0]])
	from := pt.cluster.LeaderFor(eventing.TopicRates, moved)
	to := (from + 1) % 3
	if err := pt.cluster.MoveTopicPartition(eventing.TopicRates, moved, to); err != nil {
		t.Fatal(err)
	}
	if err := pt.pub.publish(ctx, batch[len(pt.pairs):]); err != nil {
		t.Fatalf("publish after partition %d moved from broker %d to %d: %v", moved, from, to, err)
	}
	pt.checkOutcome(t, 1, len(batch)) // the one error: the old leader's refusal
}

// TestPublisherGathersWithinLinger: rates received within the linger of a batch's first rate go out
// in its request; a rate that already waited longer than the linger goes out at once, alone.
func TestPublisherGathersWithinLinger(t *testing.T) {
	pt, ctx := newPublisherTest(t, 1)
	pp := pt.recordProduces()
	pt.start(t, ctx)
	pt.pub.linger = time.Second // long enough that a busy machine cannot blur the batches
	var acked atomic.Int64
	pt.pub.observe = func(Published) { acked.Add(1) }
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pt.pub.run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	rates := pt.batch()[:len(pt.pairs)] // one rate of each pair
	partOf := func(qs ...*pending) []int32 {
		var parts []int32
		for _, q := range qs {
			parts = append(parts, int32(pt.pub.partitionOf[q.pair]))
		}
		slices.Sort(parts)
		return slices.Compact(parts)
	}
	requests := func(n int) [][]int32 {
		waitFor(t, 10*time.Second, fmt.Sprintf("%d produce request(s)", n), func() bool {
			pp.mu.Lock()
			defer pp.mu.Unlock()
			return len(pp.requests) >= n
		})
		pp.mu.Lock()
		defer pp.mu.Unlock()
		out := make([][]int32, len(pp.requests))
		for i, r := range pp.requests {
			out[i] = slices.Sorted(slices.Values(r))
		}
		return out
	}
	enqueue := func(q *pending, receivedAt time.Time) {
		q.receivedAt = receivedAt
		if !pt.pub.enqueue(ctx, q) {
			t.Fatal("enqueue refused")
		}
	}

	enqueue(rates[0], time.Now())
	time.Sleep(200 * time.Millisecond)
	enqueue(rates[1], time.Now())
	enqueue(rates[2], time.Now())
	if got := requests(1); len(got) != 1 || !slices.Equal(got[0], partOf(rates[0], rates[1], rates[2])) {
		t.Fatalf("produce requests %v: want one for the partitions %v of all three rates", got, partOf(rates[0], rates[1], rates[2]))
	}

	waitFor(t, 10*time.Second, "the first batch acknowledged", func() bool { return acked.Load() == 3 })
	enqueue(rates[3], time.Now().Add(-2*time.Second)) // it waited behind a slow batch, say
	time.Sleep(200 * time.Millisecond)
	enqueue(rates[4], time.Now())
	got := requests(3)
	if len(got) != 3 || !slices.Equal(got[1], partOf(rates[3])) || !slices.Equal(got[2], partOf(rates[4])) {
		t.Fatalf("produce requests %v: want %v at once, then %v after the linger", got, partOf(rates[3]), partOf(rates[4]))
	}
	pt.checkOutcome(t, 0, 5)
}
