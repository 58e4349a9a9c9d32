package fixspec

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/quickfixgo/quickfix"
)

// quickfixgo's default validator settings (quickfix.defaultValidatorSettings, which it does not export).
var quickfixDefaults = quickfix.ValidatorSettings{
	CheckFieldsOutOfOrder: true, CheckFieldsHaveValues: true, RejectInvalidMessage: true,
	AllowUnknownMessageFields: false, CheckUserDefinedFields: true,
}

// testField is one tag=value of a test message body.
type testField struct {
	tag   int
	value string
}

// frame builds a raw FIX 4.4 message with a correct BodyLength and CheckSum.
func frame(msgType string, body []testField) []byte {
	var b strings.Builder
	b.WriteString("35=" + msgType + "\x0134=7\x0149=FIXSIM\x0152=20261130-12:00:00.123456\x0156=KAWASE\x01")
	for _, f := range body {
		b.WriteString(strconv.Itoa(f.tag) + "=" + f.value + "\x01")
	}
	msg := "8=FIX.4.4\x019=" + strconv.Itoa(b.Len()) + "\x01" + b.String()
	sum := 0
	for _, c := range []byte(msg) {
		sum += int(c)
	}
	return []byte(fmt.Sprintf("%s10=%03d\x01", msg, sum%256))
}

func side(typ, px string) []testField {
	return []testField{{269, typ}, {270, px}, {271, "1000000"}, {272, "20261130"}, {273, "12:00:00.123"}, {299, "42"}}
}

// testBodies are valid messages of every type the feeder receives.
func testBodies() map[string][]testField {
	snapshot := append([]testField{{262, "req-1"}, {55, "EUR/USD"}, {268, "2"}}, side("0", "1.08501")...)
	snapshot = append(snapshot, side("1", "1.08503")...)
	incremental := []testField{{262, "req-1"}, {268, "2"}, {279, "1"}, {269, "0"}, {55, "EUR/USD"}, {454, "2"},
		{455, "EU0001"}, {456, "4"}, {455, "EU0002"}, {456, "4"}, {270, "1.08501"}, {271, "1000000"},
		{272, "20261130"}, {273, "12:00:00.123"}, {299, "42"}, {279, "2"}, {269, "1"}, {55, "EUR/USD"}}
	return map[string][]testField{
		"W": snapshot,
		"X": incremental,
		"Y": {{262, "req-1"}, {281, "0"}, {58, "unknown symbol"}},
		"j": {{45, "3"}, {372, "D"}, {380, "3"}, {58, "unsupported"}},
		"A": {{98, "0"}, {108, "1"}, {141, "Y"}, {553, "kawase"}, {554, "s3cret"}},
		"0": nil,
		"1": {{112, "test"}},
		"3": {{45, "3"}, {371, "270"}, {372, "W"}, {373, "6"}, {58, "bad price"}},
		"4": {{36, "9"}, {123, "Y"}},
		"5": {{58, "bye"}},
		// ListStatus: a group with required members besides its delimiter.
		"N": {{66, "L1"}, {429, "2"}, {82, "1"}, {431, "3"}, {83, "1"}, {68, "2"}, {73, "2"}, {11, "C1"}, {14, "0"},
			{39, "0"}, {151, "100"}, {84, "0"}, {6, "0"}, {11, "C2"}, {14, "0"}, {39, "0"}, {151, "100"}, {84, "0"}, {6, "0"}},
	}
}

// mutations of a body: every field dropped, doubled, swapped with the next, and given odd values;
// every count off by one.
func mutations(body []testField) [][]testField {
	var out [][]testField
	odd := []string{"", "x", "-", "1.", ".5", "-1.5", "1e5", "+1", "1.2.3", "Y", "20261130-12:00:00", "3", "-3"}
	for i, f := range body {
		out = append(out, slices.Delete(slices.Clone(body), i, i+1))
		out = append(out, slices.Insert(slices.Clone(body), i, f))
		if i+1 < len(body) {
			s := slices.Clone(body)
			s[i], s[i+1] = s[i+1], s[i]
			out = append(out, s)
		}
		for _, v := range odd {
			s := slices.Clone(body)
			s[i].value = v
			out = append(out, s)
		}
		if n, err := strconv.Atoi(f.value); err == nil {
			for _, d := range []int{-1, 1} {
				s := slices.Clone(body)
				s[i].value = strconv.Itoa(n + d)
				out = append(out, s)
			}
		}
	}
	return append(out, append(slices.Clone(body), testField{9999, "x"}), append(slices.Clone(body), testField{55, "EUR/USD"}))
}

// TestCheckAgreesWithQuickfixValidator checks that Dictionary.Check accepts what quickfixgo's
// validator accepts and rejects the rest for the same reason, over valid messages and a few thousand
// broken ones.
func TestCheckAgreesWithQuickfixValidator(t *testing.T) {
	dd := quickfixDictionary(t)
	d, err := NewDictionary()
	if err != nil {
		t.Fatal(err)
	}
	v := quickfix.NewValidator(quickfixDefaults, dd, nil)
	checked, rejected := 0, 0
	for msgType, body := range testBodies() {
		raw := frame(msgType, body)
		msg := quickfix.NewMessage()
		if err := quickfix.ParseMessageWithDataDictionary(msg, bytes.NewBuffer(slices.Clone(raw)), nil, dd); err != nil {
			t.Fatalf("valid %s does not parse: %v", msgType, err)
		}
		if err := v.Validate(msg); err != nil {
			t.Errorf("valid %s refused by quickfixgo: %v\n%q", msgType, err, raw)
		}
		if _, err := d.Check(raw, nil); err != nil {
			t.Errorf("valid %s refused: %v\n%q", msgType, err, raw)
		}
		for _, mutated := range mutations(body) {
			raw := frame(msgType, mutated)
			msg := quickfix.NewMessage()
			if err := quickfix.ParseMessageWithDataDictionary(msg, bytes.NewBuffer(slices.Clone(raw)), nil, dd); err != nil {
				continue // quickfixgo cannot parse it: no validator sees it
			}
			want := v.Validate(msg)
			_, got := d.Check(raw, nil)
			checked++
			if want != nil {
				rejected++
			}
			if !sameReject(want, got) {
				t.Errorf("%q:\n quickfixgo: %v\n Check:      %v", raw, describe(want), describe(got))
			}
		}
	}
	t.Logf("%d messages compared, %d rejected", checked, rejected)
}

func sameReject(a, b quickfix.MessageRejectError) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if a.RejectReason() != b.RejectReason() {
		return false
	}
	ta, tb := a.RefTagID(), b.RefTagID()
	return (ta == nil) == (tb == nil) && (ta == nil || *ta == *tb)
}

func describe(err quickfix.MessageRejectError) string {
	if err == nil {
		return "accepted"
	}
	ref := "-"
	if t := err.RefTagID(); t != nil {
		ref = strconv.Itoa(int(*t))
	}
	return fmt.Sprintf("%v (reason %d, tag %s)", err, err.RejectReason(), ref)
}

func TestEntriesReadsGroups(t *testing.T) {
	d, err := NewDictionary()
	if err != nil {
		t.Fatal(err)
	}
	m, rerr := d.Check(frame("X", testBodies()["X"]), nil)
	if rerr != nil {
		t.Fatal(rerr)
	}
	var got []string
	for e := range m.Body.Entries(268) {
		action, _ := e.Get(279)
		sym, _ := e.Get(55)
		ids := 0
		for range e.Entries(454) {
			ids++
		}
		px, _ := e.Get(270)
		got = append(got, fmt.Sprintf("%s %s %d %s", action, sym, ids, px))
	}
	want := []string{"1 EUR/USD 2 1.08501", "2 EUR/USD 0 "}
	if !slices.Equal(got, want) {
		t.Fatalf("entries %q, want %q", got, want)
	}
	if _, ok := m.Body.Get(270); ok {
		t.Fatal("a group's field read as the message's")
	}
}

// BenchmarkParseW compares what the feeder's session does with a 35=W: quickfixgo parsing and
// validating it with the data dictionary, against quickfixgo parsing it flat and Check checking it.
func BenchmarkParseW(b *testing.B) {
	dd := quickfixDictionary(b)
	d, err := NewDictionary()
	if err != nil {
		b.Fatal(err)
	}
	raw := frame("W", testBodies()["W"])
	b.Run("quickfixgo-dictionary", func(b *testing.B) {
		v := quickfix.NewValidator(quickfixDefaults, dd, nil)
		for b.Loop() {
			msg := quickfix.NewMessage()
			if err := quickfix.ParseMessageWithDataDictionary(msg, bytes.NewBuffer(raw), nil, dd); err != nil {
				b.Fatal(err)
			}
			if err := v.Validate(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("flat-and-Check", func(b *testing.B) {
		v := quickfix.NewValidator(quickfixDefaults, nil, nil)
		var buf []Field
		for b.Loop() {
			msg := quickfix.NewMessage()
			if err := quickfix.ParseMessageWithDataDictionary(msg, bytes.NewBuffer(raw), nil, nil); err != nil {
				b.Fatal(err)
			}
			if err := v.Validate(msg); err != nil {
				b.Fatal(err)
			}
			m, err := d.Check(msg.Bytes(), buf)
			if err != nil {
				b.Fatal(err)
			}
			buf = m.Fields()
		}
	})
}

// BenchmarkCheckW is Check alone on a 35=W.
func BenchmarkCheckW(b *testing.B) {
	d, err := NewDictionary()
	if err != nil {
		b.Fatal(err)
	}
	raw := frame("W", testBodies()["W"])
	var buf []Field
	for b.Loop() {
		m, err := d.Check(raw, buf)
		if err != nil {
			b.Fatal(err)
		}
		buf = m.Fields()
	}
}
