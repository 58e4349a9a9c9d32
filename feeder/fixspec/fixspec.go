// Package fixspec holds what both ends of kawase's FIX 4.4 market-data link share: the FIX 4.4 data
// dictionary (embedded, from quickfixgo, © quickfixengine.org, QuickFIX Software License 1.0), the
// mapping between FIX symbols ("USD/JPY") and kawase pairs ("USD_JPY"), and the session defaults;
// and Dictionary, which checks raw messages against the data dictionary and reads their repeating
// groups.
package fixspec

import (
	"crypto/sha256"
	_ "embed" // the data dictionary is embedded
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// BeginString is the FIX version of the link.
const BeginString = "FIX.4.4"

// Default CompIDs: the feeder (initiator) is KAWASE, the provider (acceptor) FIXSIM.
const (
	DefaultFeederCompID   = "KAWASE"
	DefaultProviderCompID = "FIXSIM"
)

// fix44 is the FIX 4.4 data dictionary quickfixgo ships (spec/FIX44.xml).
//
//go:embed FIX44.xml
var fix44 []byte

var (
	dictOnce sync.Once
	dictPath string
	dictErr  error
)

// DictionaryPath returns the path of the FIX 4.4 data dictionary on disk, writing it once per process
// into the temporary directory (quickfixgo reads dictionaries only from files). The file name carries
// the content hash, and it is written atomically, so concurrent processes share it safely.
func DictionaryPath() (string, error) {
	dictOnce.Do(func() { dictPath, dictErr = writeDictionary(os.TempDir()) })
	return dictPath, dictErr
}

func writeDictionary(dir string) (string, error) {
	sum := sha256.Sum256(fix44)
	path := filepath.Join(dir, "kawase-FIX44-"+hex.EncodeToString(sum[:8])+".xml")
	if b, err := os.ReadFile(path); err == nil && sha256.Sum256(b) == sum {
		return path, nil
	}
	tmp, err := os.CreateTemp(dir, "kawase-FIX44-*.tmp")
	if err != nil {
		return "", fmt.Errorf("write fix data dictionary: %w", err)
	}
	_, werr := tmp.Write(fix44)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("write fix data dictionary: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("write fix data dictionary: %w", err)
	}
	return path, nil
}

// Symbol is the FIX Symbol(55) of a pair: "USD_JPY" travels as "USD/JPY".
func Symbol(p fx.Pair) string {
	return strings.Replace(string(p), "_", "/", 1)
}

// Pair maps a FIX Symbol(55) such as "USD/JPY" back to a kawase pair; the pair need not be known to
// kawase (callers check with fx.Lookup).
func Pair(symbol string) (fx.Pair, error) {
	base, quote, ok := strings.Cut(symbol, "/")
	if !ok || len(base) != 3 || len(quote) != 3 {
		return "", fmt.Errorf("fix symbol %q is not BASE/QUOTE", symbol)
	}
	return fx.Pair(base + "_" + quote), nil
}
