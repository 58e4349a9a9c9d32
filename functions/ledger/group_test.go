package ledger

import (
	"context"
	"testing"

	"github.com/kawase-fx/kawase/eventing"
)

// A round takes at most one command per account; the others wait, in their order, for later rounds.
func TestRoundTakesOneCommandPerAccountInOrder(t *testing.T) {
	var g grouper
	for _, id := range []string{"A1", "B1", "A2", "C1", "A3", "B2"} {
		g.enqueue(&request{ctx: context.Background(), cmd: &eventing.OrderCommandV1{CommandID: id, AccountID: id[:1]}})
	}
	var rounds [][]string
	for {
		reqs := g.take()
		if reqs == nil {
			break
		}
		var ids []string
		for _, r := range reqs {
			ids = append(ids, r.cmd.CommandID)
		}
		rounds = append(rounds, ids)
	}
	want := [][]string{{"A1", "B1", "C1"}, {"A2", "B2"}, {"A3"}}
	if len(rounds) != len(want) {
		t.Fatalf("rounds %v, want %v", rounds, want)
	}
	for i := range want {
		if len(rounds[i]) != len(want[i]) {
			t.Fatalf("rounds %v, want %v", rounds, want)
		}
		for j := range want[i] {
			if rounds[i][j] != want[i][j] {
				t.Fatalf("rounds %v, want %v", rounds, want)
			}
		}
	}
	if g.running {
		t.Error("the round loop still counts as running with an empty queue")
	}
}

// A full queue is taken groupCommandsMax commands at a time.
func TestRoundIsBounded(t *testing.T) {
	var g grouper
	for i := range groupCommandsMax + 1 {
		id := string(rune('a'+i%26)) + string(rune('a'+i/26))
		g.enqueue(&request{ctx: context.Background(), cmd: &eventing.OrderCommandV1{CommandID: id, AccountID: id}})
	}
	if n := len(g.take()); n != groupCommandsMax {
		t.Errorf("first round took %d commands, want %d", n, groupCommandsMax)
	}
	if n := len(g.take()); n != 1 {
		t.Errorf("second round took %d commands, want 1", n)
	}
}

// A request whose caller stopped waiting is dropped from the queue unapplied.
func TestRoundDropsAbandonedRequests(t *testing.T) {
	var g grouper
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	g.enqueue(&request{ctx: gone, cmd: &eventing.OrderCommandV1{CommandID: "A1", AccountID: "A"}})
	g.enqueue(&request{ctx: context.Background(), cmd: &eventing.OrderCommandV1{CommandID: "A2", AccountID: "A"}})
	reqs := g.take()
	if len(reqs) != 1 || reqs[0].cmd.CommandID != "A2" {
		t.Fatalf("round %v, want only A2", reqs)
	}
	if g.take() != nil || g.running {
		t.Fatal("the queue is not empty after the round")
	}
}
