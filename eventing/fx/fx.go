// Package fx holds the vocabulary of foreign exchange that every part of kawase shares: currencies,
// currency pairs and the number of decimals each pair is quoted in. Prices and amounts are exact
// decimals (shopspring/decimal), never float64.
package fx

import (
	"errors"
	"fmt"
	"strings"

	"github.com/shopspring/decimal"
)

// Currency is an ISO 4217 code such as "USD".
type Currency string

// minorUnitsJPY and minorUnitsDefault are the decimals an amount of yen and of any other account
// currency is kept to.
const (
	minorUnitsJPY     = 0
	minorUnitsDefault = 2
)

// MinorUnits is the number of decimals an amount of c is kept to (balances, P&L): 0 for JPY, 2 for
// the others. The ledger rounds to it and every view of an amount prints exactly that many.
func (c Currency) MinorUnits() int32 {
	if c == "JPY" {
		return minorUnitsJPY
	}
	return minorUnitsDefault
}

// FormatAmount prints an amount of c with exactly c's minor units, e.g. "-1250" JPY or "12.50" USD.
func (c Currency) FormatAmount(v decimal.Decimal) string { return v.StringFixed(c.MinorUnits()) }

// Pair names a currency pair as BASE_QUOTE, e.g. "USD_JPY": the price is how many units of the quote
// currency one unit of the base currency costs.
type Pair string

// PairSpec describes one tradeable pair.
type PairSpec struct {
	// Pair is the BASE_QUOTE name.
	Pair Pair
	// Base and Quote are the two currencies.
	Base, Quote Currency
	// Precision is the number of decimals a price of this pair carries (JPY pairs 3, others 5).
	Precision int32
	// ReferenceMid is a plausible mid price, used to seed simulators and to bound sanity checks.
	ReferenceMid decimal.Decimal
}

// ErrUnknownPair is returned for a pair that is not in the catalogue.
var ErrUnknownPair = errors.New("unknown currency pair")

// ErrPrecision is returned for a price with more decimals than its pair allows.
var ErrPrecision = errors.New("price has more decimals than the pair allows")

// pairPrecisionJPY and pairPrecisionDefault are the decimals of JPY-quoted pairs and of every other pair.
const (
	pairPrecisionJPY     = 3
	pairPrecisionDefault = 5
)

// referenceMids are the pairs kawase knows, with a plausible mid price each: majors, crosses, JPY
// pairs and a few emerging-market pairs, 50 in all.
var referenceMids = []struct {
	pair Pair
	mid  string
}{
	{"EUR_USD", "1.08450"}, {"USD_JPY", "151.420"}, {"GBP_USD", "1.26780"}, {"USD_CHF", "0.88120"},
	{"AUD_USD", "0.65910"}, {"USD_CAD", "1.36540"}, {"NZD_USD", "0.60870"}, {"EUR_JPY", "164.210"},
	{"GBP_JPY", "191.970"}, {"AUD_JPY", "99.800"}, {"NZD_JPY", "92.170"}, {"CAD_JPY", "110.900"},
	{"CHF_JPY", "171.830"}, {"EUR_GBP", "0.85540"}, {"EUR_CHF", "0.95570"}, {"EUR_AUD", "1.64540"},
	{"EUR_CAD", "1.48080"}, {"EUR_NZD", "1.78160"}, {"GBP_CHF", "1.11720"}, {"GBP_AUD", "1.92350"},
	{"GBP_CAD", "1.73110"}, {"GBP_NZD", "2.08280"}, {"AUD_CAD", "0.89990"}, {"AUD_CHF", "0.58080"},
	{"AUD_NZD", "1.08280"}, {"CAD_CHF", "0.64540"}, {"NZD_CAD", "0.83110"}, {"NZD_CHF", "0.53640"},
	{"USD_SGD", "1.34620"}, {"USD_HKD", "7.82350"}, {"USD_NOK", "10.71200"}, {"USD_SEK", "10.45300"},
	{"USD_DKK", "6.87900"}, {"USD_MXN", "16.84500"}, {"USD_ZAR", "18.62100"}, {"USD_TRY", "32.15600"},
	{"USD_PLN", "3.97800"}, {"USD_CNH", "7.24300"}, {"USD_HUF", "362.45000"}, {"USD_CZK", "23.11200"},
	{"EUR_NOK", "11.61700"}, {"EUR_SEK", "11.33600"}, {"EUR_PLN", "4.31400"}, {"EUR_TRY", "34.87300"},
	{"EUR_HUF", "393.08000"}, {"SGD_JPY", "112.480"}, {"ZAR_JPY", "8.132"}, {"HKD_JPY", "19.355"},
	{"TRY_JPY", "4.709"}, {"MXN_JPY", "8.989"},
}

var (
	pairSpecs = buildPairSpecs()
	pairIndex = indexPairSpecs(pairSpecs)
)

func buildPairSpecs() []PairSpec {
	specs := make([]PairSpec, 0, len(referenceMids))
	for _, r := range referenceMids {
		base, quote, ok := strings.Cut(string(r.pair), "_")
		if !ok {
			panic(fmt.Sprintf("fx: malformed pair %q in catalogue", r.pair))
		}
		precision := int32(pairPrecisionDefault)
		if quote == "JPY" {
			precision = pairPrecisionJPY
		}
		specs = append(specs, PairSpec{
			Pair: r.pair, Base: Currency(base), Quote: Currency(quote),
			Precision: precision, ReferenceMid: decimal.RequireFromString(r.mid).Round(precision),
		})
	}
	return specs
}

func indexPairSpecs(specs []PairSpec) map[Pair]PairSpec {
	idx := make(map[Pair]PairSpec, len(specs))
	for _, s := range specs {
		if _, dup := idx[s.Pair]; dup {
			panic(fmt.Sprintf("fx: pair %s listed twice", s.Pair))
		}
		idx[s.Pair] = s
	}
	return idx
}

// Pairs returns every known pair in catalogue order. The slice is a copy.
func Pairs() []PairSpec {
	return append([]PairSpec(nil), pairSpecs...)
}

// Lookup returns the spec of a pair, or ErrUnknownPair.
func Lookup(p Pair) (PairSpec, error) {
	s, ok := pairIndex[p]
	if !ok {
		return PairSpec{}, fmt.Errorf("%w: %q", ErrUnknownPair, string(p))
	}
	return s, nil
}

// ParsePairList parses a comma-separated list such as "USD_JPY,EUR_USD"; every pair must be known and
// appear once. An empty string yields an empty list.
func ParsePairList(s string) ([]Pair, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]Pair, 0, len(parts))
	seen := make(map[Pair]bool, len(parts))
	for _, part := range parts {
		p := Pair(strings.ToUpper(strings.TrimSpace(part)))
		if _, err := Lookup(p); err != nil {
			return nil, err
		}
		if seen[p] {
			return nil, fmt.Errorf("pair %s listed twice", p)
		}
		seen[p] = true
		out = append(out, p)
	}
	return out, nil
}

// Bounds of any decimal that arrives from outside (a request, an event, a quote). Parsing
// "1e2000000000" is cheap, but comparing it with another number, or writing it out, needs all of its
// two billion digits. Every price, quantity and amount kawase holds is far inside these.
const (
	// decimalExponentMax and decimalExponentMin bound the power of ten a decimal is written with.
	decimalExponentMax = 20
	decimalExponentMin = -20
	// decimalCoefficientBitsMax bounds its digits: 2^133 is about 1.1e40, so any 40 digits fit.
	decimalCoefficientBitsMax = 133
	decimalDigitsWithinBits   = 40
)

// ErrMagnitude is returned for a decimal written with more digits or a larger power of ten than any
// price, quantity or amount can need.
var ErrMagnitude = errors.New("decimal out of range")

// CheckMagnitude reports ErrMagnitude unless d's exponent and digits are within the bounds above. Call
// it on a decimal from outside before any comparison or arithmetic, which may cost as much as its
// digits.
func CheckMagnitude(d decimal.Decimal) error {
	if e := d.Exponent(); e > decimalExponentMax || e < decimalExponentMin {
		return fmt.Errorf("%w: exponent %d is outside %d..%d", ErrMagnitude, e, decimalExponentMin, decimalExponentMax)
	}
	if d.NumDigits() <= decimalDigitsWithinBits {
		return nil // what a price or a quantity always is; Coefficient would copy the digits
	}
	if bits := d.Coefficient().BitLen(); bits > decimalCoefficientBitsMax {
		return fmt.Errorf("%w: %d significant bits, at most %d", ErrMagnitude, bits, decimalCoefficientBitsMax)
	}
	return nil
}

// CheckPrice reports whether price is a positive price of pair with no more decimals than its precision.
func (s PairSpec) CheckPrice(price decimal.Decimal) error {
	if err := CheckMagnitude(price); err != nil {
		return fmt.Errorf("%s price: %w", s.Pair, err)
	}
	if !price.IsPositive() {
		return fmt.Errorf("%s price %s is not positive", s.Pair, price)
	}
	if !price.Equal(price.Truncate(s.Precision)) {
		return fmt.Errorf("%w: %s price %s (max %d decimals)", ErrPrecision, s.Pair, price, s.Precision)
	}
	return nil
}

// FormatPrice renders price with exactly the pair's precision, e.g. "151.420".
func (s PairSpec) FormatPrice(price decimal.Decimal) string {
	return price.StringFixed(s.Precision)
}

// FormatPrice prints a price of p with exactly p's decimals, as every view shows prices; a pair not in
// the catalogue (an order recorded before it was removed) prints the price as it is.
func (p Pair) FormatPrice(price decimal.Decimal) string {
	s, err := Lookup(p)
	if err != nil {
		return price.String()
	}
	return s.FormatPrice(price)
}
