package ledger

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// screenRig is a watcher over random accounts and a quote book whose mids walk at random.
type screenRig struct {
	rng  *rand.Rand
	book *QuoteBook
	mids map[fx.Pair]decimal.Decimal
	w    *watcher
	now  time.Time
	next int // the number of the next account opened
}

func newScreenRig(t testing.TB, seed uint64, accounts int) *screenRig {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Leverage = map[fx.Pair]decimal.Decimal{"USD_TRY": decimal.NewFromInt(5), "EUR_GBP": decimal.NewFromInt(50)}
	r := &screenRig{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), book: NewQuoteBook(), mids: make(map[fx.Pair]decimal.Decimal),
		now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), next: accounts}
	for _, s := range fx.Pairs() {
		r.mids[s.Pair] = s.ReferenceMid
	}
	r.publish()
	r.w = &watcher{l: &Ledger{cfg: cfg, prices: r.book, m: m}, sent: make(map[string]time.Time)}
	p := frozenPricer(r.book)
	for i := range accounts {
		r.w.accts = append(r.w.accts, r.account(p, i))
	}
	return r
}

// account opens 1 to 3 random positions at prices up to 3% off the mid, with a balance that puts
// its margin level anywhere from about 20% to 300% at the current quotes.
func (r *screenRig) account(p pricer, i int) marginAccount {
	specs := fx.Pairs()
	a := marginAccount{ID: fmt.Sprintf("acc_%d", i), Currency: CurrencyJPY, Positions: make(map[fx.Pair]position), TxSeq: 1}
	if r.rng.IntN(2) == 0 {
		a.Currency = CurrencyUSD
	}
	for range 1 + r.rng.IntN(3) {
		s := specs[r.rng.IntN(len(specs))]
		units := decimal.NewFromInt(int64(1 + r.rng.IntN(200_000)))
		if r.rng.IntN(2) == 0 {
			units = units.Neg()
		}
		off := decimal.New(int64(r.rng.IntN(60_001)-30_000), -6)
		a.Positions[s.Pair] = position{Pair: s.Pair, Units: units,
			AveragePrice: r.mids[s.Pair].Mul(decimal.NewFromInt(1).Add(off)).Round(s.Precision + averagePriceDecimalsExtra)}
	}
	v, err := p.totals(a.Currency, decimal.Zero, a.Positions, r.w.l.leverage)
	if err != nil {
		panic(err)
	}
	level := decimal.New(int64(20+r.rng.IntN(281)), -2)
	a.Balance = v.MarginUsed.Mul(level).Sub(v.UnrealizedPL).Round(a.Currency.MinorUnits())
	return a
}

// reload changes about 5% of the accounts (a new position, or a different balance, and the next
// transaction sequence), closes about 1% and opens as many new ones, as a book reload finds them,
// and returns the ids of the new and changed accounts.
func (r *screenRig) reload() map[string]bool {
	p := frozenPricer(r.book)
	var accts []marginAccount
	touched := make(map[string]bool)
	for _, a := range r.w.accts {
		switch n := r.rng.IntN(100); {
		case n == 0:
			a = r.account(p, r.next)
			r.next++
			touched[a.ID] = true
		case n < 6:
			changed := r.account(p, 0)
			changed.ID, changed.TxSeq = a.ID, a.TxSeq+1
			a = changed
			touched[a.ID] = true
		}
		accts = append(accts, a)
	}
	r.w.accts, r.w.reloaded = accts, true
	return touched
}

// walk moves every mid by up to ±stepPPM millionths and publishes the new quotes.
func (r *screenRig) walk(stepPPM int) {
	for pair, mid := range r.mids {
		spec, _ := fx.Lookup(pair)
		step := decimal.New(int64(r.rng.IntN(2*stepPPM+1)-stepPPM), -6)
		r.mids[pair] = mid.Mul(decimal.NewFromInt(1).Add(step)).Round(spec.Precision)
	}
	r.publish()
}

func (r *screenRig) publish() {
	now := time.Now()
	for pair, mid := range r.mids {
		spec, _ := fx.Lookup(pair)
		half := decimal.New(2, -spec.Precision)
		r.book.Set(Quote{Pair: pair, Bid: mid.Sub(half), Ask: mid.Add(half), Time: now, Tradeable: true})
	}
}

// exactlyBelow values every account at the book's quotes, as the watcher did before it screened.
func (r *screenRig) exactlyBelow() []string {
	p := frozenPricer(r.book)
	var ids []string
	for _, a := range r.w.accts {
		if v, err := p.totals(a.Currency, a.Balance, a.Positions, r.w.l.leverage); err == nil && v.belowCloseout() {
			ids = append(ids, a.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func (r *screenRig) screenedBelow() (ids []string, valued int) {
	p := frozenPricer(r.book)
	if r.w.screen != nil {
		valued = len(r.w.screen.candidates(r.w.screen.movePPB(p)))
	}
	for _, a := range r.w.belowCloseout(p, r.now) {
		ids = append(ids, a.ID)
	}
	slices.Sort(ids)
	return ids, valued
}

// TestMarginScreenFindsEveryCloseout runs the watcher's screen for 15 s of 100 ms rounds while the
// quotes of 50 pairs walk at random and a reload every 500 ms changes, opens and closes accounts,
// and checks, every round, that the screen names exactly the accounts an exact valuation of every
// account names. The accounts sit between 20% and 300% margin level, far closer to the line than
// most real ones. It also checks that the walk takes accounts across the line (so the screen had
// something to find), that the rounds pass through rebuilds of the reference, and that the screen
// spared most valuations.
func TestMarginScreenFindsEveryCloseout(t *testing.T) {
	const accounts, rounds, reloadEvery = 400, 150, 5
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := newScreenRig(t, seed, accounts)
			before := r.exactlyBelow()
			crossed, valued, rebuilds := 0, 0, 0
			var built time.Time
			for round := range rounds {
				if round > 0 {
					r.now = r.now.Add(DefaultConfig().WatchInterval)
					r.walk(400) // up to 0.04% per round: a brisk market
				}
				touched := map[string]bool{}
				if round%reloadEvery == reloadEvery-1 {
					touched = r.reload()
				}
				want := r.exactlyBelow()
				got, n := r.screenedBelow()
				if !slices.Equal(got, want) {
					t.Fatalf("round %d: screen found %v, exact valuation %v", round, got, want)
				}
				if r.w.screen.built != built {
					rebuilds, built = rebuilds+1, r.w.screen.built
				} else {
					valued += n
				}
				for _, id := range want { // crossed by the quotes' move alone
					if !slices.Contains(before, id) && !touched[id] {
						crossed++
					}
				}
				before = want
			}
			if crossed == 0 {
				t.Fatal("no account crossed the close-out line as the quotes moved; the test proves nothing")
			}
			if rebuilds < 3 {
				t.Errorf("%d rebuilds of the reference in %d rounds; want the first and at least two more", rebuilds, rounds)
			}
			if screened := accounts * (rounds - rebuilds); valued*2 > screened {
				t.Errorf("the screen valued %d of %d accounts outside rebuilds; it should spare most", valued, screened)
			}
			t.Logf("%d crossings found; %d rebuilds; %d valuations outside rebuilds, of %d accounts in %d rounds",
				crossed, rebuilds, valued, accounts, rounds-rebuilds)
		})
	}
}

// TestMarginSlackHolds checks the bound itself: an account moved by at most its slack stays at or
// above the close-out level. For each random account it moves every bid and ask to an extreme of
// the slack, [ref/(1+e), ref·(1+e)]: all up, all down, and at random per quote.
func TestMarginSlackHolds(t *testing.T) {
	const accounts, scenarios = 300, 40
	r := newScreenRig(t, 7, accounts)
	ref := make(map[fx.Pair]Quote)
	for pair := range r.mids {
		ref[pair], _ = r.book.Quote(pair)
	}
	p := frozenPricer(r.book)
	tested := 0
	for _, a := range r.w.accts {
		e, below := p.slack(a, r.w.l.leverage)
		if below || !e.IsPositive() {
			continue
		}
		tested++
		up := decimal.NewFromInt(1).Add(e)
		for sc := range scenarios {
			moved := NewQuoteBook()
			for pair, q := range ref {
				extreme := func() decimal.Decimal {
					switch {
					case sc == 0, sc > 1 && r.rng.IntN(2) == 0:
						return up
					default:
						return decimal.NewFromInt(1).Div(up)
					}
				}
				moved.Set(Quote{Pair: pair, Bid: q.Bid.Mul(extreme()), Ask: q.Ask.Mul(extreme()), Time: q.Time, Tradeable: true})
			}
			v, err := pricer{prices: moved}.totals(a.Currency, a.Balance, a.Positions, r.w.l.leverage)
			if err != nil {
				t.Fatal(err)
			}
			if v.belowCloseout() {
				t.Fatalf("%s with slack %s fell below the close-out level after quotes moved by at most its slack (scenario %d): NAV %s, margin used %s",
					a.ID, e, sc, v.NAV(), v.MarginUsed)
			}
		}
	}
	if tested < accounts/2 {
		t.Fatalf("only %d of %d accounts had a slack to test", tested, accounts)
	}
}

// TestMarginScreenMoveCountsFallsAndGaps checks the move: a fall counts as the rise that undoes it,
// and a quote that disappears or appears makes every account a candidate.
func TestMarginScreenMoveCountsFallsAndGaps(t *testing.T) {
	q := func(bid, ask string) Quote {
		return Quote{Pair: "USD_JPY", Bid: decimal.RequireFromString(bid), Ask: decimal.RequireFromString(ask), Tradeable: true}
	}
	book := NewQuoteBook()
	book.Set(q("100.000", "100.010"))
	ref := frozenPricer(book)
	ref.prices.Quote("USD_JPY")
	ref.prices.Quote("EUR_JPY") // looked up, missing
	s := &marginScreen{ref: ref.prices.(*frozenPrices)}

	book.Set(q("80.000", "100.010")) // bid fell 20%: the rise back is 25%
	if got := s.movePPB(frozenPricer(book)); got != 250_000_000 {
		t.Errorf("move after a 20%% fall = %d ppb, want 250000000", got)
	}
	book.Set(q("100.000", "100.011")) // ask rose 1e-5 / 100.010: rounded up
	if got := s.movePPB(frozenPricer(book)); got != 10_000 {
		t.Errorf("move after a rise of 0.001/100.010 (9,999.0001 ppb) = %d ppb, want 10000 (rounded up)", got)
	}
	book.Set(Quote{Pair: "EUR_JPY", Bid: decimal.NewFromInt(160), Ask: decimal.NewFromInt(161)})
	book.Set(q("100.000", "100.010"))
	if got := s.movePPB(frozenPricer(book)); got != slackPPB(screenSlackMax) {
		t.Errorf("move after a missing quote appeared = %d ppb, want the largest slack", got)
	}
	s.accts = []screenedAccount{{slackPPB: 0}, {slackPPB: 10_000_000}, {slackPPB: slackPPB(screenSlackMax)}}
	if n := len(s.candidates(10_000_000)); n != 2 {
		t.Errorf("candidates at a move of 1%% = %d, want 2 (slack 0 and 1%%)", n)
	}
	if n := len(s.candidates(slackPPB(screenSlackMax))); n != 3 {
		t.Errorf("candidates at the largest move = %d, want all 3", n)
	}
}

// BenchmarkWatcherMarginScreen measures one watcher round over 10,000 accounts with 1 to 3
// positions each: a rebuild of the reference (every account valued, every screenRebuildMs) and the
// rounds in between (quotes walking up to 0.01% a round, about what 100 ms does in a busy market,
// and a reload every BookRefresh changing about 5% of the accounts).
func BenchmarkWatcherMarginScreen(b *testing.B) {
	const accounts = 10_000
	const reloadEveryRounds = defaultBookRefreshMs / defaultWatchIntervalMs
	const rebuildEveryRounds = screenRebuildMs / defaultWatchIntervalMs
	b.Run("rebuild", func(b *testing.B) {
		r := newScreenRig(b, 1, accounts)
		b.ResetTimer()
		for range b.N {
			r.w.screen = nil
			r.screenedBelow()
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/round")
	})
	b.Run("between-rebuilds", func(b *testing.B) {
		r := newScreenRig(b, 1, accounts)
		r.screenedBelow()
		valued := 0
		b.ResetTimer()
		for i := range b.N {
			b.StopTimer()
			r.now = r.now.Add(DefaultConfig().WatchInterval)
			if i%rebuildEveryRounds == 0 { // timed by after-reload
				r.w.screen = nil
				r.screenedBelow()
			}
			if i%reloadEveryRounds == 0 { // the book reloads every BookRefresh: changed accounts
				r.reload()
			}
			r.walk(100)
			b.StartTimer()
			_, n := r.screenedBelow()
			valued += n
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/round")
		b.ReportMetric(float64(valued)/float64(b.N), "valued/round")
	})
}

// TestMarginScreenFollowsPairsFirstSeenAfterTheReference: an account that changes after the
// reference and needs pairs the reference never asked for (here CHF_JPY and EUR_JPY for a JPY account
// holding EUR_CHF, where the reference could convert through USD instead) is valued at their quotes
// of that moment, and the screen follows their move from
// there: EUR_JPY alone rising 25% must make it a candidate and find it below the close-out level.
func TestMarginScreenFollowsPairsFirstSeenAfterTheReference(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	book := NewQuoteBook()
	set := func(pair fx.Pair, bid, ask string) {
		book.Set(Quote{Pair: pair, Bid: decimal.RequireFromString(bid), Ask: decimal.RequireFromString(ask), Tradeable: true})
	}
	set("USD_JPY", "150.000", "150.010")
	set("EUR_USD", "1.08000", "1.08010")
	set("USD_CHF", "0.88000", "0.88010")
	set("EUR_CHF", "0.95000", "0.95010")
	set("CHF_JPY", "170.000", "170.020")
	set("EUR_JPY", "162.000", "162.020")
	w := newWatcher(&Ledger{cfg: DefaultConfig(), prices: book, m: m}, nil)
	t.Cleanup(w.close)
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	w.accts = []marginAccount{{ID: "usd", Currency: CurrencyUSD, Balance: decimal.NewFromInt(1_000_000), TxSeq: 1,
		Positions: map[fx.Pair]position{"EUR_CHF": {Pair: "EUR_CHF", Units: decimal.NewFromInt(10_000), AveragePrice: decimal.RequireFromString("0.95")},
			"USD_JPY": {Pair: "USD_JPY", Units: decimal.NewFromInt(10_000), AveragePrice: decimal.RequireFromString("150")}}}}
	if below := w.belowCloseout(frozenPricer(book), now); len(below) != 0 {
		t.Fatalf("below at the reference: %v", below)
	}
	// A JPY account opens 1,000,000 EUR_CHF with NAV at 60% of its margin used.
	jpy := marginAccount{ID: "jpy", Currency: CurrencyJPY, TxSeq: 1,
		Positions: map[fx.Pair]position{"EUR_CHF": {Pair: "EUR_CHF", Units: decimal.NewFromInt(-1_000_000), AveragePrice: decimal.RequireFromString("0.95")}}}
	v, err := frozenPricer(book).totals(jpy.Currency, decimal.Zero, jpy.Positions, w.l.leverage)
	if err != nil {
		t.Fatal(err)
	}
	jpy.Balance = v.MarginUsed.Mul(decimal.RequireFromString("0.6")).Sub(v.UnrealizedPL).Round(0)
	w.accts = append(w.accts, jpy)
	w.reloaded = true
	if below := w.belowCloseout(frozenPricer(book), now.Add(100*time.Millisecond)); len(below) != 0 {
		t.Fatalf("below before any move: %v", below)
	}
	set("EUR_JPY", "202.500", "202.525") // +25%: the short's margin and its loss in yen grow
	p := frozenPricer(book)
	if v, err := p.totals(jpy.Currency, jpy.Balance, jpy.Positions, w.l.leverage); err != nil || !v.belowCloseout() {
		t.Fatalf("the move should put the account below: %+v, %v", v, err)
	}
	below := w.belowCloseout(p, now.Add(200*time.Millisecond))
	if len(below) != 1 || below[0].ID != "jpy" {
		t.Fatalf("screen found %v after EUR_JPY rose 25%%; want the JPY account", below)
	}
}

// TestNoCloseOutWhileNothingCanBeClosed: an account below the close-out level whose only position's
// pair is halted gets no close-out command (it would close nothing and be sent again every few
// seconds for as long as the halt lasts); once the pair trades again, it gets one.
func TestNoCloseOutWhileNothingCanBeClosed(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	book := NewQuoteBook()
	book.Set(Quote{Pair: "USD_JPY", Bid: decimal.RequireFromString("140.000"), Ask: decimal.RequireFromString("140.010"), Time: now, Tradeable: false})
	w := newWatcher(&Ledger{cfg: DefaultConfig(), prices: book, m: m}, nil)
	t.Cleanup(w.close)
	// 100,000 USD_JPY bought at 150 with 100,000 JPY: 1,000,000 JPY under water at 140.
	w.accts = []marginAccount{{ID: "a", Currency: CurrencyJPY, Balance: decimal.NewFromInt(100_000), TxSeq: 3,
		Positions: map[fx.Pair]position{"USD_JPY": {Pair: "USD_JPY", Units: decimal.NewFromInt(100_000), AveragePrice: decimal.RequireFromString("150")}}}}
	if events := w.evaluate(now); len(events) != 0 {
		t.Fatalf("close-out sent while the only pair is halted: %d command(s)", len(events))
	}
	book.Set(Quote{Pair: "USD_JPY", Bid: decimal.RequireFromString("140.000"), Ask: decimal.RequireFromString("140.010"), Time: now, Tradeable: true})
	events := w.evaluate(now.Add(time.Second))
	if len(events) != 1 || !strings.HasPrefix(events[0].ID(), closeoutCommandPrefix+"a:") {
		t.Fatalf("once the pair trades: %d command(s)", len(events))
	}
}
