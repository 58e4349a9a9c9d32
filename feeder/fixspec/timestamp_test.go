package fixspec

import (
	"math/rand/v2"
	"testing"

	"github.com/quickfixgo/quickfix"
)

// TestUTCTimestampMatchesQuickfix holds UTCTimestamp to quickfixgo's FIXUTCTimestamp.Read.
func TestUTCTimestampMatchesQuickfix(t *testing.T) {
	cases := []string{
		"20261130-12:00:00", "20261130-12:00:00.123", "20261130-12:00:00.123456", "20261130-12:00:00.123456789",
		"20261130-23:59:59.999", "20260229-12:00:00", "20240229-12:00:00", "20261131-12:00:00", "20261301-12:00:00",
		"20261100-12:00:00", "20261130-24:00:00", "20261130-12:60:00", "20261130-12:00:60", "20261130-12:00:00.",
		"20261130-12:00:00.12", "20261130-12:00:00.1234", "20261130 12:00:00", "", "x", "00000101-00:00:00",
	}
	rng := rand.New(rand.NewPCG(5, 6))
	const alphabet = "0123456789:.- x"
	for range 20000 {
		b := []byte("20261130-12:34:56.123456789"[:[]int{17, 21, 24, 27}[rng.IntN(4)]])
		b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		cases = append(cases, string(b))
	}
	for _, c := range cases {
		got, gotErr := UTCTimestamp([]byte(c))
		var want quickfix.FIXUTCTimestamp
		wantErr := want.Read([]byte(c))
		if (gotErr == nil) != (wantErr == nil) || !got.Equal(want.Time) || (gotErr == nil && got.Location() != want.Time.Location()) {
			t.Errorf("%q: got %v, %v; quickfixgo %v, %v", c, got, gotErr, want.Time, wantErr)
		}
	}
}
