package loadtest_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/functions/rates/loadtest"
)

// TestRunCountsAndRevalidates drives a small load at a server that answers 304 to a matching
// If-None-Match, with net/http's client and with the wire client, and checks the counts, the bytes
// read and that revalidation happened.
func TestRunCountsAndRevalidates(t *testing.T) {
	const body = `{"rates":[]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Etag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	for _, wire := range []bool{false, true} {
		t.Run(fmt.Sprintf("wire=%v", wire), func(t *testing.T) {
			res, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: 4, Requests: 200, Revalidate: true, Wire: wire})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 200 || res.Errors != 0 || res.NotModified != 196 || res.Bytes != 4*int64(len(body)) ||
				res.P99 < res.P50 || res.RequestsPerSec <= 0 {
				t.Fatalf("got %v, %d bytes", res, res.Bytes)
			}
			if _, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Wire: wire}); err == nil {
				t.Fatal("no concurrency accepted")
			}
		})
	}
}

// TestWireClientRedialsAndRefusesWhatItCannotRead checks the wire client against a server that
// closes every connection after one answer (each request then redials), and fails a run whose
// answers are chunked, which it cannot read, rather than counting them as successes.
func TestWireClientRedialsAndRefusesWhatItCannotRead(t *testing.T) {
	closing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprint(w, "ok")
	}))
	defer closing.Close()
	res, err := loadtest.Run(context.Background(), loadtest.Options{URL: closing.URL, Concurrency: 2, Requests: 20, Wire: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 20 || res.Errors != 0 || res.Bytes != 40 {
		t.Fatalf("closing server: got %v, %d bytes", res, res.Bytes)
	}
	chunked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "part one ")
		w.(http.Flusher).Flush()
		fmt.Fprint(w, "part two")
	}))
	defer chunked.Close()
	if res, err := loadtest.Run(context.Background(), loadtest.Options{URL: chunked.URL, Concurrency: 1, Requests: 3, Wire: true}); err == nil {
		t.Fatalf("chunked server: no error, got %v", res)
	}
	if _, err := loadtest.Run(context.Background(), loadtest.Options{URL: "https://example.invalid/", Concurrency: 1, Requests: 1, Wire: true}); err == nil {
		t.Fatal("an https URL was accepted in wire mode")
	}
}

// TestStreamMeasuresBatches holds two streams on a server that sends a snapshot and then an update
// batch every 20 ms, and checks every stream connected and lags were measured.
func TestStreamMeasuresBatches(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "event: snapshot\ndata: {\"rates\":[]}\n\n")
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			now := time.Now()
			fmt.Fprintf(w, ": emitted %d\nevent: rate\ndata: {\"pair\":\"USD_JPY\",\"time\":\"%s\"}\n\n",
				now.UnixMicro(), now.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	res, err := loadtest.Stream(context.Background(), loadtest.StreamOptions{URL: srv.URL, Clients: 2, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 2 || res.Ended != 0 || res.Updates < 4 || res.LagMax <= 0 || res.AgeP99 <= 0 {
		t.Fatalf("got %v", res)
	}
}

// TestWireSendsAcceptEncoding checks the wire client sends the Accept-Encoding it was given and
// counts the bytes as they arrive; net/http's client is refused the option.
func TestWireSendsAcceptEncoding(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") == "gzip" {
			w.Header().Set("Content-Encoding", "gzip")
			fmt.Fprint(w, "zz")
			return
		}
		fmt.Fprint(w, "plain body")
	}))
	defer srv.Close()
	res, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: 2, Requests: 10, Wire: true, AcceptEncoding: "gzip"})
	if err != nil || res.Errors != 0 || res.Bytes != 20 {
		t.Fatalf("gzip: %v, %d bytes, %v", res, res.Bytes, err)
	}
	if _, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: 1, Requests: 1, AcceptEncoding: "gzip"}); err == nil {
		t.Fatal("AcceptEncoding accepted without Wire")
	}
}

// TestOpenLoopChargesTheWait offers 500 requests/s to one client of a server that stalls 40 ms on
// one request. About 20 requests fall due during the stall, and in an open loop each counts its wait
// from when it was due, so the p99 of 200 shows the stall; counted from when each went out, only the
// stalled request would be slow and the p99 (the second slowest) would not. The loop never runs
// ahead of the offered rate.
func TestOpenLoopChargesTheWait(t *testing.T) {
	const (
		offeredPerSec = 500
		requests      = 200
		stallAt       = 50
		stall         = 40 * time.Millisecond
	)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == stallAt {
			time.Sleep(stall)
		}
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	res, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: 1, Requests: requests,
		Wire: true, OfferedPerSec: offeredPerSec})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != requests || res.Errors != 0 || res.Max < stall {
		t.Fatalf("got %v", res)
	}
	if res.P99 < stall/2 {
		t.Fatalf("p99 %v does not count the requests that waited behind the stall", res.P99)
	}
	if res.OfferedPerSec != offeredPerSec || res.RequestsPerSec > offeredPerSec*1.05 {
		t.Fatalf("ran ahead of the offered rate: %v", res)
	}
	for _, rate := range []float64{-1, math.NaN(), 1e-12, 2e6} {
		if _, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: 1, Requests: 1, OfferedPerSec: rate}); err == nil {
			t.Errorf("rate %v was accepted", rate)
		}
	}
}

// TestOpenLoopCountsWhatFellDueUnanswered runs timed open loops: 150 requests fall due in 300 ms at
// 500/s. A server that keeps up leaves none unanswered; one that takes 10 ms a request, with one
// client, answers about 30 and the rest count as missed, so the run cannot pass for sustained.
func TestOpenLoopCountsWhatFellDueUnanswered(t *testing.T) {
	const (
		offeredPerSec = 500
		duration      = 300 * time.Millisecond
		due           = 150
	)
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprintf("slow=%v", slow), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if slow {
					time.Sleep(10 * time.Millisecond)
				}
				fmt.Fprint(w, "ok")
			}))
			defer srv.Close()
			clients := 4
			if slow {
				clients = 1
			}
			res, err := loadtest.Run(context.Background(), loadtest.Options{URL: srv.URL, Concurrency: clients,
				Duration: duration, Wire: true, OfferedPerSec: offeredPerSec})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests > due || res.Requests+res.Missed != due || res.Errors != 0 {
				t.Fatalf("want %d due in all, none beyond: %v", due, res)
			}
			if slow && res.Missed < due/2 {
				t.Fatalf("a server at 100 requests/s left only %d of %d unanswered: %v", res.Missed, due, res)
			}
		})
	}
}
