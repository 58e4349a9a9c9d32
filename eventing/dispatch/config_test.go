package dispatch

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/kawase-fx/kawase/config"
	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/manifest"
)

// TestConfigRunsEndToEnd runs the topology of the real manifests against the real broker, with a
// recording HTTP server standing in for each Service, resolved as kawase dev resolves them. A trade
// execution posted to the executions KafkaChannel reaches the relay; the relay refuses it for good, so
// the Subscription dead-letters it into the deadletters KafkaSink, whose topic the deadletters-to-store
// KafkaSource delivers to the deadletters Service with the error extensions. A rate published to the
// rates topic reaches the ratekeeper.
func TestConfigRunsEndToEnd(t *testing.T) {
	addr := startBroker(t, eventing.Topics()...)
	set, err := manifest.Load(config.FS)
	if err != nil {
		t.Fatal(err)
	}
	top, err := FromManifest(set)
	if err != nil {
		t.Fatal(err)
	}
	const refusal = "external system refused the execution"
	services := map[string]*recorder{}
	for _, svc := range set.Services {
		services[svc.Name] = newRecorder(t, func(http.ResponseWriter, *http.Request, event.Event, int) (int, string) {
			if svc.Name == "relay" {
				return http.StatusBadRequest, refusal
			}
			return http.StatusOK, ""
		})
	}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	resolver := func(kind, name string) (string, error) {
		switch kind {
		case KindService:
			if rec, ok := services[name]; ok {
				return rec.url(), nil
			}
		case KindKafkaSink:
			return srv.URL + SinkPath(name), nil
		case KindKafkaChannel:
			return srv.URL + ChannelPath(name), nil
		}
		return "", fmt.Errorf("no %s called %s", kind, name)
	}
	startDispatcher(t, Config{Brokers: []string{addr}, TimeScale: 10, Resolve: resolver}, top, mux)

	exec := testEvent(t, "acct-42", 0)
	exec.SetType(eventing.TypeTradeExecuted)
	if got := post(t, srv.URL+ChannelPath("executions"), exec, true); got != http.StatusAccepted {
		t.Fatalf("channel ingress answered %d", got)
	}
	dead := services["deadletters"]
	waitFor(t, "the dead letter at the deadletters service", func() bool { return dead.attemptsOf(exec.ID()) > 0 })
	e := dead.accepted()[0]
	relay := services["relay"]
	for name, want := range map[string]string{ExtErrorDest: relay.url(), ExtErrorCode: "400",
		ExtErrorData: base64.StdEncoding.EncodeToString([]byte(refusal)), "partitionkey": "acct-42"} {
		if got := ext(e, name); got != want {
			t.Errorf("dead letter extension %s = %q, want %q", name, got, want)
		}
	}
	if e.Type() != eventing.TypeTradeExecuted || ext(e, ExtKafkaOffset) == "" {
		t.Errorf("dead letter: %s", e)
	}
	if got := relay.attemptsOf(exec.ID()); got != 1 {
		t.Errorf("relay saw %d attempts at a final 400, want 1", got)
	}

	rate := testEvent(t, "USD_JPY", 1)
	rate.SetType(eventing.TypeRate)
	publish(t, addr, eventing.TopicRates, rate)
	waitFor(t, "the rate at the ratekeeper", func() bool { return services["ratekeeper"].attemptsOf(rate.ID()) > 0 })
}
