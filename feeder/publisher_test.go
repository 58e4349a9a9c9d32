package feeder

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestFencedConnRefusesAfterDeadline: a connection dialed during a term writes while the lease is
// held and refuses every write once its deadline passed — what a process woken from SIGSTOP meets.
func TestFencedConnRefusesAfterDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		received <- b
	}()
	lease := newLease(nil)
	lease.epoch.Store(1)
	lease.prove(time.Now(), 100*time.Millisecond)
	c, err := fencedDialer(lease)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("held;")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if _, err := c.Write([]byte("stale")); !errors.Is(err, errFenced) {
		t.Fatalf("write after the deadline: %v", err)
	}
	if _, err := fencedDialer(lease)(context.Background(), "tcp", ln.Addr().String()); !errors.Is(err, errFenced) {
		t.Fatalf("dial after the deadline: %v", err)
	}
	_ = c.Close()
	if got := string(<-received); got != "held;" {
		t.Fatalf("peer received %q", got)
	}
}
