// Package broker gives kawase its Kafka: the embedded Kafka-protocol broker (kfake) for local mode and
// tests when no KAFKA_BROKERS are configured, and topic creation from the event catalogue for any broker.
package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/kawase-fx/kawase/eventing"
)

// Limits of topic administration.
const (
	adminTimeoutMs     = 10_000
	replicationFactor  = 1
	ensureAttemptsMax  = 20
	ensureRetryDelayMs = 250
)

// Embedded is a running in-process Kafka-protocol broker reachable over TCP on loopback.
type Embedded struct {
	cluster *kfake.Cluster
	addr    string
}

// EmbeddedOptions configures the embedded broker.
type EmbeddedOptions struct {
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// DataDir keeps topics, records and committed offsets across restarts; empty keeps them in memory.
	DataDir string
}

// StartEmbedded starts the embedded broker. Topics are not created automatically: EnsureTopics does
// that from the catalogue, so a typo in a topic name fails instead of creating a stray topic.
func StartEmbedded(opts EmbeddedOptions) (*Embedded, error) {
	kopts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(opts.Port), kfake.ClusterID("kawase-dev")}
	if opts.DataDir != "" {
		kopts = append(kopts, kfake.DataDir(opts.DataDir))
	}
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka broker on port %d: %w", opts.Port, err)
	}
	addrs := c.ListenAddrs()
	if len(addrs) == 0 {
		c.Close()
		return nil, errors.New("start embedded kafka broker: no listen address")
	}
	return &Embedded{cluster: c, addr: addrs[0]}, nil
}

// Addr is the broker's host:port.
func (e *Embedded) Addr() string { return e.addr }

// Close stops the broker, flushing its data directory.
func (e *Embedded) Close() { e.cluster.Close() }

// EnsureTopics creates every topic that does not exist yet with its partition count and retention.
// It retries briefly while the broker is still starting.
func EnsureTopics(ctx context.Context, brokers []string, topics []eventing.Topic) error {
	var err error
	for range ensureAttemptsMax {
		if err = createTopics(ctx, brokers, topics); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ensure topics: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(ensureRetryDelayMs * time.Millisecond):
		}
	}
	return fmt.Errorf("ensure topics after %d attempts: %w", ensureAttemptsMax, err)
}

func createTopics(ctx context.Context, brokers []string, topics []eventing.Topic) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: adminTimeoutMs * time.Millisecond}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		tc := kafka.TopicConfig{Topic: t.Name, NumPartitions: t.Partitions, ReplicationFactor: replicationFactor}
		if t.Retention > 0 {
			tc.ConfigEntries = []kafka.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: strconv.FormatInt(t.Retention.Milliseconds(), 10)}}
		}
		req.Topics = append(req.Topics, tc)
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", name, terr)
		}
	}
	return nil
}

// PartitionDrift describes a topic whose partition count differs from the catalogue's: the broker
// keeps a topic as it was first created (a data directory from an older kawase, a topic made by
// hand), and EnsureTopics never changes one, because adding partitions would move keys to other
// partitions and break their order.
type PartitionDrift struct {
	Topic            string
	Have, Catalogued int
}

// String says what differs, for a start-up warning.
func (d PartitionDrift) String() string {
	return fmt.Sprintf("topic %s has %d partitions, the catalogue says %d", d.Topic, d.Have, d.Catalogued)
}

// CheckPartitions compares each topic's partition count on the broker with the catalogue's; a topic
// that does not exist is an error (EnsureTopics creates them).
func CheckPartitions(ctx context.Context, brokers []string, topics []eventing.Topic) ([]PartitionDrift, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: adminTimeoutMs * time.Millisecond}
	names := make([]string, len(topics))
	for i, t := range topics {
		names[i] = t.Name
	}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return nil, fmt.Errorf("check partitions: %w", err)
	}
	have := make(map[string]int, len(md.Topics))
	for _, t := range md.Topics {
		if t.Error == nil {
			have[t.Name] = len(t.Partitions)
		}
	}
	var drift []PartitionDrift
	for _, t := range topics {
		n, ok := have[t.Name]
		switch {
		case !ok || n == 0:
			return nil, fmt.Errorf("check partitions: topic %s does not exist", t.Name)
		case n != t.Partitions:
			drift = append(drift, PartitionDrift{Topic: t.Name, Have: n, Catalogued: t.Partitions})
		}
	}
	return drift, nil
}
