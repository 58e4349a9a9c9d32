package cekafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
)

// Limits of a Producer. A failed round is retried after producerRetryDelayMinMs, doubling up to
// producerRetryDelayMaxMs (about 3.5 s over all attempts, room for a leader election and for the
// transport's metadata to catch up), within writerWriteTimeoutMs.
const (
	producerMetadataMaxAgeMs = 60_000
	producerAttemptsMax      = 8
	producerRetryDelayMinMs  = 50
	producerRetryDelayMaxMs  = 1_000
)

// Producer writes records to any topic with one produce request per partition leader at a time:
// the records of every call made while a request is in flight go together, in call order, in the
// next one, whatever their topics and partitions. Unlike kafka.Writer it never waits for a batch to
// fill (there is no BatchTimeout, and no request per partition): an idle producer sends at once, a
// busy one batches whatever arrives during one round trip. Records are partitioned like NewWriter's
// (murmur2 of the key) and acknowledged by all in-sync replicas.
type Producer struct {
	addr      net.Addr
	transport *kafka.Transport
	client    *kafka.Client

	mu      sync.Mutex
	queue   []*produceCall
	running bool

	metaMu sync.Mutex
	meta   map[string][]kafka.Partition
	metaAt time.Time
}

// produceCall is one WriteMessages waiting for its round.
type produceCall struct {
	msgs []kafka.Message
	done chan error
}

// NewProducer returns a producer to the cluster of brokers.
func NewProducer(brokers []string) *Producer {
	tr := &kafka.Transport{}
	addr := kafka.TCP(brokers...)
	return &Producer{addr: addr, transport: tr,
		client: &kafka.Client{Addr: addr, Transport: tr, Timeout: writerWriteTimeoutMs * time.Millisecond}}
}

// Close releases the producer's connections.
func (p *Producer) Close() { p.transport.CloseIdleConnections() }

// Publish writes events to topic in binary mode, in order, and returns once the brokers acknowledged
// them all.
func (p *Producer) Publish(ctx context.Context, topic string, events ...cloudevents.Event) error {
	msgs, err := toMessages(topic, events)
	if err != nil {
		return err
	}
	return p.WriteMessages(ctx, msgs...)
}

// WriteMessages writes msgs (each naming its topic) and returns once the brokers acknowledged them
// all. Records of one partition are written in the order given, after those of earlier calls.
func (p *Producer) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	c := &produceCall{msgs: msgs, done: make(chan error, 1)}
	p.mu.Lock()
	p.queue = append(p.queue, c)
	start := !p.running
	p.running = true
	p.mu.Unlock()
	if start {
		go p.sendRounds()
	}
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("produce %d record(s): %w", len(msgs), ctx.Err())
	}
}

// sendRounds sends everything queued, one round at a time, until the queue is empty.
func (p *Producer) sendRounds() {
	for {
		p.mu.Lock()
		calls := p.queue
		p.queue = nil
		if len(calls) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		err := p.sendRound(calls)
		for _, c := range calls {
			c.done <- err
		}
	}
}

// sendRound writes the records of calls, again after a failure (with fresh metadata) up to
// producerAttemptsMax times. A retry may write records that a failed attempt wrote already:
// consumers dedup by event id.
func (p *Producer) sendRound(calls []*produceCall) error {
	ctx, cancel := context.WithTimeout(context.Background(), writerWriteTimeoutMs*time.Millisecond)
	defer cancel()
	var err error
	delay := producerRetryDelayMinMs * time.Millisecond
	for attempt := 1; attempt <= producerAttemptsMax; attempt++ {
		if err = p.sendOnce(ctx, calls, attempt > 1); err == nil || ctx.Err() != nil || attempt == producerAttemptsMax {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, producerRetryDelayMaxMs*time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	return nil
}

// leaderKey names a partition leader.
type leaderKey struct {
	id   int
	addr string
}

func (p *Producer) sendOnce(ctx context.Context, calls []*produceCall, refresh bool) error {
	topics := map[string]bool{}
	for _, c := range calls {
		for _, m := range c.msgs {
			topics[m.Topic] = true
		}
	}
	meta, err := p.metadata(ctx, topics, refresh)
	if err != nil {
		return err
	}
	// Group the records by leader, then topic, then partition, keeping their order.
	type tp struct {
		topic     string
		partition int
	}
	records := map[tp][]protocol.Record{}
	leaders := map[leaderKey][]tp{}
	balancer := &kafka.Murmur2Balancer{}
	now := time.Now()
	partitionIDs := map[string][]int{}
	for _, c := range calls {
		for _, m := range c.msgs {
			parts := meta[m.Topic]
			if len(parts) == 0 {
				return fmt.Errorf("topic %s has no partitions", m.Topic)
			}
			ids, ok := partitionIDs[m.Topic]
			if !ok {
				ids = make([]int, len(parts))
				for i, pt := range parts {
					ids[i] = pt.ID
				}
				partitionIDs[m.Topic] = ids
			}
			id := balancer.Balance(m, ids...)
			k := tp{m.Topic, id}
			if _, ok := records[k]; !ok {
				l := parts[slices.IndexFunc(parts, func(pt kafka.Partition) bool { return pt.ID == id })].Leader
				lk := leaderKey{id: l.ID, addr: net.JoinHostPort(l.Host, strconv.Itoa(l.Port))}
				leaders[lk] = append(leaders[lk], k)
			}
			t := m.Time
			if t.IsZero() {
				t = now
			}
			records[k] = append(records[k], protocol.Record{Time: t, Key: protocol.NewBytes(m.Key),
				Value: protocol.NewBytes(m.Value), Headers: m.Headers})
		}
	}
	errs := make(chan error, len(leaders))
	var wg sync.WaitGroup
	for _, tps := range leaders {
		req := &produceapi.Request{Acks: int16(kafka.RequireAll), Timeout: int32(writerWriteTimeoutMs)}
		for _, k := range tps {
			i := slices.IndexFunc(req.Topics, func(t produceapi.RequestTopic) bool { return t.Topic == k.topic })
			if i < 0 {
				req.Topics = append(req.Topics, produceapi.RequestTopic{Topic: k.topic})
				i = len(req.Topics) - 1
			}
			req.Topics[i].Partitions = append(req.Topics[i].Partitions, produceapi.RequestPartition{Partition: int32(k.partition),
				RecordSet: protocol.RecordSet{Version: 2, Records: protocol.NewRecordReader(records[k]...)}})
		}
		wg.Go(func() { errs <- p.roundTrip(ctx, req) })
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// roundTrip sends one produce request and checks every partition's answer.
func (p *Producer) roundTrip(ctx context.Context, req *produceapi.Request) error {
	res, err := p.transport.RoundTrip(ctx, p.addr, req)
	if err != nil {
		return fmt.Errorf("produce request: %w", err)
	}
	r, ok := res.(*produceapi.Response)
	if !ok {
		return fmt.Errorf("produce request: unexpected answer %T", res)
	}
	var errs []error
	for _, t := range r.Topics {
		for _, pt := range t.Partitions {
			if pt.ErrorCode != 0 {
				errs = append(errs, fmt.Errorf("%s/%d: %w", t.Topic, pt.Partition, kafka.Error(pt.ErrorCode)))
			}
		}
	}
	return errors.Join(errs...)
}

// metadata returns the partitions of topics, from a cache younger than producerMetadataMaxAgeMs
// unless refresh is set.
func (p *Producer) metadata(ctx context.Context, topics map[string]bool, refresh bool) (map[string][]kafka.Partition, error) {
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	fresh := !refresh && time.Since(p.metaAt) < producerMetadataMaxAgeMs*time.Millisecond
	for t := range topics {
		if _, ok := p.meta[t]; !ok {
			fresh = false
		}
	}
	if fresh {
		return p.meta, nil
	}
	names := make([]string, 0, len(topics)+len(p.meta))
	for t := range topics {
		names = append(names, t)
	}
	for t := range p.meta {
		if !topics[t] {
			names = append(names, t)
		}
	}
	res, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	meta := make(map[string][]kafka.Partition, len(res.Topics))
	for _, t := range res.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("metadata of %s: %w", t.Name, t.Error)
		}
		parts := slices.Clone(t.Partitions)
		slices.SortFunc(parts, func(a, b kafka.Partition) int { return a.ID - b.ID })
		meta[t.Name] = parts
	}
	p.meta, p.metaAt = meta, time.Now()
	return meta, nil
}
