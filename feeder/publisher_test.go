package feeder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
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

// TestPublishRetriesOnlyRefusedPartitions: a batch goes out as one produce request for all its
// partitions; when the broker refuses one partition of it, only that partition is sent again, so the
// topic holds every rate once and in order.
func TestPublishRetriesOnlyRefusedPartitions(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	addr := cluster.ListenAddrs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureTopics(ctx, []string{addr}, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var requests [][]int32 // the partitions of each produce request, in order
	refused := int32(-1)
	cluster.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		req := kreq.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		var parts []int32
		for _, rt := range req.Topics {
			for i := range rt.Partitions {
				parts = append(parts, rt.Partitions[i].Partition)
			}
		}
		requests = append(requests, parts)
		if refused < 0 && len(parts) > 1 {
			// Spoil the first partition's batch: the broker answers it with CORRUPT_MESSAGE and
			// appends the others.
			p := &req.Topics[0].Partitions[0]
			p.Records = slices.Clone(p.Records)
			p.Records[len(p.Records)-1] ^= 0xff
			refused = p.Partition
		}
		return nil, nil, false
	})

	pairs := []fx.Pair{"USD_JPY", "EUR_USD", "GBP_USD", "AUD_USD"}
	lease := newLease(nil)
	lease.epoch.Store(1)
	lease.prove(time.Now(), time.Hour)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	pub, err := newPublisher(ctx, &Config{Pairs: pairs, Brokers: []string{addr}, Topic: eventing.TopicRates,
		Logger: zaptest.NewLogger(t), Metrics: m}, lease, m)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.close()
	var batch []*pending
	for seq := range 3 {
		for _, pair := range pairs {
			spec, _ := fx.Lookup(pair)
			bid := decimal.New(100_000+int64(seq), -spec.Precision)
			batch = append(batch, &pending{pair: pair, receivedAt: time.Now(), rate: eventing.RateV1{
				Pair: pair, Bid: bid, Ask: bid.Add(decimal.New(3, -spec.Precision)), ProviderTime: time.Now().UTC(),
				QuoteID: fmt.Sprintf("%s-%d", pair, seq), Session: "test", Epoch: 1, Seq: int64(seq + 1),
				ReceivedAt: time.Now().UTC()}})
		}
	}
	if err := pub.publish(ctx, batch); err != nil {
		t.Fatalf("publish: %v", err)
	}

	mu.Lock()
	got := slices.Clone(requests)
	mu.Unlock()
	distinct := map[int]bool{}
	for _, pair := range pairs {
		distinct[pub.partitionOf[pair]] = true
	}
	if len(got) != 2 || len(got[0]) != len(distinct) || !slices.Equal(got[1], []int32{refused}) {
		t.Fatalf("produce requests %v: want one for all %d partitions, then one for partition %d alone",
			got, len(distinct), refused)
	}
	if n := (&runningFeeder{reg: reg}).metric("kawase_feeder_publish_errors_total", nil); n != 1 {
		t.Fatalf("publish errors counted: %v, want 1", n)
	}
	tl := tailRates(t, addr)
	waitFor(t, 10*time.Second, "every rate on the topic", func() bool { return tl.count() >= len(batch) })
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive in this time
	seen, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(batch) {
		t.Fatalf("%d rates on the topic, want %d", len(seen), len(batch))
	}
	for pair, rs := range byPair(seen) {
		for i, r := range rs {
			if want := fmt.Sprintf("%s-%d", pair, i); r.rate.QuoteID != want {
				t.Fatalf("%s rate %d is quote %s, want %s", pair, i, r.rate.QuoteID, want)
			}
		}
	}
}
