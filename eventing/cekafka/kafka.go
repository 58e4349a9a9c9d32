package cekafka

import (
	"context"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"
)

// Latency tuning of every writer: kafka-go's default BatchTimeout of one second would add up to a
// second to every synchronous write, so writers flush after at most writerBatchTimeoutMs.
//
// A reader's MaxWait is how long the broker holds a fetch that finds nothing new; a fetch returns as
// soon as one record arrives (MinBytes 1), so MaxWait does not delay records. kafka-go gives the
// broker three quarters of MaxWait and the connection all of it, then treats a late answer as a broken
// connection: it redials after a backoff of at least 100 ms. A short MaxWait therefore adds that delay
// (and a dial) whenever the machine is busy enough to answer a quarter of MaxWait late; at 500 ms,
// Kafka's own default, that takes a 125 ms stall. The cost is that closing a reader waits for its
// outstanding fetch, up to three quarters of MaxWait.
const (
	writerBatchTimeoutMs   = 2
	writerBatchSizeMax     = 1000
	writerWriteTimeoutMs   = 10_000
	writerMaxAttemptsCount = 10
	readerMaxWaitMs        = 500
	readerMaxBytes         = 10 << 20
)

// NewWriter returns a kafka-go writer for topic tuned for latency. Keys are partitioned with murmur2,
// the Java client's partitioner, so records keyed by us land on the same partition as records with the
// same key written by Knative's (Java) Kafka ingress. Writes wait for all in-sync replicas.
func NewWriter(brokers []string, topic string) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     &kafka.Murmur2Balancer{},
		BatchTimeout: writerBatchTimeoutMs * time.Millisecond,
		BatchSize:    writerBatchSizeMax,
		WriteTimeout: writerWriteTimeoutMs * time.Millisecond,
		MaxAttempts:  writerMaxAttemptsCount,
		RequiredAcks: kafka.RequireAll,
	}
}

// Publish writes events in binary mode, in order, and returns once the broker acknowledged them all.
func Publish(ctx context.Context, w *kafka.Writer, events ...cloudevents.Event) error {
	msgs, err := toMessages("", events)
	if err != nil {
		return err
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("publish %d event(s) to %s: %w", len(msgs), w.Topic, err)
	}
	return nil
}

// NewGroupReader returns a consumer-group reader of topic that commits offsets only when told to
// (CommitMessages), so a consumer commits after it has processed a record and never before.
func NewGroupReader(brokers []string, topic, group string) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:        brokers,
		Topic:          topic,
		GroupID:        group,
		MinBytes:       1,
		MaxBytes:       readerMaxBytes,
		MaxWait:        readerMaxWaitMs * time.Millisecond,
		StartOffset:    kafka.FirstOffset,
		CommitInterval: 0,
	})
}

// toMessages renders events as binary-mode records for topic (empty: the writer's own topic).
func toMessages(topic string, events []cloudevents.Event) ([]kafka.Message, error) {
	msgs := make([]kafka.Message, 0, len(events))
	for _, e := range events {
		m, err := ToMessage(e)
		if err != nil {
			return nil, err
		}
		m.Topic = topic
		msgs = append(msgs, m)
	}
	return msgs, nil
}
