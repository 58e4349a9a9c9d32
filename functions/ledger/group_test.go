package ledger

import (
	"testing"

	"github.com/kawase-fx/kawase/eventing"
)

// A round takes at most one command per account; the others wait, in their order, for later rounds.
func TestRoundTakesOneCommandPerAccountInOrder(t *testing.T) {
	var g grouper
	for _, id := range []string{"A1", "B1", "A2", "C1", "A3", "B2"} {
		g.enqueue(&request{cmd: &eventing.OrderCommandV1{CommandID: id, AccountID: id[:1]}})
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
		g.enqueue(&request{cmd: &eventing.OrderCommandV1{CommandID: id, AccountID: id}})
	}
	if n := len(g.take()); n != groupCommandsMax {
		t.Errorf("first round took %d commands, want %d", n, groupCommandsMax)
	}
	if n := len(g.take()); n != 1 {
		t.Errorf("second round took %d commands, want 1", n)
	}
}
