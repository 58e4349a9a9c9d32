package trading

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kawase-fx/kawase/eventing"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// errNotSubmitted: trading has no record of publishing the order.
var errNotSubmitted = errors.New("order not submitted here")

// recordSubmitted notes that the order was published and not yet decided, before the client is
// answered 202 and learns its id, so that it can read and cancel it at once. A retry of the same
// placement finds the row present.
func (s *Service) recordSubmitted(ctx context.Context, acct, orderID string, spec *eventing.OrderSpec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("record submitted order: %w", err)
	}
	var cid *string
	if spec.ClientOrderID != "" {
		cid = &spec.ClientOrderID
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO trading.submitted_orders (account_id, order_id, client_order_id, spec)
		VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, acct, orderID, cid, b); err != nil {
		return fmt.Errorf("record submitted order: %w", err)
	}
	return nil
}

// submittedOrder looks up an order trading published (ref: its id, or "@" + client order id).
func (s *Service) submittedOrder(ctx context.Context, acct, ref string) (string, *eventing.OrderSpec, error) {
	q := `SELECT order_id, spec FROM trading.submitted_orders WHERE account_id = $1 AND order_id = $2`
	key := ref
	if cid, ok := strings.CutPrefix(ref, "@"); ok {
		q = `SELECT order_id, spec FROM trading.submitted_orders WHERE account_id = $1 AND client_order_id = $2
			ORDER BY submitted_at DESC LIMIT 1`
		key = cid
	}
	var (
		id   string
		b    []byte
		spec eventing.OrderSpec
	)
	if err := s.pool.QueryRow(ctx, q, acct, key).Scan(&id, &b); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "", nil, errNotSubmitted
		}
		return "", nil, fmt.Errorf("look up submitted order: %w", err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return "", nil, fmt.Errorf("decode submitted order %s: %w", id, err)
	}
	return id, &spec, nil
}

// lookupOrder asks the ledger for an order and, when the ledger does not know it yet, falls back to
// trading's record of having published it: then o is nil and spec is what was submitted.
func (s *Service) lookupOrder(ctx context.Context, acct, ref string) (o *ledgerv1.Order, id string, spec *eventing.OrderSpec, err error) {
	lctx, cancel := ledgerCtx(ctx)
	o, err = s.ledger.GetOrder(lctx, orderKey(acct, ref))
	cancel()
	if status.Code(err) != codes.NotFound {
		return o, o.GetId(), nil, err
	}
	id, spec, serr := s.submittedOrder(ctx, acct, ref)
	if serr != nil {
		if errors.Is(serr, errNotSubmitted) {
			return nil, "", nil, err
		}
		return nil, "", nil, status.Error(codes.Unavailable, serr.Error())
	}
	return nil, id, spec, nil
}

// getOrder: GET /v1/accounts/{id}/orders/{orderId}; an order published but not yet applied by the
// ledger shows as submitted.
func (s *Service) getOrder(w http.ResponseWriter, r *http.Request, _ principal) {
	acct := r.PathValue("id")
	o, id, spec, err := s.lookupOrder(r.Context(), acct, r.PathValue("orderId"))
	if err != nil {
		s.ledgerProblem(w, err, "order_not_found")
		return
	}
	if o == nil {
		writeJSON(w, http.StatusOK, submittedView(acct, id, spec, nil))
		return
	}
	writeJSON(w, http.StatusOK, orderView(o))
}

// expireSubmitted deletes records of orders submitted longer ago than keep; by then the ledger has
// long applied them.
func (s *Service) expireSubmitted(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM trading.submitted_orders WHERE submitted_at < now() - $1::interval`,
		fmt.Sprintf("%d seconds", int64(s.cfg.IdempotencyKeep.Seconds()))); err != nil {
		return fmt.Errorf("expire submitted orders: %w", err)
	}
	return nil
}

// submittedOrderProto is a published order the ledger has not applied yet, as the ledger would show it
// while pending.
func submittedOrderProto(acct, id string, spec *eventing.OrderSpec) *ledgerv1.Order {
	o := &ledgerv1.Order{Id: id, AccountId: acct, ClientOrderId: spec.ClientOrderID, Pair: string(spec.Pair),
		Side: spec.Side, Units: spec.Units.String(), Type: spec.Type, TimeInForce: spec.TimeInForce, Status: "pending"}
	if spec.Price != nil {
		o.Price = spec.Pair.FormatPrice(*spec.Price)
	}
	if spec.PriceBound != nil {
		o.PriceBound = spec.Pair.FormatPrice(*spec.PriceBound)
	}
	return o
}
