package ratekeeper_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Two feeders overlap: the old leader (epoch 1) publishes quotes [0, oldLast], the new leader (epoch
// 2) quotes [newFirst, quotesPerPair), so quotes [newFirst, oldLast] reach the topic twice. The
// schedule (publishOverlappingLeaders) makes every case happen on every pair: the new leader
// republishing quotes already processed, and the old leader publishing quotes newer than the pair's
// mark after the new leader was seen.
const (
	quotesPerPair   = 60
	oldLast         = 40
	newFirst        = 25
	oldAloneLast    = 30
	deliverRetryMax = 50
)

var exactlyOncePairs = []fx.Pair{"USD_JPY", "EUR_USD", "GBP_JPY", "AUD_USD", "EUR_GBP", "USD_TRY", "ZAR_JPY"}

// TestExactlyOnceUnderReplayAndOverlappingLeaders publishes rates from two overlapping feeder
// leaders to the real broker, then replays the whole topic into the keeper's HTTP sink twice (the
// first pass delivering every record twice in a row, as a redelivery after a timeout would), each
// partition in order and all partitions concurrently, as Knative's ordered KafkaSource does. Every
// provider quote must leave exactly one tick, one trigger effect and one candle volume, and no pair
// may ever move backwards.
func TestExactlyOnceUnderReplayAndOverlappingLeaders(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*testTimeout)
	defer cancel()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	if err := broker.EnsureTopics(ctx, brokers, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Minute)
	publishOverlappingLeaders(ctx, t, brokers, base)

	partitions := readTopic(ctx, t, brokers, eventing.TopicRates)
	records := 0
	for _, evs := range partitions {
		records += len(evs)
	}
	wantRecords := len(exactlyOncePairs) * (oldLast + 1 + quotesPerPair - newFirst)
	mustf(t, records == wantRecords, "topic holds %d records, want %d", records, wantRecords)

	replay(ctx, t, env.srv.URL, partitions, 2) // every record delivered twice in a row
	replay(ctx, t, env.srv.URL, partitions, 1) // then the whole topic once more

	wantTicks := int64(len(exactlyOncePairs) * quotesPerPair)
	checkExactlyOnce(t, env, wantTicks)
	accepted, dup, stale := counter(t, env.reg, ratekeeper.OutcomeAccepted),
		counter(t, env.reg, ratekeeper.OutcomeDuplicate), counter(t, env.reg, ratekeeper.OutcomeStaleEpoch)
	mustf(t, accepted == float64(wantTicks), "accepted counter %v, want %d", accepted, wantTicks)
	mustf(t, accepted+dup+stale == float64(3*records), "outcomes %v+%v+%v, want %d deliveries", accepted, dup, stale, 3*records)
	// The old leader's quotes after the new leader was seen are refused as stale, twice each in the
	// first pass (delivery and redelivery); on later passes they are not newer than the mark.
	wantStale := float64(2 * len(exactlyOncePairs) * (oldLast - oldAloneLast))
	mustf(t, stale == wantStale, "stale-epoch counter %v, want %v", stale, wantStale)
	t.Logf("%d records delivered 3 times: %v accepted, %v duplicates, %v stale epoch", records, accepted, dup, stale)
}

// publishOverlappingLeaders publishes as two leaders with their own writers would during an
// overlap: the old leader alone up to oldAloneLast; the new leader catching up from newFirst (quotes
// already processed); then both, the old leader's quote just before the new leader's; then the new
// leader alone.
func publishOverlappingLeaders(ctx context.Context, t *testing.T, brokers []string, base time.Time) {
	t.Helper()
	old, cur := cekafka.NewWriter(brokers, eventing.TopicRates), cekafka.NewWriter(brokers, eventing.TopicRates)
	defer old.Close()
	defer cur.Close()
	publish := func(w *kafka.Writer, epoch int64, first, last int) {
		for i := first; i <= last; i++ {
			events := make([]cloudevents.Event, 0, len(exactlyOncePairs))
			for _, p := range exactlyOncePairs {
				events = append(events, rateEvent(t, withEpoch(quote(p, i, base, 2*time.Second), epoch)))
			}
			if err := cekafka.Publish(ctx, w, events...); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(old, 1, 0, oldAloneLast)
	publish(cur, 2, newFirst, oldAloneLast)
	for i := oldAloneLast + 1; i <= oldLast; i++ {
		publish(old, 1, i, i)
		publish(cur, 2, i, i)
	}
	publish(cur, 2, oldLast+1, quotesPerPair-1)
}

// readTopic reads every record of topic, partition by partition, as CloudEvents.
func readTopic(ctx context.Context, t *testing.T, brokers []string, topic string) [][]cloudevents.Event {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(brokers...)}
	count := 0
	for _, tp := range eventing.Topics() {
		if tp.Name == topic {
			count = tp.Partitions
		}
	}
	mustf(t, count > 0, "topic %s is not in the catalogue", topic)
	var reqs []kafka.OffsetRequest
	for p := range count {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]cloudevents.Event, len(offs.Topics[topic]))
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			t.Fatal(po.Error)
		}
		if po.LastOffset <= po.FirstOffset {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: po.Partition, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(po.FirstOffset); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			e, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			out[po.Partition] = append(out[po.Partition], e)
			if m.Offset+1 >= po.LastOffset {
				break
			}
		}
		r.Close()
	}
	return out
}

// replay delivers every partition's events in order (each `times` times in a row), partitions
// concurrently, retrying a 5xx as Knative would; any 4xx fails the test.
func replay(ctx context.Context, t *testing.T, url string, partitions [][]cloudevents.Event, times int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(partitions))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(partitions)}}
	for _, evs := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, e := range evs {
				for range times {
					if err := deliverUntilDone(ctx, client, url, e); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func deliverUntilDone(ctx context.Context, client *http.Client, url string, e cloudevents.Event) error {
	for range deliverRetryMax {
		d, err := deliver(ctx, client, url, e)
		if err != nil {
			return err
		}
		switch {
		case d.status == http.StatusOK:
			return nil
		case d.status >= 500:
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return fmt.Errorf("deliver %s: %d %s", e.ID(), d.status, d.body)
	}
	return fmt.Errorf("deliver %s: still failing after %d attempts", e.ID(), deliverRetryMax)
}

// checkExactlyOnce checks ticks, effects, candles and marks against the provider quotes.
func checkExactlyOnce(t *testing.T, env *keeperEnv, wantTicks int64) {
	t.Helper()
	p := env.pool
	ticks := queryInt(t, p, `SELECT count(*) FROM ratekeeper.ticks`)
	distinct := queryInt(t, p, `SELECT count(DISTINCT (pair, provider_ns, quote_id)) FROM ratekeeper.ticks`)
	mustf(t, ticks == wantTicks && distinct == wantTicks, "%d ticks (%d distinct quotes), want %d", ticks, distinct, wantTicks)
	effects := queryInt(t, p, `SELECT count(*) FROM public.effects`)
	distinctEffects := queryInt(t, p, `SELECT count(DISTINCT rate_id) FROM public.effects`)
	mustf(t, effects == wantTicks && distinctEffects == wantTicks, "%d trigger effects (%d distinct), want %d",
		effects, distinctEffects, wantTicks)
	// No pair moves backwards: in processing order (n), provider time and quote id strictly rise.
	backwards := queryInt(t, p, `SELECT count(*) FROM (
	  SELECT provider_ns, quote_id::bigint AS q, lag(provider_ns) OVER w AS pns, lag(quote_id::bigint) OVER w AS pq
	  FROM ratekeeper.ticks WINDOW w AS (PARTITION BY pair ORDER BY n)) s
	  WHERE pns IS NOT NULL AND (provider_ns, q) <= (pns, pq)`)
	mustf(t, backwards == 0, "%d ticks move their pair backwards", backwards)
	gaps := queryInt(t, p, `SELECT count(*) FROM (SELECT pair, max(n) - min(n) + 1 AS span, count(*) AS c
	  FROM ratekeeper.ticks GROUP BY pair) s WHERE span <> c`)
	mustf(t, gaps == 0, "%d pairs have gaps in their tick numbering", gaps)
	// Each quote's accepted epoch never decreases along the pair.
	epochDown := queryInt(t, p, `SELECT count(*) FROM (SELECT epoch, lag(epoch) OVER (PARTITION BY pair ORDER BY n) AS pe
	  FROM ratekeeper.ticks) s WHERE pe IS NOT NULL AND epoch < pe`)
	mustf(t, epochDown == 0, "%d ticks were accepted from an older epoch after a newer one", epochDown)
	vol := queryInt(t, p, `SELECT coalesce(sum(volume), 0) FROM ratekeeper.candles WHERE granularity = 'S5'`)
	mustf(t, vol == wantTicks, "S5 candle volume %d, want %d", vol, wantTicks)
	checkCandlesMatchTicks(t, env)
	last := queryInt(t, p, `SELECT count(*) FROM ratekeeper.marks WHERE quote_id = $1 AND ticks = $2 AND epoch = 2`,
		fmt.Sprint(1000+quotesPerPair-1), quotesPerPair)
	mustf(t, last == int64(len(exactlyOncePairs)), "%d pairs end at the last quote, want %d", last, len(exactlyOncePairs))
}

// checkCandlesMatchTicks checks the candles served of every pair of the test.
func checkCandlesMatchTicks(t *testing.T, env *keeperEnv) {
	t.Helper()
	checkServedCandles(t, env.keeper, env.pool, exactlyOncePairs)
}

// checkServedCandles recomputes the candles of pairs in every granularity from the ticks and compares
// them with those k's GetCandles serves (the wider ones merged with the S5 candles not rolled up).
func checkServedCandles(t *testing.T, k *ratekeeper.Keeper, pool *pgxpool.Pool, pairs []fx.Pair) {
	t.Helper()
	checkServed(t, k, pool, pairs, append([]servedGranularity{{ratesv1.Granularity_GRANULARITY_S5, "5 seconds"}}, widerGranularities...))
}

// servedGranularity is a granularity and its width as a PostgreSQL interval.
type servedGranularity struct {
	proto    ratesv1.Granularity
	interval string
}

var widerGranularities = []servedGranularity{{ratesv1.Granularity_GRANULARITY_M1, "1 minute"},
	{ratesv1.Granularity_GRANULARITY_M5, "5 minutes"}, {ratesv1.Granularity_GRANULARITY_H1, "1 hour"}}

// checkServed compares the candles served of pairs in granularities with the ticks'.
func checkServed(t *testing.T, k *ratekeeper.Keeper, pool *pgxpool.Pool, pairs []fx.Pair, granularities []servedGranularity) {
	t.Helper()
	client := candleClient(t, k)
	for _, g := range granularities {
		want := ticksAsCandles(t, pool, g.interval)
		for _, pair := range pairs {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			resp, err := client.GetCandles(ctx, &ratesv1.GetCandlesRequest{Pair: string(pair), Granularity: g.proto,
				Count: ratekeeper.CandleCountMax})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range resp.Candles {
				got = append(got, candleLine(c.Time.AsTime(), []string{c.Bid.Open, c.Bid.High, c.Bid.Low, c.Bid.Close,
					c.Ask.Open, c.Ask.High, c.Ask.Low, c.Ask.Close}, c.Volume))
			}
			mustf(t, slices.Equal(got, want[pair]), "%s %s candles served:\n%s\nfrom the ticks:\n%s", pair, g.proto,
				strings.Join(got, "\n"), strings.Join(want[pair], "\n"))
		}
	}
}

// ticksAsCandles aggregates the ticks into candles of the given width, per pair, oldest first.
func ticksAsCandles(t *testing.T, pool *pgxpool.Pool, interval string) map[fx.Pair][]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT pair,
	    date_bin($1::interval, provider_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
	    (array_agg(bid ORDER BY n))[1]::text, max(bid)::text, min(bid)::text, (array_agg(bid ORDER BY n DESC))[1]::text,
	    (array_agg(ask ORDER BY n))[1]::text, max(ask)::text, min(ask)::text, (array_agg(ask ORDER BY n DESC))[1]::text,
	    count(*)
	  FROM ratekeeper.ticks GROUP BY 1, 2 ORDER BY 1, 2`, interval)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[fx.Pair][]string{}
	for rows.Next() {
		var (
			pair   string
			bucket time.Time
			p      [8]string
			v      int64
		)
		if err := rows.Scan(&pair, &bucket, &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &v); err != nil {
			t.Fatal(err)
		}
		out[fx.Pair(pair)] = append(out[fx.Pair(pair)], candleLine(bucket, p[:], v))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// candleLine prints a candle with its prices as exact decimals (trailing zeros dropped).
func candleLine(bucket time.Time, prices []string, volume int64) string {
	parts := []string{bucket.UTC().Format(time.RFC3339)}
	for _, p := range prices {
		parts = append(parts, decimal.RequireFromString(p).String())
	}
	return strings.Join(append(parts, fmt.Sprint(volume)), " ")
}
