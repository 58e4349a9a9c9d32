package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
)

// TestCheckPartitionsReportsDrift: a topic created with one partition count and catalogued with
// another is reported, one that matches is not, and EnsureTopics leaves the existing topic alone.
func TestCheckPartitionsReportsDrift(t *testing.T) {
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brokers := []string{b.Addr()}
	created := []eventing.Topic{{Name: "t.same", Partitions: 3}, {Name: "t.grown", Partitions: 3}}
	if err := broker.EnsureTopics(ctx, brokers, created); err != nil {
		t.Fatal(err)
	}
	catalogue := []eventing.Topic{{Name: "t.same", Partitions: 3}, {Name: "t.grown", Partitions: 5}}
	if err := broker.EnsureTopics(ctx, brokers, catalogue); err != nil {
		t.Fatalf("EnsureTopics over existing topics: %v", err)
	}
	drift, err := broker.CheckPartitions(ctx, brokers, catalogue)
	if err != nil {
		t.Fatal(err)
	}
	want := broker.PartitionDrift{Topic: "t.grown", Have: 3, Catalogued: 5}
	if len(drift) != 1 || drift[0] != want {
		t.Fatalf("drift %v, want [%v]", drift, want)
	}
	if _, err := broker.CheckPartitions(ctx, brokers, []eventing.Topic{{Name: "t.missing", Partitions: 1}}); err == nil {
		t.Fatal("a missing topic was not reported")
	}
}
