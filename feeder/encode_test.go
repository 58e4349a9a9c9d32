package feeder

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// TestRateEncoderMatchesEventing holds the rate encoder to what eventing.NewEvent and
// cekafka.ToMessage make of the same rate: the same key, payload and headers (ce_time aside, which is
// when each was made).
func TestRateEncoderMatchesEventing(t *testing.T) {
	enc, err := newRateEncoder()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	// Ids that JSON must escape, but no control characters: RateV1.Validate refuses those.
	quoteIDs := []string{"1", "42", "q-7", "a<b>&c", `quo"te`, `back\slash`, "line\u2028sep", "ünïcode", "\u2029", ""}
	sessions := []string{"FIX.4.4:KAWASE->FIXSIM", "FIX.4.4:A->B", "plain", "<&>"}
	pairs := allPairs()
	for i := range 2000 {
		spec, _ := fx.Lookup(pairs[rng.IntN(len(pairs))])
		bid := decimal.New(rng.Int64N(10_000_000)+1, -rng.Int32N(spec.Precision+1))
		r := &eventing.RateV1{
			Pair: spec.Pair, Bid: bid, Ask: bid.Add(decimal.New(rng.Int64N(100), -spec.Precision)),
			BidSize: randomDecimal(rng), AskSize: randomDecimal(rng),
			ProviderTime: randomTime(rng), QuoteID: quoteIDs[rng.IntN(len(quoteIDs))],
			Session: sessions[rng.IntN(len(sessions))], MsgSeqNum: rng.IntN(1 << 30), Epoch: rng.Int64N(1<<40) + 1,
			Seq: rng.Int64N(1 << 40), ReceivedAt: randomTime(rng),
		}
		if i%2 == 0 {
			r.QuoteID = strconv.Itoa(i + 1)
		}
		if r.QuoteID == "" {
			continue // not a valid rate
		}
		before := time.Now()
		got, err := enc.encode(r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		want, err := encodeRate(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Value, want.Value) {
			t.Fatalf("rate %+v:\n got %s %s\nwant %s %s", r, got.Key, got.Value, want.Key, want.Value)
		}
		if !slices.EqualFunc(withoutTime(got.Headers), withoutTime(want.Headers), func(a, b kafka.Header) bool {
			return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
		}) {
			t.Fatalf("rate %+v: headers\n got %s\nwant %s", r, headers(got.Headers), headers(want.Headers))
		}
		at, err := time.Parse(time.RFC3339Nano, string(header(got.Headers, ceHeaderTime)))
		if err != nil || at.Before(before.Truncate(time.Microsecond)) || at.After(time.Now()) {
			t.Fatalf("ce_time %q: %v", header(got.Headers, ceHeaderTime), err)
		}
	}
}

// TestRateEncoderKnowsEveryField fails when RateV1 changes, so the encoder is changed with it.
func TestRateEncoderKnowsEveryField(t *testing.T) {
	var names []string
	rt := reflect.TypeFor[eventing.RateV1]()
	for i := range rt.NumField() {
		names = append(names, rt.Field(i).Name+" "+rt.Field(i).Type.String()+" "+rt.Field(i).Tag.Get("json"))
	}
	want := []string{"Pair fx.Pair pair", "Bid decimal.Decimal bid", "Ask decimal.Decimal ask",
		"BidSize decimal.Decimal bidSize", "AskSize decimal.Decimal askSize", "ProviderTime time.Time providerTime",
		"QuoteID string quoteId", "Session string session", "MsgSeqNum int msgSeqNum", "Epoch int64 epoch",
		"Seq int64 seq", "ReceivedAt time.Time receivedAt"}
	if !slices.Equal(names, want) {
		t.Fatalf("eventing.RateV1 changed; update rateEncoder.encode and this list:\n%q", names)
	}
}

func randomDecimal(rng *rand.Rand) decimal.Decimal {
	return decimal.New(rng.Int64N(1_000_000_000), -rng.Int32N(9))
}

func randomTime(rng *rand.Rand) time.Time {
	t := time.Unix(rng.Int64N(4_000_000_000), 0).UTC()
	switch rng.IntN(4) {
	case 0:
	case 1:
		t = t.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
	default:
		t = t.Add(time.Duration(rng.IntN(1_000_000_000)))
	}
	if rng.IntN(20) == 0 {
		t = t.In(time.FixedZone("JST", 9*3600))
	}
	return t
}

func withoutTime(hs []kafka.Header) []kafka.Header {
	return slices.DeleteFunc(slices.Clone(hs), func(h kafka.Header) bool { return h.Key == ceHeaderTime })
}

func header(hs []kafka.Header, key string) []byte {
	for _, h := range hs {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

func headers(hs []kafka.Header) string {
	var b bytes.Buffer
	for _, h := range hs {
		b.WriteString(h.Key + "=" + string(h.Value) + " ")
	}
	return b.String()
}

// TestAppendDecimalMatchesString holds appendDecimalString to decimal.Decimal's String.
func TestAppendDecimalMatchesString(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	ds := []decimal.Decimal{decimal.Zero, decimal.New(0, -5), decimal.New(-1, -3), decimal.New(5, 3),
		decimal.RequireFromString("123456789012345678901234567890.5"), decimal.New(math.MinInt64, -2),
		decimal.New(math.MaxInt64, -25), decimal.RequireFromString("-0.000"), decimal.RequireFromString("1.08500")}
	for range 20000 {
		n := rng.Int64N(1<<uint(rng.IntN(62)+1)) + rng.Int64N(2)
		if rng.IntN(4) == 0 {
			n = -n
		}
		ds = append(ds, decimal.New(n, int32(rng.IntN(30)-24)))
	}
	for _, d := range ds {
		if got, want := string(appendDecimalString(nil, d)), d.String(); got != want {
			t.Errorf("%s (coefficient %s, exponent %d): got %s", want, d.Coefficient(), d.Exponent(), got)
		}
	}
}
