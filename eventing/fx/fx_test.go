package fx

import (
	"errors"
	"testing"

	"github.com/shopspring/decimal"
)

func TestCatalogueHasFiftyPairsWithPrecision(t *testing.T) {
	specs := Pairs()
	if len(specs) != 50 {
		t.Fatalf("want 50 pairs, have %d", len(specs))
	}
	for _, s := range specs {
		want := int32(5)
		if s.Quote == "JPY" {
			want = 3
		}
		if s.Precision != want {
			t.Errorf("%s precision %d, want %d", s.Pair, s.Precision, want)
		}
		if err := s.CheckPrice(s.ReferenceMid); err != nil {
			t.Errorf("%s reference mid: %v", s.Pair, err)
		}
	}
}

func TestCheckMagnitude(t *testing.T) {
	for _, c := range []struct {
		d    string
		want bool // in range
	}{
		{"151.420", true}, {"100000000", true}, {"1e20", true}, {"1e-20", true}, {"0", true},
		{"-123456789012345678901234567890.12345678", true}, // 38 digits
		{"1e21", false}, {"1e-21", false}, {"1e2000000000", false}, {"-1e-2000000000", false},
		{"12345678901234567890123456789012345678901", false}, // 41 digits
	} {
		err := CheckMagnitude(decimal.RequireFromString(c.d))
		if (err == nil) != c.want || err != nil && !errors.Is(err, ErrMagnitude) {
			t.Errorf("CheckMagnitude(%s) = %v, want in range %v", c.d, err, c.want)
		}
	}
	usdjpy, err := Lookup("USD_JPY")
	if err != nil {
		t.Fatal(err)
	}
	// Positive and precise enough, yet seventy thousand digits written out.
	if err := usdjpy.CheckPrice(decimal.RequireFromString("1e70000")); !errors.Is(err, ErrMagnitude) {
		t.Errorf("CheckPrice(1e70000) = %v, want ErrMagnitude", err)
	}
}

func TestCheckPrice(t *testing.T) {
	usdjpy, err := Lookup("USD_JPY")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		price   string
		wantErr bool
	}{
		{"151.420", false}, {"151.42", false}, {"151.4201", true}, {"0", true}, {"-1.000", true},
	}
	for _, c := range cases {
		err := usdjpy.CheckPrice(decimal.RequireFromString(c.price))
		if (err != nil) != c.wantErr {
			t.Errorf("CheckPrice(%s) = %v, wantErr %v", c.price, err, c.wantErr)
		}
	}
	if got := usdjpy.FormatPrice(decimal.RequireFromString("151.4")); got != "151.400" {
		t.Errorf("FormatPrice = %q", got)
	}
}

func TestParsePairList(t *testing.T) {
	got, err := ParsePairList(" usd_jpy,EUR_USD ")
	if err != nil || len(got) != 2 || got[0] != "USD_JPY" || got[1] != "EUR_USD" {
		t.Fatalf("ParsePairList = %v, %v", got, err)
	}
	if _, err := ParsePairList("USD_JPY,XXX_YYY"); !errors.Is(err, ErrUnknownPair) {
		t.Errorf("unknown pair: err = %v", err)
	}
	if _, err := ParsePairList("USD_JPY,USD_JPY"); err == nil {
		t.Error("duplicate pair accepted")
	}
}

func TestCurrencyAmounts(t *testing.T) {
	for _, c := range []struct {
		ccy  Currency
		v    string
		want string
	}{
		{"JPY", "-1250", "-1250"},
		{"JPY", "1250.4", "1250"},
		{"USD", "12.5", "12.50"},
		{"USD", "-0.266", "-0.27"},
		{"EUR", "3", "3.00"},
	} {
		if got := c.ccy.FormatAmount(decimal.RequireFromString(c.v)); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.ccy, c.v, got, c.want)
		}
	}
}
