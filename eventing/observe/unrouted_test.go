package observe_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// TestUnroutedAnswersProblems: a path served for other methods gets 405 with Allow, an unknown path
// 404, both as problem+json with their codes; routed requests are untouched.
func TestUnroutedAnswersProblems(t *testing.T) {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	mux.HandleFunc("GET /v1/things/{id}", ok)
	mux.HandleFunc("DELETE /v1/things/{id}", ok)
	mux.HandleFunc("POST /v1/things", ok)
	mux.HandleFunc("/v1/", observe.Unrouted(mux))
	for _, c := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{http.MethodGet, "/v1/things/7", http.StatusNoContent, "", ""},
		{http.MethodPut, "/v1/things/7", http.StatusMethodNotAllowed, "method_not_allowed", "GET, HEAD, DELETE"},
		{http.MethodGet, "/v1/things", http.StatusMethodNotAllowed, "method_not_allowed", "POST"},
		{http.MethodGet, "/v1/nothing", http.StatusNotFound, "not_found", ""},
		{http.MethodPost, "/v1/things/7/more", http.StatusNotFound, "not_found", ""},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		var p struct{ Code string }
		if c.code != "" {
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("%s %s: content type %q", c.method, c.path, ct)
			}
			_ = json.Unmarshal(rec.Body.Bytes(), &p)
		}
		if rec.Code != c.status || p.Code != c.code || rec.Header().Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q Allow %q, want %d %q Allow %q", c.method, c.path, rec.Code, p.Code,
				rec.Header().Get("Allow"), c.status, c.code, c.allow)
		}
	}
}
