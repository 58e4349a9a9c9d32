package fixsim

import (
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// The random walk, in integer ticks of each pair's precision. Spreads are in tenths of a basis point
// of the mid: majors are tight, crosses wider, emerging-market pairs widest.
const (
	spreadMajorTenthsBp  = 6
	spreadCrossTenthsBp  = 12
	spreadExoticTenthsBp = 40
	// stepVolHundredthsBp is the standard deviation of one step of the mid.
	stepVolHundredthsBp = 5
	// reversionDivisor pulls the mid back towards the reference by 1/reversionDivisor of the distance
	// per step, so long runs stay plausible.
	reversionDivisor = 10_000
	// spreadJitterTicks widens a quote's spread by up to this many ticks at random.
	spreadJitterTicks   = 1
	tenthsBpPerUnit     = 100_000
	hundredthsBpPerUnit = 1_000_000
	sizeUnitsPerMio     = 1_000_000
)

// FIX formats of MDEntryDate (UTCDateOnly) and MDEntryTime (UTCTimeOnly, milliseconds).
const (
	mdEntryDateLayout = "20060102"
	mdEntryTimeLayout = "15:04:05.000"
)

var (
	majorPairs = map[fx.Pair]bool{"EUR_USD": true, "USD_JPY": true, "GBP_USD": true, "USD_CHF": true,
		"AUD_USD": true, "USD_CAD": true, "NZD_USD": true}
	exoticCurrencies = map[fx.Currency]bool{"TRY": true, "ZAR": true, "MXN": true, "HUF": true, "CZK": true,
		"PLN": true, "CNH": true, "NOK": true, "SEK": true, "DKK": true, "SGD": true, "HKD": true}
	sizesMio = []int64{1, 2, 3, 5, 10}
)

// book is the simulated top of book of one pair.
type book struct {
	spec    fx.PairSpec
	mid     int64
	ref     int64
	spread  int64
	volTick float64
	quoteID uint64
	rng     *rand.Rand
}

// quote is one top-of-book quote as it goes on the wire.
type quote struct {
	pair             fx.Pair
	precision        int32
	bid, ask         decimal.Decimal
	bidSize, askSize decimal.Decimal
	date, time       string
	id               string
}

func newBooks(pairs []fx.Pair, seed uint64) map[fx.Pair]*book {
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	books := make(map[fx.Pair]*book, len(pairs))
	for i, p := range pairs {
		spec, err := fx.Lookup(p)
		if err != nil {
			panic("fixsim: pair checked at start is unknown: " + string(p))
		}
		books[p] = newBook(spec, rand.New(rand.NewPCG(seed, uint64(i)+1)))
	}
	return books
}

func newBook(spec fx.PairSpec, rng *rand.Rand) *book {
	mid := spec.ReferenceMid.Shift(spec.Precision).IntPart()
	tenths := int64(spreadCrossTenthsBp)
	switch {
	case majorPairs[spec.Pair]:
		tenths = spreadMajorTenthsBp
	case exoticCurrencies[spec.Base] || exoticCurrencies[spec.Quote]:
		tenths = spreadExoticTenthsBp
	}
	spread := max(1, mid*tenths/tenthsBpPerUnit)
	vol := math.Max(0.5, float64(mid)*stepVolHundredthsBp/hundredthsBpPerUnit)
	return &book{spec: spec, mid: mid, ref: mid, spread: spread, volTick: vol, rng: rng}
}

// next moves the walk one step and returns the new quote, stamped now.
func (b *book) next(now time.Time) quote {
	step := int64(math.Round(b.rng.NormFloat64() * b.volTick))
	b.mid += step + (b.ref-b.mid)/reversionDivisor
	spread := b.spread + b.rng.Int64N(spreadJitterTicks+1)
	bid := max(1, b.mid-spread/2)
	b.quoteID++
	now = now.UTC()
	return quote{
		pair: b.spec.Pair, precision: b.spec.Precision,
		bid: decimal.New(bid, -b.spec.Precision), ask: decimal.New(bid+spread, -b.spec.Precision),
		bidSize: b.size(), askSize: b.size(),
		date: now.Format(mdEntryDateLayout), time: now.Format(mdEntryTimeLayout),
		id: strconv.FormatUint(b.quoteID, 10),
	}
}

func (b *book) size() decimal.Decimal {
	return decimal.NewFromInt(sizesMio[b.rng.IntN(len(sizesMio))] * sizeUnitsPerMio)
}
