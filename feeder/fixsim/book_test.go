package fixsim

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// walkSteps is about ten minutes of quotes at 50 ms.
const walkSteps = 12_000

// TestRandomWalkIsPlausible walks every pair and checks each quote: the pair's precision, bid below
// ask, a spread of at most a few basis points, a mid that stays within 2 % of the reference, whole
// sizes, and quote ids rising by one.
func TestRandomWalkIsPlausible(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, spec := range fx.Pairs() {
		b := newBook(spec, rand.New(rand.NewPCG(7, uint64(i))))
		ref := spec.ReferenceMid
		maxSpread := ref.Mul(decimal.RequireFromString("0.0010")) // 10 bp
		for n := 1; n <= walkSteps; n++ {
			q := b.next(now)
			for _, px := range []decimal.Decimal{q.bid, q.ask} {
				if err := spec.CheckPrice(px); err != nil {
					t.Fatalf("%s step %d: %v", spec.Pair, n, err)
				}
			}
			spread := q.ask.Sub(q.bid)
			if !spread.IsPositive() || spread.GreaterThan(maxSpread) {
				t.Fatalf("%s step %d: spread %s (bid %s ask %s)", spec.Pair, n, spread, q.bid, q.ask)
			}
			mid := q.bid.Add(q.ask).Div(decimal.NewFromInt(2))
			if mid.Sub(ref).Abs().GreaterThan(ref.Mul(decimal.RequireFromString("0.02"))) {
				t.Fatalf("%s step %d: mid %s wandered from %s", spec.Pair, n, mid, ref)
			}
			if !q.bidSize.IsInteger() || !q.bidSize.IsPositive() || q.id != decimal.NewFromInt(int64(n)).String() {
				t.Fatalf("%s step %d: size %s id %s", spec.Pair, n, q.bidSize, q.id)
			}
		}
	}
}

func TestQuoteTimestampsAreFIXFormats(t *testing.T) {
	spec, _ := fx.Lookup("USD_JPY")
	q := newBook(spec, rand.New(rand.NewPCG(1, 1))).next(time.Date(2026, 3, 4, 5, 6, 7, 891_000_000, time.UTC))
	if q.date != "20260304" || q.time != "05:06:07.891" {
		t.Fatalf("MDEntryDate %q MDEntryTime %q", q.date, q.time)
	}
}
