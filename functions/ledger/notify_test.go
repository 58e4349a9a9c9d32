package ledger

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestBookNotifyFitsThePayloadLimit checks that a round's notifications carry every account id once,
// each payload under PostgreSQL's limit, and that a round that changed nothing notifies nothing.
func TestBookNotifyFitsThePayloadLimit(t *testing.T) {
	b := &pgx.Batch{}
	queueBookNotify(b, nil)
	if b.Len() != 0 {
		t.Fatalf("a round without changes queued %d statements", b.Len())
	}
	var ids []string
	for i := range 1000 {
		ids = append(ids, fmt.Sprintf("acc_%024d", i))
	}
	queueBookNotify(b, ids)
	if b.Len() != 1 {
		t.Fatalf("queued %d statements, want one", b.Len())
	}
	args := b.QueuedQueries[0].Arguments
	if args[0] != bookChannel {
		t.Fatalf("channel %v", args[0])
	}
	payloads := args[1].([]string)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for 1,000 ids of 28 bytes; want them split", len(payloads))
	}
	var got []string
	for _, p := range payloads {
		if len(p) > notifyPayloadBytesMax {
			t.Fatalf("payload of %d bytes", len(p))
		}
		got = append(got, strings.Split(p, ",")...)
	}
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("payloads carry %d ids, not the 1,000 in order", len(got))
	}
}
