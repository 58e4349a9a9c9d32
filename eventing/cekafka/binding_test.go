package cekafka

import (
	"errors"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"
)

func sampleEvent(t *testing.T) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID("rate:USD_JPY:1")
	e.SetType("kawase.rate.v1")
	e.SetSource("/kawase/feeder")
	e.SetSubject("USD_JPY")
	e.SetTime(time.Date(2026, 11, 22, 4, 0, 0, 123_000_000, time.UTC))
	e.SetDataSchema("https://kawase.dev/schemas/rate.v1.json")
	e.SetExtension("partitionkey", "USD_JPY")
	e.SetExtension("epoch", 7)
	if err := e.SetData("application/json", []byte(`{"bid":"151.420"}`)); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestBinaryModeRoundTrip(t *testing.T) {
	e := sampleEvent(t)
	m, err := ToMessage(e)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Key) != "USD_JPY" {
		t.Errorf("key = %q, want the partitionkey", m.Key)
	}
	want := map[string]string{"ce_specversion": "1.0", "ce_id": "rate:USD_JPY:1", "ce_type": "kawase.rate.v1",
		"ce_source": "/kawase/feeder", "ce_time": "2026-11-22T04:00:00.123Z", "content-type": "application/json",
		"ce_partitionkey": "USD_JPY", "ce_epoch": "7", "ce_subject": "USD_JPY"}
	for k, v := range want {
		if got := header(m.Headers, k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	back, err := FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID() != e.ID() || back.Type() != e.Type() || back.Source() != e.Source() ||
		!back.Time().Equal(e.Time()) || string(back.Data()) != string(e.Data()) ||
		back.DataContentType() != "application/json" || back.Subject() != "USD_JPY" {
		t.Errorf("round trip changed the event:\n%s\n%s", e, back)
	}
	if back.Extensions()["epoch"] != "7" {
		t.Errorf("extension epoch = %v", back.Extensions()["epoch"])
	}
}

func TestStructuredModeRead(t *testing.T) {
	e := sampleEvent(t)
	body, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	m := kafka.Message{Key: []byte("USD_JPY"), Value: body,
		Headers: []kafka.Header{{Key: "content-type", Value: []byte("application/cloudevents+json; charset=utf-8")}}}
	back, err := FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID() != e.ID() || string(back.Data()) != string(e.Data()) || back.Extensions()["partitionkey"] != "USD_JPY" {
		t.Errorf("structured read = %s", back)
	}
}

func TestFromMessageRefusesNonEvents(t *testing.T) {
	cases := map[string]kafka.Message{
		"plain":          {Value: []byte("hello")},
		"missing id":     {Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_type", Value: []byte("x")}, {Key: "ce_source", Value: []byte("/x")}}},
		"bad structured": {Value: []byte("{"), Headers: []kafka.Header{{Key: "content-type", Value: []byte("application/cloudevents+json")}}},
		"bad time":       {Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("1")}, {Key: "ce_type", Value: []byte("x")}, {Key: "ce_source", Value: []byte("/x")}, {Key: "ce_time", Value: []byte("yesterday")}}},
	}
	for name, m := range cases {
		if _, err := FromMessage(m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := FromMessage(cases["plain"]); !errors.Is(err, ErrNotCloudEvent) {
		t.Errorf("plain record: err = %v, want ErrNotCloudEvent", err)
	}
}
