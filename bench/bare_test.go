package main

import (
	"context"
	"flag"
	"io"
	"net/http"
	"os"
	"testing"
)

// TestMain lets the test binary stand in for the bench binary when startBare re-runs it as the bare
// server.
func TestMain(m *testing.M) {
	bareBody := flag.String("bare-body", "", "")
	bareEncoding := flag.String("bare-encoding", "", "")
	flag.Parse()
	if *bareBody != "" {
		if err := serveBare(*bareBody, *bareEncoding); err != nil {
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

func TestStartBareServesTheBytesFromItsOwnProcess(t *testing.T) {
	body := []byte(`{"rates":[]}`)
	url, stop, err := startBare(context.Background(), body, "gzip")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// Without compression, the client leaves the stored gzip bytes alone, as the load generator does.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	res, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(body) || res.Header.Get("Content-Encoding") != "gzip" || res.Header.Get("Content-Length") != "12" {
		t.Fatalf("got %q with %v", got, res.Header)
	}
	stop()
	if res, err := client.Get(url); err == nil {
		res.Body.Close()
		t.Fatalf("the bare server still answers after stop: %s", res.Status)
	}
}
