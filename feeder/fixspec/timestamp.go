package fixspec

import (
	"time"

	"github.com/quickfixgo/quickfix"
)

// Shapes of a FIX UTCTimestamp: "20060102-15:04:05" and optionally 3, 6 or 9 fractional digits.
const (
	utcTimestampSecondsBytes = len("20060102-15:04:05")
	dateBytes                = len("20060102")
	clockBytes               = len("15:04:05")
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
	if frac != -1 && frac != 3 && frac != 6 && frac != fracDigitsMax || b[dateBytes] != '-' {
		return time.Time{}, false
	}
	return DateAndClock(b[:dateBytes], b[dateBytes+1:])
}

// DateAndClock reads a date "YYYYMMDD" and a UTC time of day "HH:MM:SS", optionally with '.' and 1 to
// 9 fractional digits, without building strings: the two halves of a UTCTimestamp, and FIX's
// MDEntryDate(272) and MDEntryTime(273). ok is false for any other shape and for an impossible date
// or time.
func DateAndClock(date, clock []byte) (t time.Time, ok bool) {
	frac := len(clock) - clockBytes - 1
	if len(date) != dateBytes || frac < -1 || frac == 0 || frac > fracDigitsMax || clock[2] != ':' || clock[5] != ':' ||
		frac > 0 && clock[clockBytes] != '.' {
		return time.Time{}, false
	}
	y, ok1 := Digits(date[0:4])
	mo, ok2 := Digits(date[4:6])
	d, ok3 := Digits(date[6:8])
	h, ok4 := Digits(clock[0:2])
	mi, ok5 := Digits(clock[3:5])
	s, ok6 := Digits(clock[6:8])
	ns, ok7 := 0, true
	if frac > 0 {
		ns, ok7 = Digits(clock[clockBytes+1:])
		for range fracDigitsMax - frac {
			ns *= 10
		}
	}
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || !ok7 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59 {
		return time.Time{}, false
	}
	t = time.Date(y, time.Month(mo), d, h, mi, s, ns, time.UTC)
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
