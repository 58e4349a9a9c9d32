package observe

import (
	"fmt"
	"net/http"
	"strings"
)

// routedMethods are the methods Unrouted looks for when it lists what a path allows.
var routedMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// Unrouted answers a request none of mux's method patterns took, as problem+json rather than
// net/http's plain-text page: 405 method_not_allowed with Allow when the path exists for another
// method, else 404 not_found. Register it on the paths the API owns (e.g. "/v1/things/").
func Unrouted(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range routedMethods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); strings.HasPrefix(pattern, m+" ") {
				allow = append(allow, m)
				if m == http.MethodGet {
					allow = append(allow, http.MethodHead)
				}
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			WriteProblem(w, Problem{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Title: "method not allowed",
				Detail: fmt.Sprintf("%s takes %s, not %s", r.URL.Path, strings.Join(allow, ", "), r.Method)})
			return
		}
		WriteProblem(w, Problem{Status: http.StatusNotFound, Code: "not_found", Title: "no such resource",
			Detail: fmt.Sprintf("nothing is served at %s", r.URL.Path)})
	}
}
