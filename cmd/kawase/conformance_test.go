package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/dispatch"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/trading"
)

// conformanceWaitSec bounds how long an effect of a delivered event may take to show.
const conformanceWaitSec = 30

// ceAnswer is what an endpoint answered to one encoding of an event.
type ceAnswer struct {
	status      int
	problemCode string
	ceType      string
}

// TestCloudEventEndpointsAcceptBothEncodings is the CloudEvents conformance view of kawase: every
// endpoint that takes CloudEvents, on a running `kawase dev`, is sent the same event twice (distinct
// ids), once in binary and once in structured HTTP mode, and must answer both alike and apply both.
func TestCloudEventEndpointsAcceptBothEncodings(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole dev environment")
	}
	setup := newDevSetup(t, "KAWASE_LOG_LEVEL=warn")
	dev := startDev(t, setup.bin, setup.dataDir, setup.env)
	defer dev.interrupt(t)
	base, admin := dev.state.HTTP, dev.state.AdminToken
	if status := postJSON(t, dev.state.Extsim+"/control/open", "", nil, nil); status != http.StatusOK {
		t.Fatalf("extsim /control/open: %d", status)
	}
	var acct trading.NewAccountView
	if status := postJSON(t, base+"/v1/accounts", admin, map[string]string{"currency": "JPY", "deposit": "1000000"}, &acct); status != http.StatusCreated {
		t.Fatalf("open account: %d", status)
	}

	cases := []struct {
		name, url, token string
		event            func(t *testing.T, id string) cloudevents.Event
		wantStatus       int
		// applied says whether both events took effect (nil: the answer is the effect).
		applied func(t *testing.T, ids [2]string) bool
	}{
		{name: "ratekeeper refuses a crossed rate", url: base + devServicePath("ratekeeper") + "/",
			event: func(t *testing.T, id string) cloudevents.Event { return crossedRate(t, id) }, wantStatus: http.StatusUnprocessableEntity},
		{name: "ledger answers a command for an unknown account", url: base + devServicePath("ledger") + "/",
			event: func(t *testing.T, id string) cloudevents.Event { return unknownAccountCommand(t, id) }, wantStatus: http.StatusOK},
		{name: "relay delivers an execution", url: base + devServicePath("relay") + "/",
			event: func(t *testing.T, id string) cloudevents.Event { return execution(t, id) }, wantStatus: http.StatusNoContent,
			applied: func(t *testing.T, ids [2]string) bool { return extsimAccepted(t, dev.state.Extsim, ids) }},
		{name: "deadletters stores a dead letter", url: base + devServicePath("deadletters") + "/",
			event: func(t *testing.T, id string) cloudevents.Event { return deadLetter(t, id) }, wantStatus: http.StatusNoContent,
			applied: func(t *testing.T, ids [2]string) bool { return deadLettersStored(t, base, admin, ids) }},
		{name: "trading takes an order request", url: base + "/v1/order-requests", token: acct.Token,
			event: func(t *testing.T, id string) cloudevents.Event { return orderRequest(t, id, acct.ID) }, wantStatus: http.StatusCreated},
		{name: "the executions channel takes an execution", url: base + dispatch.ChannelPath("executions"),
			event: func(t *testing.T, id string) cloudevents.Event { return execution(t, id) }, wantStatus: http.StatusAccepted,
			applied: func(t *testing.T, ids [2]string) bool { return extsimAccepted(t, dev.state.Extsim, ids) }},
		{name: "the dead-letter sink takes a dead letter", url: base + dispatch.SinkPath("deadletters"),
			event: func(t *testing.T, id string) cloudevents.Event { return deadLetter(t, id) }, wantStatus: http.StatusAccepted,
			applied: func(t *testing.T, ids [2]string) bool { return deadLettersStored(t, base, admin, ids) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := [2]string{fmt.Sprintf("conf-%d-binary-%d", i, time.Now().UnixNano()),
				fmt.Sprintf("conf-%d-structured-%d", i, time.Now().UnixNano())}
			binary := sendCE(t, c.url, c.token, c.event(t, ids[0]), false)
			structured := sendCE(t, c.url, c.token, c.event(t, ids[1]), true)
			if binary != structured {
				t.Fatalf("binary mode answered %+v, structured mode %+v", binary, structured)
			}
			if binary.status != c.wantStatus {
				t.Fatalf("answered %+v, want status %d", binary, c.wantStatus)
			}
			if c.applied == nil {
				return
			}
			deadline := time.Now().Add(conformanceWaitSec * time.Second)
			for !c.applied(t, ids) {
				if time.Now().After(deadline) {
					t.Fatalf("events %v not both applied within %d s", ids, conformanceWaitSec)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

// sendCE posts e in binary or structured HTTP mode and reports the answer.
func sendCE(t *testing.T, url, token string, e cloudevents.Event, structured bool) ceAnswer {
	t.Helper()
	var req *http.Request
	if structured {
		body, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		req, _ = http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
	} else {
		var err error
		if req, err = cehttp.NewHTTPRequestFromEvent(t.Context(), url, e); err != nil {
			t.Fatal(err)
		}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := ceAnswer{status: resp.StatusCode, ceType: resp.Header.Get("Ce-Type")}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		var p struct{ Code string }
		_ = json.Unmarshal(b, &p)
		a.problemCode = p.Code
	}
	return a
}

func postJSON(t *testing.T, url, token string, body, out any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("POST %s: %d: %v", url, resp.StatusCode, err)
		}
	}
	return resp.StatusCode
}

func crossedRate(t *testing.T, id string) cloudevents.Event {
	now := time.Now().UTC()
	r := &eventing.RateV1{Pair: fx.Pair("USD_JPY"), Bid: decimal.RequireFromString("151.500"),
		Ask: decimal.RequireFromString("151.600"), BidSize: decimal.NewFromInt(1_000_000), AskSize: decimal.NewFromInt(1_000_000),
		ProviderTime: now, QuoteID: id, Session: "conformance", Epoch: 1, Seq: 1, ReceivedAt: now}
	// A valid rate first (NewEvent refuses to mint a crossed one), then crossed in its data.
	e := mustEvent(t, eventing.TypeRate, id, r)
	r.Bid, r.Ask = r.Ask, r.Bid
	if err := e.SetData(cloudevents.ApplicationJSON, r); err != nil {
		t.Fatal(err)
	}
	return e
}

func execution(t *testing.T, id string) cloudevents.Event {
	x := &eventing.TradeExecutedV1{ExecutionID: id, AccountID: "acct-" + id, AccountSeq: 1, OrderID: "ord-" + id,
		Pair: "EUR_USD", Side: eventing.SideBuy, Units: decimal.NewFromInt(1_000), Price: decimal.RequireFromString("1.08423"),
		RealizedPL: decimal.Zero, Currency: "USD", Reason: "order", ExecutedAt: time.Now().UTC()}
	return mustEvent(t, eventing.TypeTradeExecuted, id, x)
}

// deadLetter is an execution as a dead-letter sink receives it: with Knative's error extensions.
func deadLetter(t *testing.T, id string) cloudevents.Event {
	e := execution(t, id)
	e.SetExtension("knativeerrordest", "http://relay.kawase.svc.cluster.local/")
	e.SetExtension("knativeerrorcode", "422")
	e.SetExtension("knativeerrordata", "cmVmdXNlZA==")
	e.SetExtension("knativekafkapartition", "3")
	e.SetExtension("knativekafkaoffset", "42")
	return e
}

func orderRequest(t *testing.T, id, account string) cloudevents.Event {
	price := decimal.RequireFromString("100.000")
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(trading.TypeOrderRequest)
	e.SetSource("/kawase/tests/conformance")
	req := trading.OrderRequestEvent{AccountID: account, Action: trading.ActionPlace,
		Order: &trading.OrderRequest{Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1_000), Type: "limit",
			Price: &price, TimeInForce: "GTC", ClientOrderID: id}}
	if err := e.SetData(cloudevents.ApplicationJSON, req); err != nil {
		t.Fatal(err)
	}
	return e
}

func mustEvent(t *testing.T, typ, id string, p eventing.Payload) cloudevents.Event {
	e, err := eventing.NewEvent(typ, id, p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// extsimAccepted says whether the external-system simulator accepted both executions (each is the
// only one of its account, so both accounts show one received).
func extsimAccepted(t *testing.T, extsimURL string, ids [2]string) bool {
	resp, err := http.Get(extsimURL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Accounts map[string]struct{ Received int64 } `json:"accounts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s.Accounts["acct-"+ids[0]].Received == 1 && s.Accounts["acct-"+ids[1]].Received == 1
}

// deadLettersStored says whether the deadletters service holds both events, as alike rejected letters.
func deadLettersStored(t *testing.T, base, admin string, ids [2]string) bool {
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/deadletters?category=rejected", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Items []struct {
			EventID   string `json:"eventId"`
			ErrorCode *int   `json:"errorCode"`
			ErrorData string `json:"errorData"`
		} `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, d := range page.Items {
		if (d.EventID == ids[0] || d.EventID == ids[1]) && d.ErrorCode != nil && *d.ErrorCode == 422 && d.ErrorData == "refused" {
			found++
		}
	}
	return found == 2
}

func unknownAccountCommand(t *testing.T, id string) cloudevents.Event {
	c := &eventing.OrderCommandV1{CommandID: id, Kind: eventing.CommandCancel, AccountID: "acc_conformance_missing",
		OrderID: "o_missing", RequestedAt: time.Now().UTC()}
	return mustEvent(t, eventing.TypeOrderCommand, id, c)
}
