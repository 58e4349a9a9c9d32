package rates

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
)

// boardHTML is the rate board: one static page (inline CSS and script, no build step) fed by the SSE
// stream.
//
//go:embed board.html
var boardHTML []byte

// boardCSP allows exactly the board's own inline style and script (by hash) and connections back to
// this origin, and nothing else.
var boardCSP = fmt.Sprintf("default-src 'none'; style-src '%s'; script-src '%s'; connect-src 'self'; "+
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	inlineHash(boardHTML, "style"), inlineHash(boardHTML, "script"))

// inlineHash is the CSP source of the first <tag>…</tag> body in page.
func inlineHash(page []byte, tag string) string {
	s := string(page)
	open, end := strings.Index(s, "<"+tag+">"), strings.Index(s, "</"+tag+">")
	if open < 0 || end < open {
		panic(fmt.Sprintf("rates: board.html lacks an inline <%s>", tag)) // the embedded page is ours
	}
	sum := sha256.Sum256([]byte(s[open+len(tag)+2 : end]))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

func serveBoard(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", boardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(boardHTML)
}
