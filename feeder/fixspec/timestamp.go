package fixspec

import (
	"time"

	"github.com/quickfixgo/quickfix"
)

// Shapes of a FIX UTCTimestamp: "20060102-15:04:05" and optionally 3, 6 or 9 fractional digits.
const (
	utcTimestampSecondsBytes = len("20060102-15:04:05")
	fracDigitsMax            = 9
)

// UTCTimestamp reads a FIX UTCTimestamp as quickfixgo's FIXUTCTimestamp does: to the second, milli-,
// micro- or nanosecond. It reads those shapes itself and leaves anything else to quickfixgo, which
// goes through time.Parse.
func UTCTimestamp(b []byte) (time.Time, error) {
	if t, ok := utcTimestamp(b); ok {
		return t, nil
	}
	var ts quickfix.FIXUTCTimestamp
	if err := ts.Read(b); err != nil {
		return time.Time{}, err
	}
	return ts.Time, nil
}

func utcTimestamp(b []byte) (time.Time, bool) {
	frac := len(b) - utcTimestampSecondsBytes - 1
	switch {
	case frac == -1:
	case frac == 3 || frac == 6 || frac == fracDigitsMax:
		if b[utcTimestampSecondsBytes] != '.' {
			return time.Time{}, false
		}
	default:
		return time.Time{}, false
	}
	if b[8] != '-' || b[11] != ':' || b[14] != ':' {
		return time.Time{}, false
	}
	y, ok1 := Digits(b[0:4])
	mo, ok2 := Digits(b[4:6])
	d, ok3 := Digits(b[6:8])
	h, ok4 := Digits(b[9:11])
	mi, ok5 := Digits(b[12:14])
	s, ok6 := Digits(b[15:17])
	ns, ok7 := 0, true
	if frac > 0 {
		ns, ok7 = Digits(b[utcTimestampSecondsBytes+1:])
		for range fracDigitsMax - frac {
			ns *= 10
		}
	}
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || !ok7 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), d, h, mi, s, ns, time.UTC)
	return t, t.Day() == d // not normalised past the month's end
}

// Digits reads a run of decimal digits (no sign, no spaces) as FIX writes numbers in timestamps and
// dates; false when b holds anything else. The feeder reads MDEntryDate/MDEntryTime with it too.
func Digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
