package deadletters

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// Limits of the REST API.
const (
	pageSizeDefault = 50
	pageSizeMax     = 500
	// replayFilterMax bounds the letters one POST /v1/deadletters/replay replays; call it again for more.
	replayFilterMax = 1_000
	// failuresListedMax bounds the failures a filter replay lists in its answer.
	failuresListedMax = 20
	requestBytesMax   = 16 << 10
	reasonBytesMax    = 1_024
	actorBytesMax     = 128
)

// HeaderActor names who acts (replay, discard) for the record; the admin token says only that they
// may. The CLI sends the user's login name.
const HeaderActor = "Kawase-Actor"

// actorDefault is recorded when a request names no actor.
const actorDefault = "admin"

// authorized lets a request through only with the admin token.
func (s *Service) authorized(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if s.adminToken == "" || !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.adminToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kawase"`)
			observe.WriteProblem(w, observe.Problem{Status: http.StatusUnauthorized, Code: "unauthorized",
				Title: "admin token required", Detail: "send Authorization: Bearer <admin token>"})
			return
		}
		h(w, r)
	})
}

func actor(r *http.Request) string {
	a := strings.TrimSpace(r.Header.Get(HeaderActor))
	if a == "" {
		return actorDefault
	}
	if len(a) > actorBytesMax {
		a = a[:actorBytesMax]
	}
	return a
}

func badRequest(w http.ResponseWriter, code, detail string) {
	observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: code, Title: "bad request", Detail: detail})
}

func (s *Service) storeError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotFound) {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusNotFound, Code: "not_found",
			Title: "no such dead letter", Detail: err.Error()})
		return
	}
	if errors.Is(err, ErrReplayed) {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusConflict, Code: "replayed",
			Title: "dead letter already replayed", Detail: "a replayed dead letter was delivered; there is nothing to discard"})
		return
	}
	s.log.Errorw("dead-letter store failed", "error", err)
	observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "store_unavailable",
		Title: "dead-letter store unavailable", Detail: "the database is unavailable; retry"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ListPage is the answer of GET /v1/deadletters; NextAfter, when set, is the after= of the next page.
type ListPage struct {
	Items     []DeadLetter `json:"items"`
	NextAfter int64        `json:"nextAfter,omitempty"`
}

// parseFilter reads category, type, status, dest and since (RFC 3339, or a duration back from now
// such as 2h).
func parseFilter(category, eventType, status, dest, since string) (filter, error) {
	f := filter{category: category, eventType: eventType, status: status, dest: dest}
	switch category {
	case "", CategoryParked, CategoryRejected:
	default:
		return f, fmt.Errorf("category must be %s or %s, not %q", CategoryParked, CategoryRejected, category)
	}
	switch status {
	case "", StatusOpen, StatusReplayed, StatusDiscarded, statusAll:
	default:
		return f, fmt.Errorf("status must be open, replayed, discarded or all, not %q", status)
	}
	if since != "" {
		if t, err := time.Parse(time.RFC3339Nano, since); err == nil {
			f.since = t
		} else if d, err := time.ParseDuration(since); err == nil && d > 0 {
			f.since = time.Now().Add(-d)
		} else {
			return f, fmt.Errorf("since must be an RFC 3339 time or a positive duration, not %q", since)
		}
	}
	return f, nil
}

// list answers GET /v1/deadletters[?category=&type=&status=&dest=&since=&pageSize=&after=]: open
// letters unless status says otherwise, oldest first.
func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := parseFilter(q.Get("category"), q.Get("type"), q.Get("status"), q.Get("dest"), q.Get("since"))
	if err != nil {
		badRequest(w, "bad_filter", err.Error())
		return
	}
	f.limit = pageSizeDefault
	if v := q.Get("pageSize"); v != "" {
		if f.limit, err = strconv.Atoi(v); err != nil || f.limit < 1 || f.limit > pageSizeMax {
			badRequest(w, "bad_page_size", fmt.Sprintf("pageSize must be 1..%d", pageSizeMax))
			return
		}
	}
	if v := q.Get("after"); v != "" {
		if f.after, err = strconv.ParseInt(v, 10, 64); err != nil || f.after < 0 {
			badRequest(w, "bad_cursor", "after must be a dead-letter id")
			return
		}
	}
	items, err := s.store.list(r.Context(), f)
	if err != nil {
		s.storeError(w, err)
		return
	}
	page := ListPage{Items: items}
	if page.Items == nil {
		page.Items = []DeadLetter{}
	}
	if len(items) == f.limit {
		page.NextAfter = items[len(items)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		badRequest(w, "bad_id", fmt.Sprintf("%q is not a dead-letter id", r.PathValue("id")))
		return 0, false
	}
	return id, true
}

// show answers GET /v1/deadletters/{id}: the letter, its original event and its history.
func (s *Service) show(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	d, err := s.store.get(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// replayOne answers POST /v1/deadletters/{id}/replay: it re-sends the original event to its
// destination now. 200 with the updated letter when the destination took it; 502 with the reason
// when it did not (the letter stays open, parked or rejected by the new answer); 409 for a discarded
// letter. A letter already replayed may be replayed again; the receiver dedups by event id.
func (s *Service) replayOne(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	l, status, err := s.store.letter(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if status == StatusDiscarded {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusConflict, Code: "discarded",
			Title: "dead letter discarded", Detail: "a discarded dead letter is not replayed"})
		return
	}
	who := actor(r)
	done, failed, _ := s.drain(r.Context(), []letter{l}, nil)
	outcome := StatusReplayed
	if len(failed) > 0 {
		outcome = failed[0].err.Error()
	}
	err = errors.Join(s.record(r.Context(), "manual", who, done, failed),
		s.store.recordAction(r.Context(), id, "replay", who, "", outcome))
	if err != nil {
		s.storeError(w, err)
		return
	}
	if len(failed) > 0 {
		f := failed[0]
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadGateway, Code: "replay_failed",
			Title: "the destination did not take the event", Detail: f.err.Error(),
			Extra: map[string]any{"category": f.category(), "destinationStatus": f.status}})
		return
	}
	d, err := s.store.get(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// ReplayFilter is the body of POST /v1/deadletters/replay: which open letters to replay.
type ReplayFilter struct {
	Category string `json:"category,omitempty"`
	Type     string `json:"type,omitempty"`
	Dest     string `json:"dest,omitempty"`
	Since    string `json:"since,omitempty"`
	// Limit bounds the letters replayed (default and maximum replayFilterMax).
	Limit int `json:"limit,omitempty"`
}

// ReplayReport is the answer of POST /v1/deadletters/replay.
type ReplayReport struct {
	Matched  int             `json:"matched"`
	Replayed int             `json:"replayed"`
	Failed   int             `json:"failed"`
	Failures []ReplayFailure `json:"failures,omitempty"`
}

// ReplayFailure is one letter a filter replay could not deliver.
type ReplayFailure struct {
	ID       int64  `json:"id"`
	Category string `json:"category"`
	Error    string `json:"error"`
}

// replayFilter answers POST /v1/deadletters/replay: it replays the open letters the filter selects,
// oldest first, per destination and in order per partition key.
func (s *Service) replayFilter(w http.ResponseWriter, r *http.Request) {
	var rf ReplayFilter
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, requestBytesMax)).Decode(&rf); err != nil && !errors.Is(err, io.EOF) {
		badRequest(w, "bad_json", err.Error())
		return
	}
	f, err := parseFilter(rf.Category, rf.Type, StatusOpen, rf.Dest, rf.Since)
	if err != nil {
		badRequest(w, "bad_filter", err.Error())
		return
	}
	f.limit = replayFilterMax
	if rf.Limit < 0 || rf.Limit > replayFilterMax {
		badRequest(w, "bad_limit", fmt.Sprintf("limit must be 0..%d", replayFilterMax))
		return
	}
	if rf.Limit > 0 {
		f.limit = rf.Limit
	}
	letters, err := s.store.letters(r.Context(), f)
	if err != nil {
		s.storeError(w, err)
		return
	}
	done, failed, err := s.replayByDest(r.Context(), letters, "filter", actor(r))
	if err != nil {
		s.storeError(w, err)
		return
	}
	rep := ReplayReport{Matched: len(letters), Replayed: len(done), Failed: len(failed)}
	for _, f := range failed[:min(len(failed), failuresListedMax)] {
		rep.Failures = append(rep.Failures, ReplayFailure{ID: f.id, Category: f.category(), Error: f.err.Error()})
	}
	writeJSON(w, http.StatusOK, rep)
}

// discardRequest is the body of DELETE /v1/deadletters/{id}.
type discardRequest struct {
	Reason string `json:"reason"`
}

// discard answers DELETE /v1/deadletters/{id}: the letter is marked discarded with who, when and why
// (a reason is required, in the body or as ?reason=); it is never deleted.
func (s *Service) discard(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req discardRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, requestBytesMax)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		badRequest(w, "bad_json", err.Error())
		return
	}
	if req.Reason == "" {
		req.Reason = r.URL.Query().Get("reason")
	}
	req.Reason = strings.TrimSpace(req.Reason)
	if req.Reason == "" || len(req.Reason) > reasonBytesMax {
		badRequest(w, "reason_required", fmt.Sprintf("say why (1..%d bytes), in the body {\"reason\":…} or ?reason=", reasonBytesMax))
		return
	}
	if _, err := s.store.discard(r.Context(), id, actor(r), req.Reason); err != nil {
		s.storeError(w, err)
		return
	}
	d, err := s.store.get(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}
