package cekafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// Limits of ReadPartitions.
const (
	// fetchRetryDelayMs is the pause after a failed fetch before the partitions' leaders are looked
	// up again and fetching resumes.
	fetchRetryDelayMs = 200
	// fetchPartitionBytesMax bounds what one fetch returns for one partition; readerMaxBytes bounds
	// the whole response.
	fetchPartitionBytesMax = 1 << 20
	// fetchDeadlineSlackMs is how much longer than MaxWait a fetch may take before its connection is
	// given up: enough that a busy machine answering late is not mistaken for a broken connection.
	fetchDeadlineSlackMs = 10_000
	// fetchLookupTimeoutMs bounds one look-up of leaders or offsets.
	fetchLookupTimeoutMs = 10_000
	// fetchEmptyPauseMs is the pause after a fetch that the broker answered early without a record
	// to deliver.
	fetchEmptyPauseMs = 10
	// fetchPausedPollMs is how often a fetch loop whose partitions are all paused looks again, and
	// fetchPausedWaitMs how long the broker may hold a fetch while some are paused, so that a partition
	// that resumes is fetched again soon.
	fetchPausedPollMs = 10
	fetchPausedWaitMs = 50
)

// PartitionsConfig says which topic ReadPartitions reads and how it reports trouble.
type PartitionsConfig struct {
	Brokers []string
	Topic   string
	// MaxWait is how long the broker holds a fetch that finds nothing new; 0 means readerMaxWaitMs.
	MaxWait time.Duration
	// Linger is how long to wait after a fetch that returned records before sending the next, so
	// that records arriving one at a time are fetched a few at a time: a steady 1,000 records/s
	// costs 1,000 round trips a second without it and at most 1/Linger with it, for up to Linger of
	// added delay. 0 fetches again at once.
	Linger time.Duration
	// Paused, when set, is asked before each fetch: a partition it reports paused (its consumer has
	// enough records waiting) is left out of the fetch, so one slow partition neither stops the others
	// nor has records piled up for it without bound.
	Paused func(partition int) bool
	// OnError hears each failed fetch or look-up, which is retried after fetchRetryDelayMs.
	OnError func(error)
}

// ReadPartitions reads the partitions in from, each from its offset (or kafka.FirstOffset /
// kafka.LastOffset), until ctx ends. Each partition's records are handed to deliver in offset order,
// one fetched batch at a time; deliver may block, which holds back the next fetch (cfg.Paused holds
// back single partitions instead). Partitions with
// different leaders are fetched concurrently, so deliver must be safe to call from several goroutines
// (never for the same partition at once).
//
// kafka-go's Reader holds a connection and a fetch loop per partition, so a consumer of 50 partitions
// receiving 1,000 records/s is woken up to 1,000 times a second. Here one fetch covers every partition
// a broker leads, and a producer's batch that touches 36 partitions comes back in one response.
//
// Failures are retried without bound, on purpose: while the broker is away the consumer waits (and its
// data grows stale) rather than stopping; each failure is reported to OnError.
func ReadPartitions(ctx context.Context, cfg PartitionsConfig, from map[int]int64, deliver func(ctx context.Context, batch []kafka.Message)) {
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = readerMaxWaitMs * time.Millisecond
	}
	next := maps.Clone(from)
	for ctx.Err() == nil && len(next) > 0 {
		err := readRound(ctx, cfg, next, deliver)
		if ctx.Err() != nil {
			return
		}
		if cfg.OnError != nil {
			cfg.OnError(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(fetchRetryDelayMs * time.Millisecond):
		}
	}
}

// readRound looks up the partitions' leaders and fetches from each leader until a failure, which it
// returns once every leader's loop stopped; next holds each partition's next offset throughout.
func readRound(ctx context.Context, cfg PartitionsConfig, next map[int]int64, deliver func(context.Context, []kafka.Message)) error {
	// A fresh transport per round, so a round after a failure routes by fresh metadata.
	transport := &kafka.Transport{MetadataTopics: []string{cfg.Topic}}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: transport, Timeout: fetchLookupTimeoutMs * time.Millisecond}
	byLeader, err := leadersOf(ctx, client, cfg.Topic, next)
	if err != nil {
		return err
	}
	if err := resolveOffsets(ctx, client, cfg.Topic, next); err != nil {
		return err
	}
	roundCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, partitions := range byLeader {
		f := &leaderFetch{cfg: cfg, client: client, next: map[int]int64{}}
		for _, p := range partitions {
			f.next[p] = next[p]
		}
		wg.Go(func() {
			cancel(f.loop(roundCtx, ctx, deliver))
			mu.Lock()
			defer mu.Unlock()
			maps.Copy(next, f.next)
		})
	}
	wg.Wait()
	return context.Cause(roundCtx)
}

// PartitionExtent is where one partition's log starts (First) and ends (Last: the offset its next
// record will get).
type PartitionExtent struct {
	Partition   int
	First, Last int64
}

// Extents returns the extent of every partition of topic, for a reader that must know where it
// starts or when it has caught up; the look-up is bounded by fetchLookupTimeoutMs.
func Extents(ctx context.Context, brokers []string, topic string) ([]PartitionExtent, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchLookupTimeoutMs*time.Millisecond)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: fetchLookupTimeoutMs * time.Millisecond}
	leaders, err := Leaders(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	var reqs []kafka.OffsetRequest
	for p := range leaders {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	extents := make([]PartitionExtent, 0, len(leaders))
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		extents = append(extents, PartitionExtent{Partition: po.Partition, First: po.FirstOffset, Last: po.LastOffset})
	}
	if len(extents) != len(leaders) {
		return nil, fmt.Errorf("offsets of %s: %d of %d partitions", topic, len(extents), len(leaders))
	}
	return extents, nil
}

// Leaders returns the broker that leads each partition of topic, as client sees it (a client's
// transport answers from its cached metadata); a topic missing or without partitions is an error.
func Leaders(ctx context.Context, client *kafka.Client, topic string) (map[int]int, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		if len(t.Partitions) == 0 {
			break
		}
		leaders := make(map[int]int, len(t.Partitions))
		for _, p := range t.Partitions {
			leaders[p.ID] = p.Leader.ID
		}
		return leaders, nil
	}
	return nil, fmt.Errorf("metadata of %s: topic missing or without partitions", topic)
}

// leadersOf groups the partitions of next by the broker that leads them.
func leadersOf(ctx context.Context, client *kafka.Client, topic string, next map[int]int64) (map[int][]int, error) {
	leaders, err := Leaders(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	byLeader := map[int][]int{}
	for p := range next {
		leader, ok := leaders[p]
		if !ok {
			return nil, fmt.Errorf("metadata of %s: no partition %d", topic, p)
		}
		byLeader[leader] = append(byLeader[leader], p)
	}
	return byLeader, nil
}

// resolveOffsets replaces kafka.FirstOffset and kafka.LastOffset in next by the partitions' offsets.
func resolveOffsets(ctx context.Context, client *kafka.Client, topic string, next map[int]int64) error {
	var reqs []kafka.OffsetRequest
	for p, off := range next {
		if off == kafka.FirstOffset || off == kafka.LastOffset {
			reqs = append(reqs, kafka.OffsetRequest{Partition: p, Timestamp: off})
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return fmt.Errorf("offsets of %s: %w", topic, err)
	}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return fmt.Errorf("offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		switch next[po.Partition] {
		case kafka.FirstOffset:
			next[po.Partition] = po.FirstOffset
		case kafka.LastOffset:
			next[po.Partition] = po.LastOffset
		}
	}
	for p, off := range next {
		if off < 0 {
			return fmt.Errorf("offsets of %s/%d: not listed", topic, p)
		}
	}
	return nil
}

// leaderFetch fetches the partitions one broker leads, one request at a time.
type leaderFetch struct {
	cfg    PartitionsConfig
	client *kafka.Client
	next   map[int]int64
}

// loop fetches with fetchCtx and delivers with ctx until either ends (nil) or a fetch fails. Delivery
// has the caller's ctx, not the round's, so a failure at another leader never cuts a batch short: a
// batch is handed over whole before the round ends.
func (f *leaderFetch) loop(fetchCtx, ctx context.Context, deliver func(context.Context, []kafka.Message)) error {
	partitions := slices.Sorted(maps.Keys(f.next))
	for fetchCtx.Err() == nil {
		active := f.unpaused(partitions)
		if len(active) == 0 {
			select {
			case <-fetchCtx.Done():
			case <-time.After(fetchPausedPollMs * time.Millisecond):
			}
			continue
		}
		wait := f.cfg.MaxWait
		if len(active) < len(partitions) {
			wait = min(wait, fetchPausedWaitMs*time.Millisecond)
		}
		started := time.Now()
		res, err := f.fetch(fetchCtx, active, wait)
		if err != nil {
			if fetchCtx.Err() != nil {
				return nil
			}
			return err
		}
		delivered, err := f.deliverAll(ctx, res, deliver)
		if err != nil || ctx.Err() != nil {
			return err
		}
		pause := time.Duration(0)
		switch {
		case delivered:
			pause = f.cfg.Linger
		case time.Since(started) < wait/2:
			// Answered early with nothing new (a batch of only control records, say): without a
			// pause the loop would spin.
			pause = fetchEmptyPauseMs * time.Millisecond
		}
		if pause > 0 {
			select {
			case <-fetchCtx.Done():
			case <-time.After(pause):
			}
		}
		// The response is bounded (readerMaxBytes), so partitions late in the request could wait
		// behind busy ones; each fetch starts one partition further along.
		first := partitions[0]
		copy(partitions, partitions[1:])
		partitions[len(partitions)-1] = first
	}
	return nil
}

// unpaused returns the partitions to fetch now, in the loop's order.
func (f *leaderFetch) unpaused(partitions []int) []int {
	if f.cfg.Paused == nil {
		return partitions
	}
	active := make([]int, 0, len(partitions))
	for _, p := range partitions {
		if !f.cfg.Paused(p) {
			active = append(active, p)
		}
	}
	return active
}

// fetch sends one fetch for partitions from their next offsets, which the broker holds at most wait
// when there is nothing new.
func (f *leaderFetch) fetch(ctx context.Context, partitions []int, wait time.Duration) (*fetchapi.Response, error) {
	req := &fetchapi.Request{
		ReplicaID:    -1,
		MaxWaitTime:  int32(wait / time.Millisecond),
		MinBytes:     1,
		MaxBytes:     readerMaxBytes,
		SessionID:    -1,
		SessionEpoch: -1,
		Topics:       []fetchapi.RequestTopic{{Topic: f.cfg.Topic}},
	}
	for _, p := range partitions {
		req.Topics[0].Partitions = append(req.Topics[0].Partitions, fetchapi.RequestPartition{
			Partition: int32(p), CurrentLeaderEpoch: -1, FetchOffset: f.next[p], LogStartOffset: -1,
			PartitionMaxBytes: fetchPartitionBytesMax,
		})
	}
	fctx, cancel := context.WithTimeout(ctx, wait+fetchDeadlineSlackMs*time.Millisecond)
	defer cancel()
	m, err := f.client.Transport.RoundTrip(fctx, f.client.Addr, req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", f.cfg.Topic, err)
	}
	res, ok := m.(*fetchapi.Response)
	if !ok {
		return nil, fmt.Errorf("fetch %s: answered with %T", f.cfg.Topic, m)
	}
	if res.ErrorCode != 0 {
		return nil, fmt.Errorf("fetch %s: %w", f.cfg.Topic, kafka.Error(res.ErrorCode))
	}
	return res, nil
}

// deliverAll hands each partition's new records to deliver and advances its offset. A partition
// error ends the round. A partition whose offset is outside the log (retention removed it, or the
// topic was re-created shorter) restarts from the log's start in the next round, as a Kafka consumer
// with auto.offset.reset=earliest does in either direction (Knative's initialOffset: earliest); what
// it reads again is absorbed by consumers that are idempotent, as all of ours are.
func (f *leaderFetch) deliverAll(ctx context.Context, res *fetchapi.Response, deliver func(context.Context, []kafka.Message)) (delivered bool, err error) {
	for _, t := range res.Topics {
		for i := range t.Partitions {
			rp := &t.Partitions[i]
			p := int(rp.Partition)
			if _, ok := f.next[p]; !ok || t.Topic != f.cfg.Topic {
				continue
			}
			if rp.ErrorCode != 0 {
				err := fmt.Errorf("fetch %s/%d at %d: %w", f.cfg.Topic, p, f.next[p], kafka.Error(rp.ErrorCode))
				if errors.Is(err, kafka.OffsetOutOfRange) {
					f.next[p] = kafka.FirstOffset // the next round looks the start up
				}
				return delivered, err
			}
			batch, err := f.records(p, rp)
			if err != nil {
				return delivered, err
			}
			if len(batch) > 0 {
				deliver(ctx, batch)
				f.next[p] = batch[len(batch)-1].Offset + 1
				delivered = true
			}
		}
	}
	return delivered, nil
}

// records copies out the records of one partition at or after its next offset; a batch may start
// before the offset asked for.
func (f *leaderFetch) records(p int, rp *fetchapi.ResponsePartition) ([]kafka.Message, error) {
	rr := rp.RecordSet.Records
	if rr == nil {
		return nil, nil
	}
	var batch []kafka.Message
	for {
		r, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			return batch, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read records of %s/%d: %w", f.cfg.Topic, p, err)
		}
		if r.Offset < f.next[p] {
			releaseRecord(r)
			continue
		}
		m, err := copyRecord(f.cfg.Topic, p, rp.HighWatermark, r)
		releaseRecord(r)
		if err != nil {
			return nil, fmt.Errorf("read record %s/%d@%d: %w", f.cfg.Topic, p, r.Offset, err)
		}
		batch = append(batch, m)
	}
}

// copyRecord turns a fetched record into a kafka.Message that stays valid after the response's
// buffers are released.
func copyRecord(topic string, partition int, highWatermark int64, r *protocol.Record) (kafka.Message, error) {
	key, err := protocol.ReadAll(r.Key)
	if err != nil {
		return kafka.Message{}, err
	}
	value, err := protocol.ReadAll(r.Value)
	if err != nil {
		return kafka.Message{}, err
	}
	var headers []kafka.Header
	if len(r.Headers) > 0 {
		headers = make([]kafka.Header, len(r.Headers))
		for i, h := range r.Headers {
			headers[i] = kafka.Header{Key: h.Key, Value: bytes.Clone(h.Value)}
		}
	}
	return kafka.Message{Topic: topic, Partition: partition, Offset: r.Offset, HighWaterMark: highWatermark,
		Key: key, Value: value, Headers: headers, Time: r.Time}, nil
}

// releaseRecord hands a record's key and value buffers back to kafka-go's pool.
func releaseRecord(r *protocol.Record) {
	for _, b := range []protocol.Bytes{r.Key, r.Value} {
		if b != nil {
			_ = b.Close()
		}
	}
}
