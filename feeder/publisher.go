package feeder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Publishing limits. A term's quotes queue in order; the publisher takes what arrives within a short
// linger as one batch, produces it with one request per partition leader, and starts the next batch
// only when the broker acknowledged the whole previous one, so order per pair (one pair, one
// partition) always holds.
const (
	publishQueueRatesMax = 16_384
	publishBatchRatesMax = 2_048
	publishLingerMs      = 2
	publishAttemptsMax   = 3
	publishRetryDelayMs  = 50
	produceTimeoutMs     = 2_000
	// produceDeadlineSlackMs lets the broker answer a produce that timed out on its side before the
	// client gives up on it, so a refusal is heard as one instead of as an unknown outcome.
	produceDeadlineSlackMs = 1_000
	dialTimeoutMs          = 2_000
	transportIdleMs        = 60_000
	metadataTimeoutMs      = 5_000
	kafkaClientID          = "kawase-feeder"
)

// errFenced refuses a write to the broker once the term's lease is no longer held.
var errFenced = errors.New("fenced: leadership not held")

// pending is one quote on its way to Kafka.
type pending struct {
	pair fx.Pair
	msg  kafka.Message
	// receivedAt is when quickfixgo read the message off the socket; sentAt its SendingTime(52).
	receivedAt, sentAt time.Time
	rate               eventing.RateV1
}

// Published describes one acknowledged rate, for observers (tests, benchmarks).
type Published struct {
	Rate       *eventing.RateV1
	SentAt     time.Time
	ReceivedAt time.Time
	AckedAt    time.Time
}

// publisher produces one term's rates. Its Kafka connections are fenced by the term's lease: every
// write to the socket first checks that the lease is held, so even a batch that was already on its
// way when the process froze is refused once the process wakes after its lease deadline.
type publisher struct {
	lease   *Lease
	topic   string
	enc     *rateEncoder
	brokers []string
	// transport and client are replaced after a failed produce; leaderOf is the broker that leads
	// each partition as the transport sees it. Only publish's goroutine replaces them, while no
	// produce is in flight. metadataTTL is kafka-go's refresh interval (0: its default); tests
	// lengthen it so that a leader move stays unseen until the publisher reconnects.
	transport   *kafka.Transport
	client      *kafka.Client
	leaderOf    map[int]int
	metadataTTL time.Duration
	partitionOf map[fx.Pair]int
	in          chan *pending
	// linger is publishLingerMs; tests lengthen it to tell batches apart.
	linger    time.Duration
	metrics   *Metrics
	published map[fx.Pair]prometheus.Counter
	observe   func(Published)
	log       *zap.Logger
}

func newPublisher(ctx context.Context, cfg *Config, lease *Lease, m *Metrics) (*publisher, error) {
	enc, err := newRateEncoder()
	if err != nil {
		return nil, fmt.Errorf("rate encoder: %w", err)
	}
	p := &publisher{
		lease: lease, topic: cfg.Topic, brokers: cfg.Brokers, enc: enc, metrics: m, observe: cfg.OnPublished, log: cfg.Logger,
		in: make(chan *pending, publishQueueRatesMax), published: map[fx.Pair]prometheus.Counter{},
		linger: publishLingerMs * time.Millisecond,
	}
	p.connect()
	for _, pair := range cfg.Pairs {
		p.published[pair] = m.Published.WithLabelValues(string(pair))
	}
	if err := p.prime(ctx, cfg.Pairs); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// connect gives the publisher a fresh transport, whose connections are fenced by the lease.
func (p *publisher) connect() {
	p.transport = &kafka.Transport{
		Dial: fencedDialer(p.lease), DialTimeout: dialTimeoutMs * time.Millisecond, ClientID: kafkaClientID,
		IdleTimeout: transportIdleMs * time.Millisecond, MetadataTopics: []string{p.topic}, MetadataTTL: p.metadataTTL,
	}
	p.client = &kafka.Client{Addr: kafka.TCP(p.brokers...), Transport: p.transport, Timeout: metadataTimeoutMs * time.Millisecond}
}

// prime fetches the topic's partitions over the fenced connections, so the first rate of the term
// does not wait for a dial and a metadata round trip. A pair keeps its partition for the whole term.
func (p *publisher) prime(ctx context.Context, pairs []fx.Pair) error {
	leaders, err := p.lookUpLeaders(ctx)
	if err != nil {
		return err
	}
	partitions := make([]int, 0, len(leaders))
	for part := range leaders {
		partitions = append(partitions, part)
	}
	slices.Sort(partitions)
	p.partitionOf, p.leaderOf = partitionsByPair(pairs, partitions), leaders
	return nil
}

// reconnect starts over with a fresh transport after a failed produce. kafka-go's transport routes by
// metadata it caches and refreshes only every few seconds (its Metadata answers from that cache too),
// so a fresh one is how the next attempt goes where the partitions are now. A failed look-up keeps the
// old leaders; the attempt that follows then fails or succeeds on its own.
func (p *publisher) reconnect(ctx context.Context) {
	p.transport.CloseIdleConnections()
	p.connect()
	leaders, err := p.lookUpLeaders(ctx)
	if err != nil {
		p.log.Warn("kafka metadata look-up failed", zap.String("topic", p.topic), zap.Error(err))
		return
	}
	p.leaderOf = leaders
}

// lookUpLeaders returns the broker that leads each partition of the topic, as the transport sees it
// (the transport routes each produce request by the same view).
func (p *publisher) lookUpLeaders(ctx context.Context) (map[int]int, error) {
	ctx, cancel := context.WithTimeout(ctx, metadataTimeoutMs*time.Millisecond)
	defer cancel()
	return cekafka.Leaders(ctx, p.client, p.topic)
}

// partitionsByPair places each pair with murmur2, as cekafka's writers and Java clients do.
func partitionsByPair(pairs []fx.Pair, partitions []int) map[fx.Pair]int {
	var b kafka.Murmur2Balancer
	out := make(map[fx.Pair]int, len(pairs))
	for _, pair := range pairs {
		out[pair] = b.Balance(kafka.Message{Key: []byte(pair)}, partitions...)
	}
	return out
}

// enqueue hands a quote to the publisher; it blocks while the queue is full (back-pressure on the FIX
// session) and gives up when the term ends.
func (p *publisher) enqueue(ctx context.Context, q *pending) bool {
	select {
	case p.in <- q:
		return true
	case <-ctx.Done():
		p.metrics.Dropped.WithLabelValues("term_ended").Inc()
		return false
	}
}

// run publishes batches until ctx ends, the lease is lost, or a batch cannot be published after
// bounded retries: then the term must end.
func (p *publisher) run(ctx context.Context) error {
	batch := make([]*pending, 0, publishBatchRatesMax)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-ctx.Done():
			p.dropQueued("term_ended")
			return ctx.Err()
		case q := <-p.in:
			batch = append(batch[:0], q)
		}
		if wait := min(p.linger, p.linger-time.Since(batch[0].receivedAt)); wait > 0 {
			batch = p.gather(batch, linger, wait)
		} else {
			batch = p.drain(batch) // it waited behind the previous batch long enough
		}
		if err := p.publish(ctx, batch); err != nil {
			p.dropQueued("publish_failed")
			return err
		}
	}
}

// gather adds to the batch what arrives within wait, the rest of publishLingerMs after its first rate
// was received (the provider spreads its quotes over the cycle, so without the wait nearly every
// request would carry one rate), then whatever else is queued, up to publishBatchRatesMax.
func (p *publisher) gather(batch []*pending, linger *time.Timer, wait time.Duration) []*pending {
	linger.Reset(wait)
	defer linger.Stop()
	for len(batch) < publishBatchRatesMax {
		select {
		case q := <-p.in:
			batch = append(batch, q)
		case <-linger.C:
			return p.drain(batch)
		}
	}
	return batch
}

func (p *publisher) drain(batch []*pending) []*pending {
	for len(batch) < publishBatchRatesMax {
		select {
		case q := <-p.in:
			batch = append(batch, q)
		default:
			return batch
		}
	}
	return batch
}

func (p *publisher) dropQueued(reason string) {
	n := 0
	for {
		select {
		case <-p.in:
			n++
		default:
			if n > 0 {
				p.metrics.Dropped.WithLabelValues(reason).Add(float64(n))
			}
			return
		}
	}
}

// publish encodes one batch and produces it: one produce request per partition leader carries every
// partition's records, and partitions the broker refused are retried a bounded number of times.
func (p *publisher) publish(ctx context.Context, batch []*pending) error {
	if !p.lease.Held() {
		p.metrics.Dropped.WithLabelValues("fenced").Add(float64(len(batch)))
		p.log.Warn("leadership not held: refusing to publish", zap.Int64("epoch", p.lease.Epoch()),
			zap.Int("dropped", len(batch)))
		return errFenced
	}
	remaining := map[int][]*pending{}
	for _, q := range batch {
		m, err := p.enc.encode(&q.rate, time.Now())
		if err != nil {
			panic(fmt.Sprintf("feeder: validated rate does not encode: %v", err))
		}
		q.msg = m
		part := p.partitionOf[q.pair]
		remaining[part] = append(remaining[part], q)
	}
	var err error
	for attempt := range publishAttemptsMax {
		if attempt > 0 && !sleepCtx(ctx, time.Duration(attempt)*publishRetryDelayMs*time.Millisecond) {
			break
		}
		if !p.lease.Held() {
			err = errFenced
			break
		}
		if attempt > 0 {
			p.reconnect(ctx)
		}
		if remaining, err = p.produceAll(ctx, remaining); len(remaining) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		p.metrics.PublishErrors.Inc()
		p.log.Warn("kafka produce failed", zap.String("topic", p.topic), zap.Int("partitions", len(remaining)),
			zap.Int("attempt", attempt+1), zap.Error(err))
	}
	return p.dropUnpublished(ctx, remaining, err)
}

// dropUnpublished counts the rates of a batch that could not be published and says why.
func (p *publisher) dropUnpublished(ctx context.Context, remaining map[int][]*pending, err error) error {
	n := 0
	for _, qs := range remaining {
		n += len(qs)
	}
	reason := "publish_failed"
	switch {
	case ctx.Err() != nil:
		reason, err = "term_ended", context.Cause(ctx)
	case errors.Is(err, errFenced):
		reason = "fenced"
	}
	p.metrics.Dropped.WithLabelValues(reason).Add(float64(n))
	return fmt.Errorf("publish %d rate(s) to %d partition(s) of %s: %w", n, len(remaining), p.topic, err)
}

// produceAll sends one produce request to each leader of the batch's partitions, concurrently, and
// returns the partitions whose records were not acknowledged, with the errors.
func (p *publisher) produceAll(ctx context.Context, byPartition map[int][]*pending) (map[int][]*pending, error) {
	byLeader := map[int]map[int][]*pending{}
	for part, qs := range byPartition {
		leader := p.leaderOf[part]
		if byLeader[leader] == nil {
			byLeader[leader] = map[int][]*pending{}
		}
		byLeader[leader][part] = qs
	}
	tr, addr := p.transport, p.client.Addr
	failed := map[int][]*pending{}
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, parts := range byLeader {
		wg.Go(func() {
			refused := p.produce(ctx, tr, addr, parts)
			mu.Lock()
			defer mu.Unlock()
			for part, err := range refused {
				failed[part] = parts[part]
				errs = append(errs, fmt.Errorf("partition %d: %w", part, err))
			}
		})
	}
	wg.Wait()
	return failed, errors.Join(errs...)
}

// produce sends the records of partitions that share a leader in one request, and returns the error
// of each partition that was not acknowledged.
func (p *publisher) produce(ctx context.Context, tr *kafka.Transport, addr net.Addr, parts map[int][]*pending) map[int]error {
	ctx, cancel := context.WithTimeout(ctx, (produceTimeoutMs+produceDeadlineSlackMs)*time.Millisecond)
	defer cancel()
	req := &produceapi.Request{Acks: int16(kafka.RequireAll), Timeout: produceTimeoutMs,
		Topics: []produceapi.RequestTopic{{Topic: p.topic, Partitions: make([]produceapi.RequestPartition, 0, len(parts))}}}
	now := time.Now()
	for part, qs := range parts {
		req.Topics[0].Partitions = append(req.Topics[0].Partitions,
			produceapi.RequestPartition{Partition: int32(part), RecordSet: protocol.RecordSet{Records: recordsOf(qs, now)}})
	}
	m, err := tr.RoundTrip(ctx, addr, req)
	refused := make(map[int]error, len(parts))
	if err != nil {
		for part := range parts {
			refused[part] = err
		}
		return refused
	}
	acked := make(map[int]bool, len(parts))
	for _, t := range m.(*produceapi.Response).Topics {
		for _, rp := range t.Partitions {
			part := int(rp.Partition)
			if _, sent := parts[part]; !sent || t.Topic != p.topic || acked[part] || refused[part] != nil {
				continue // not asked for, or answered already
			}
			if rp.ErrorCode == 0 {
				acked[part] = true
			} else {
				refused[part] = partitionRefusal(rp)
			}
		}
	}
	at := time.Now()
	for part, qs := range parts {
		switch {
		case acked[part]:
			p.acked(qs, at)
		case refused[part] == nil:
			refused[part] = errors.New("no answer for the partition")
		}
	}
	return refused
}

// recordsOf lends kafka-go a partition's records without copying their bytes.
func recordsOf(qs []*pending, now time.Time) protocol.RecordReader {
	records := make([]kafka.Record, len(qs))
	readers := make([]recordBytes, 2*len(qs))
	for i, q := range qs {
		key, value := &readers[2*i], &readers[2*i+1]
		key.Reset(q.msg.Key)
		value.Reset(q.msg.Value)
		records[i] = kafka.Record{Time: now, Key: key, Value: value, Headers: q.msg.Headers}
	}
	return kafka.NewRecordReader(records...)
}

// recordBytes is a record's key or value for kafka-go, allocated a batch at a time (kafka.NewBytes
// allocates one each).
type recordBytes struct{ bytes.Reader }

// Close implements kafka.Bytes.
func (*recordBytes) Close() error { return nil }

func (p *publisher) acked(qs []*pending, at time.Time) {
	for _, q := range qs {
		p.published[q.pair].Inc()
		p.metrics.PublishLatency.Observe(at.Sub(q.receivedAt).Seconds())
		if p.observe != nil {
			p.observe(Published{Rate: &q.rate, SentAt: q.sentAt, ReceivedAt: q.receivedAt, AckedAt: at})
		}
	}
}

// close drops the term's connections.
func (p *publisher) close() { p.transport.CloseIdleConnections() }

// fencedDialer dials connections that refuse every write once the lease is not held.
func fencedDialer(lease *Lease) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: dialTimeoutMs * time.Millisecond}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !lease.Held() {
			return nil, errFenced
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &fencedConn{Conn: c, lease: lease}, nil
	}
}

// fencedConn checks the lease immediately before each write to the socket.
type fencedConn struct {
	net.Conn
	lease *Lease
}

// Write writes b only while the lease is held.
func (c *fencedConn) Write(b []byte) (int, error) {
	if !c.lease.Held() {
		return 0, errFenced
	}
	return c.Conn.Write(b)
}

// recordErrorsShownMax bounds how many per-record errors a refusal's text quotes.
const recordErrorsShownMax = 3

// partitionRefusal is the error of a partition the broker refused: its code, its message, and the
// first per-record errors (produce v8) that name which records it refused and why.
func partitionRefusal(rp produceapi.ResponsePartition) error {
	err := error(kafka.Error(rp.ErrorCode))
	if rp.ErrorMessage != "" {
		err = fmt.Errorf("%w: %s", err, rp.ErrorMessage)
	}
	for i, re := range rp.RecordErrors {
		if i == recordErrorsShownMax {
			return fmt.Errorf("%w; and %d more record errors", err, len(rp.RecordErrors)-i)
		}
		err = fmt.Errorf("%w; record %d: %s", err, re.BatchIndex, re.BatchIndexErrorMessage)
	}
	return err
}
