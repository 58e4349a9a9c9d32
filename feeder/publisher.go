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
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Publishing limits. A term's quotes queue in order; the publisher takes whatever is queued as one
// batch, produces it to every partition concurrently, and starts the next batch only when the broker
// acknowledged the whole previous one, so order per pair (one pair, one partition) always holds.
const (
	publishQueueRatesMax = 16_384
	publishBatchRatesMax = 2_048
	publishAttemptsMax   = 3
	publishRetryDelayMs  = 50
	produceTimeoutMs     = 2_000
	dialTimeoutMs        = 2_000
	transportIdleMs      = 60_000
	metadataTimeoutMs    = 5_000
	kafkaClientID        = "kawase-feeder"
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
	lease       *Lease
	topic       string
	enc         *rateEncoder
	transport   *kafka.Transport
	client      *kafka.Client
	partitionOf map[fx.Pair]int
	in          chan *pending
	metrics     *Metrics
	published   map[fx.Pair]prometheus.Counter
	observe     func(Published)
	log         *zap.Logger
}

func newPublisher(ctx context.Context, cfg *Config, lease *Lease, m *Metrics) (*publisher, error) {
	tr := &kafka.Transport{
		Dial: fencedDialer(lease), DialTimeout: dialTimeoutMs * time.Millisecond, ClientID: kafkaClientID,
		IdleTimeout: transportIdleMs * time.Millisecond, MetadataTopics: []string{cfg.Topic},
	}
	enc, err := newRateEncoder()
	if err != nil {
		return nil, fmt.Errorf("rate encoder: %w", err)
	}
	p := &publisher{
		lease: lease, topic: cfg.Topic, enc: enc, transport: tr, metrics: m, observe: cfg.OnPublished, log: cfg.Logger,
		client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: tr, Timeout: produceTimeoutMs * time.Millisecond},
		in:     make(chan *pending, publishQueueRatesMax), published: map[fx.Pair]prometheus.Counter{},
	}
	for _, pair := range cfg.Pairs {
		p.published[pair] = m.Published.WithLabelValues(string(pair))
	}
	if err := p.prime(ctx, cfg.Pairs); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return p, nil
}

// prime fetches the topic's partitions over the fenced connections, so the first rate of the term
// does not wait for a dial and a metadata round trip.
func (p *publisher) prime(ctx context.Context, pairs []fx.Pair) error {
	ctx, cancel := context.WithTimeout(ctx, metadataTimeoutMs*time.Millisecond)
	defer cancel()
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.topic}})
	if err != nil {
		return fmt.Errorf("kafka metadata: %w", err)
	}
	partitions, err := topicPartitions(md, p.topic)
	if err != nil {
		return err
	}
	p.partitionOf = partitionsByPair(pairs, partitions)
	return nil
}

func topicPartitions(md *kafka.MetadataResponse, topic string) ([]int, error) {
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("kafka topic %s: %w", topic, t.Error)
		}
		ids := make([]int, 0, len(t.Partitions))
		for _, part := range t.Partitions {
			ids = append(ids, part.ID)
		}
		slices.Sort(ids)
		if len(ids) > 0 {
			return ids, nil
		}
	}
	return nil, fmt.Errorf("kafka topic %s does not exist", topic)
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
	for {
		select {
		case <-ctx.Done():
			p.dropQueued("term_ended")
			return ctx.Err()
		case q := <-p.in:
			batch = append(batch[:0], q)
		}
		batch = p.drain(batch)
		if err := p.publish(ctx, batch); err != nil {
			p.dropQueued("publish_failed")
			return err
		}
	}
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

// publish encodes one batch and produces it, every partition concurrently, each retried a bounded
// number of times.
func (p *publisher) publish(ctx context.Context, batch []*pending) error {
	if !p.lease.Held() {
		p.metrics.Dropped.WithLabelValues("fenced").Add(float64(len(batch)))
		p.log.Warn("leadership not held: refusing to publish", zap.Int64("epoch", p.lease.Epoch()),
			zap.Int("dropped", len(batch)))
		return errFenced
	}
	byPartition := map[int][]*pending{}
	for _, q := range batch {
		m, err := p.enc.encode(&q.rate, time.Now())
		if err != nil {
			panic(fmt.Sprintf("feeder: validated rate does not encode: %v", err))
		}
		q.msg = m
		part := p.partitionOf[q.pair]
		byPartition[part] = append(byPartition[part], q)
	}
	errs := make([]error, 0, len(byPartition))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for part, qs := range byPartition {
		wg.Go(func() {
			if err := p.produceWithRetry(ctx, part, qs); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (p *publisher) produceWithRetry(ctx context.Context, part int, qs []*pending) error {
	var err error
	for attempt := range publishAttemptsMax {
		if attempt > 0 && !sleepCtx(ctx, time.Duration(attempt)*publishRetryDelayMs*time.Millisecond) {
			break
		}
		if !p.lease.Held() {
			err = errFenced
			break
		}
		if err = p.produce(ctx, part, qs); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		p.metrics.PublishErrors.Inc()
		p.log.Warn("kafka produce failed", zap.String("topic", p.topic), zap.Int("partition", part),
			zap.Int("records", len(qs)), zap.Int("attempt", attempt+1), zap.Error(err))
	}
	reason := "publish_failed"
	switch {
	case ctx.Err() != nil:
		reason, err = "term_ended", context.Cause(ctx)
	case errors.Is(err, errFenced):
		reason = "fenced"
	}
	p.metrics.Dropped.WithLabelValues(reason).Add(float64(len(qs)))
	return fmt.Errorf("publish %d rate(s) to %s[%d]: %w", len(qs), p.topic, part, err)
}

func (p *publisher) produce(ctx context.Context, part int, qs []*pending) error {
	records := make([]kafka.Record, len(qs))
	readers := make([]recordBytes, 2*len(qs))
	now := time.Now()
	for i, q := range qs {
		key, value := &readers[2*i], &readers[2*i+1]
		key.Reset(q.msg.Key)
		value.Reset(q.msg.Value)
		records[i] = kafka.Record{Time: now, Key: key, Value: value, Headers: q.msg.Headers}
	}
	resp, err := p.client.Produce(ctx, &kafka.ProduceRequest{
		Topic: p.topic, Partition: part, RequiredAcks: kafka.RequireAll, Records: kafka.NewRecordReader(records...),
	})
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		return err
	}
	p.acked(qs, time.Now())
	return nil
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
