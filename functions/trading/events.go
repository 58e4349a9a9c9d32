package trading

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// CloudEvent order requests. A producer POSTs a kawase.order.request.v1 to the trading function (/ or
// /v1/order-requests), in binary or structured HTTP mode, with the account's bearer token:
//
//	ce-type: kawase.order.request.v1          ce-id: <unique per request: the idempotency key>
//	ce-source: <the producer>                 content-type: application/json
//	{"accountId": "acc_…", "action": "place", "order": {"pair": "USD_JPY", "side": "buy", "units": "1000",
//	 "type": "market", "timeInForce": "FOK", "priceBound": "151.500", "clientOrderId": "my-1"}}
//	{"accountId": "acc_…", "action": "cancel", "orderId": "o_…" | "@my-1"}
//
// The order object is the REST body of POST …/orders (schema OrderRequest). Authentication,
// authorization, validation and rate limits are the REST API's; the pair (ce-source, ce-id) is the
// Idempotency-Key, so a redelivered event answers the first response. A request trading accepts is
// answered with the same status as REST (201, 200 or 202) and a kawase.order.response.v1 CloudEvent
// (binary mode, id "response:<ce-id>", subject the order id) whose data is the order (OrderView); a
// refused one with the REST problem+json (4xx/5xx).
const (
	TypeOrderRequest  = "kawase.order.request.v1"
	TypeOrderResponse = "kawase.order.response.v1"
	// OrderRequestSchema and OrderResponseSchema are the dataschema URIs of the two types.
	OrderRequestSchema  = "https://kawase.dev/schemas/order.request.v1.json"
	OrderResponseSchema = "https://kawase.dev/schemas/order.response.v1.json"
)

// Actions of an order request event.
const (
	ActionPlace  = "place"
	ActionCancel = "cancel"
)

// OrderRequestEvent is the data of a kawase.order.request.v1.
type OrderRequestEvent struct {
	AccountID string        `json:"accountId"`
	Action    string        `json:"action"`
	Order     *OrderRequest `json:"order,omitempty"`
	// OrderID names the order to cancel: its id, or "@" + its client order id.
	OrderID string `json:"orderId,omitempty"`
}

func (s *Service) orderRequestEvent(w http.ResponseWriter, r *http.Request, p principal) {
	r.Body = http.MaxBytesReader(w, r.Body, bodyBytesMax)
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
				Title: "request too large"})
			return
		}
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "not_a_cloudevent",
			Title: "not a CloudEvent", Detail: err.Error()})
		return
	}
	if ev.Type() != TypeOrderRequest {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "unknown_event_type",
			Title: "unknown event type", Detail: "trading accepts " + TypeOrderRequest + ", not " + ev.Type()})
		return
	}
	var req OrderRequestEvent
	if !decodeJSON(w, ev.Data(), &req) {
		return
	}
	if !authorize(w, p, tradeAccount, req.AccountID) {
		return
	}
	if req.Action != ActionPlace && req.Action != ActionCancel || req.Action == ActionPlace && req.Order == nil ||
		req.Action == ActionCancel && req.OrderID == "" {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_order_request",
			Title: "invalid order request", Detail: `action "place" needs order; "cancel" needs orderId`})
		return
	}
	key := eventKey(ev.Source(), ev.ID())
	rec := newRecorder()
	s.withKey(rec, r, p, key, requestHash("EVENT", TypeOrderRequest, ev.Data()), nil, func(w http.ResponseWriter) {
		if req.Action == ActionPlace {
			s.place(w, r.Context(), req.AccountID, *req.Order, key)
			return
		}
		s.cancel(w, r.Context(), req.AccountID, req.OrderID)
	})
	s.replyEvent(w, r, ev.ID(), rec)
}

// eventKey is the idempotency key of an order request event: its source and id, which name it. Written
// out ("ce:" source "|" id) when that fits the key limit and the source has no "|" (so no other source
// and id make the same key); otherwise a hash of both, length-prefixed, so a long source is not refused
// as a too-long Idempotency-Key the producer never sent.
func eventKey(source, id string) string {
	key := "ce:" + source + "|" + id
	if len(key) <= idempotencyKeyLengthMax && !strings.Contains(source, "|") {
		return key
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%s", len(source), source, id)
	return "ce#" + hex.EncodeToString(h.Sum(nil))
}

// replyEvent answers a 2xx as a kawase.order.response.v1 CloudEvent and anything else as it is.
func (s *Service) replyEvent(w http.ResponseWriter, r *http.Request, id string, rec *recorder) {
	resp := rec.response()
	if resp.status/100 != 2 {
		resp.write(w)
		return
	}
	var o OrderView
	if err := json.Unmarshal(resp.body, &o); err != nil {
		// trading wrote this body itself.
		panic("trading: order response is not an order: " + err.Error())
	}
	reply := cloudevents.NewEvent()
	reply.SetID("response:" + id)
	reply.SetType(TypeOrderResponse)
	reply.SetSource(eventing.SourceTrading)
	reply.SetSubject(o.ID)
	reply.SetDataSchema(OrderResponseSchema)
	reply.SetExtension(eventing.ExtensionPartitionKey, o.AccountID)
	if err := reply.SetData(eventing.ContentTypeJSON, json.RawMessage(bytes.TrimSpace(resp.body))); err != nil {
		panic("trading: set response data: " + err.Error())
	}
	if resp.location != "" {
		w.Header().Set("Location", resp.location)
	}
	if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(&reply), resp.status, w); err != nil {
		s.log.Warnw("writing a CloudEvent response failed", "error", err)
	}
}
