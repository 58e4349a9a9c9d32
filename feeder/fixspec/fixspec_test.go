package fixspec

import (
	"testing"

	"github.com/quickfixgo/quickfix/datadictionary"

	"github.com/kawase-fx/kawase/eventing/fx"
)

func TestSymbolRoundTrip(t *testing.T) {
	for _, spec := range fx.Pairs() {
		sym := Symbol(spec.Pair)
		back, err := Pair(sym)
		if err != nil || back != spec.Pair {
			t.Fatalf("%s → %q → %s, %v", spec.Pair, sym, back, err)
		}
	}
	for _, bad := range []string{"USDJPY", "USD_JPY", "US/JPY", ""} {
		if _, err := Pair(bad); err == nil {
			t.Errorf("symbol %q accepted", bad)
		}
	}
}

func TestDictionaryPathParses(t *testing.T) {
	dd := quickfixDictionary(t)
	for _, msgType := range []string{"V", "W", "X", "Y"} {
		if _, ok := dd.Messages[msgType]; !ok {
			t.Errorf("message type %s missing", msgType)
		}
	}
}

// quickfixDictionary is the embedded FIX 4.4 dictionary as quickfixgo parses it, for comparing with.
func quickfixDictionary(tb testing.TB) *datadictionary.DataDictionary {
	tb.Helper()
	path, err := DictionaryPath()
	if err != nil {
		tb.Fatal(err)
	}
	dd, err := datadictionary.Parse(path)
	if err != nil {
		tb.Fatal(err)
	}
	return dd
}
