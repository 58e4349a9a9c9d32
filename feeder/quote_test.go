package feeder

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/quickfixgo/enum"
	"github.com/shopspring/decimal"
)

// TestEntryTimeMatchesTimeParse holds entryTime to time.Parse with mdEntryTimestampLayout: the same
// time for what it accepts, an error for what it refuses.
func TestEntryTimeMatchesTimeParse(t *testing.T) {
	cases := [][2]string{
		{"20261130", "12:00:00"}, {"20261130", "12:00:00.1"}, {"20261130", "12:00:00.123"},
		{"20261130", "23:59:59.999999999"}, {"20261130", "12:00:00.1234567891"}, {"20260229", "12:00:00"},
		{"20240229", "12:00:00"}, {"20261131", "12:00:00"}, {"20261301", "12:00:00"}, {"20260001", "12:00:00"},
		{"20261100", "12:00:00"}, {"20261130", "24:00:00"}, {"20261130", "12:60:00"}, {"20261130", "12:00:60"},
		{"20261130", "12:00:00."}, {"20261130", "12:00:00.x"}, {"20261130", "1:00:00"}, {"2026113", "12:00:00"},
		{"2026-11-30", "12:00:00"}, {"20261130", "12-00-00"}, {"", ""}, {"20261130", ""}, {"00000101", "00:00:00"},
		{"20261130", "12:00:00,5"}, {"20261130", "+2:00:00"}, {"2026113a", "12:00:00"},
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const alphabet = "0123456789:.-x"
	for range 20000 {
		date := []byte("20261130")
		clock := []byte("12:34:56.789")[:8+rng.IntN(5)]
		b := [][]byte{date, clock}[rng.IntN(2)]
		b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		cases = append(cases, [2]string{string(date), string(clock)})
	}
	for _, c := range cases {
		got, gotErr := entryTime([]byte(c[0]), []byte(c[1]))
		want, wantErr := time.Parse(mdEntryTimestampLayout, c[0]+" "+c[1])
		if (gotErr == nil) != (wantErr == nil) || !got.Equal(want) || got.Location() != want.Location() {
			t.Errorf("%q %q: got %v, %v; time.Parse %v, %v", c[0], c[1], got, gotErr, want, wantErr)
		}
	}
}

// TestQuoteDecimalMatchesNewFromString holds quoteDecimal to decimal.NewFromString.
func TestQuoteDecimalMatchesNewFromString(t *testing.T) {
	cases := []string{"1.08501", "1.08500", "150.123", "1000000", "0", "-0", "-0.5", "007.50", "1.", ".5", "-", "",
		"1..2", "1e5", "+1", "123456789012345678", "1234567890123456789", "12345678901234567.89", "-1.5", "1-2", "x"}
	rng := rand.New(rand.NewPCG(9, 10))
	const alphabet = "0123456789.-e+"
	for range 20000 {
		b := make([]byte, 1+rng.IntN(22))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
			if rng.IntN(5) > 0 {
				b[i] = byte('0' + rng.IntN(10))
			}
		}
		cases = append(cases, string(b))
	}
	for _, c := range cases {
		got, gotErr := quoteDecimal([]byte(c))
		want, wantErr := decimal.NewFromString(c)
		if (gotErr == nil) != (wantErr == nil) || got.Exponent() != want.Exponent() || got.Coefficient().Cmp(want.Coefficient()) != 0 {
			t.Errorf("%q: got %v (%s e%d), %v; NewFromString %v (%s e%d), %v", c, got, got.Coefficient(), got.Exponent(),
				gotErr, want, want.Coefficient(), want.Exponent(), wantErr)
		}
	}
}

// TestRateIdentityIsTheNewerSide: a one-sided update in the same millisecond as the other side makes a
// rate newer than the one before it (by the readers' rule), whichever side it updates.
func TestRateIdentityIsTheNewerSide(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	side := func(px string, id string) quoteSide {
		return quoteSide{px: decimal.RequireFromString(px), size: decimal.NewFromInt(1_000_000), at: at, quoteID: id, set: true}
	}
	var b topOfBook
	b.apply(enum.MDEntryType_BID, side("150.000", "12"))
	b.apply(enum.MDEntryType_OFFER, side("150.010", "12"))
	first, err := b.rate("USD_JPY")
	if err != nil {
		t.Fatal(err)
	}
	b.apply(enum.MDEntryType_OFFER, side("150.020", "13"))
	second, _ := b.rate("USD_JPY")
	b.apply(enum.MDEntryType_BID, side("150.005", "14"))
	third, _ := b.rate("USD_JPY")
	if !second.NewerThan(&first) || !third.NewerThan(&second) || second.QuoteID != "13" || third.QuoteID != "14" {
		t.Fatalf("identities %s, %s, %s: each update must make a newer rate", first.QuoteID, second.QuoteID, third.QuoteID)
	}
}
