// Package extsim simulates the external system kawase's relay hands executed trades to: a receiver
// whose opening hours are unknown to kawase. It opens and closes on a schedule (or when told), can
// answer with random 5xx errors and slowly, verifies every delivery's signature (package
// eventing/signature, the documented wire contract; it shares nothing else with the relay), dedups by
// Idempotency-Key and checks each account's sequence numbers, so tests and `kawase dev` can see that
// nothing was lost, doubled or left with a hole.
//
// HTTP interface (the handler New returns):
//
//	POST /v1/executions        a delivery (see package signature for its headers)
//	GET  /stats                counters as JSON (Stats)
//	POST /control/open         open until told otherwise (overrides the schedule)
//	POST /control/close        closed until told otherwise
//	POST /control/resume       follow the schedule again
//	POST /control/refuse       {"executionId"|"accountId", "status", "reason"}: answer that 4xx
//	POST /control/allow        {"executionId"|"accountId"}: undo a refusal
//	GET  /healthz              liveness
//
// Answers to a delivery, in the order they are decided: closed → 503; injected failure → 500;
// bad signature → 401; malformed (body or headers) → 400; refused → the refusal's 4xx; a key seen
// before → 200 (counted as a duplicate); otherwise accepted → 200.
package extsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/signature"
)

// DeliveryPath is where the simulator takes deliveries; the relay's external URL points here.
const DeliveryPath = "/v1/executions"

// Limits of the simulator.
const (
	bodyBytesMax    = 64 << 10
	controlBytesMax = 4 << 10
	// dedupKeysMax bounds the remembered idempotency keys; the oldest are forgotten first.
	dedupKeysMax = 1_000_000
	// accountsListedMax bounds the per-account entries in GET /stats.
	accountsListedMax = 1_000
	// reasonBytesMax bounds a refusal's reason.
	reasonBytesMax = 512
	percentMax     = 100
)

// Modes of the opening hours.
const (
	ModeSchedule = "schedule"
	ModeOpen     = "open"
	ModeClosed   = "closed"
)

// Config says how the simulator behaves.
type Config struct {
	// Secrets are the HMAC secrets it accepts, newest first (one or two, as in a rotation).
	Secrets []string
	// Tolerance is how old (or new) a signature's timestamp may be; zero means the scheme's default.
	Tolerance time.Duration
	// Schedule is the opening hours, counted from New; zero means always open.
	Schedule Schedule
	// StartClosed starts closed until POST /control/open (or /control/resume) says otherwise.
	StartClosed bool
	// FailPercent is the share of deliveries (0..100) answered with a random 500 while open.
	FailPercent int
	// SlowPercent is the share of deliveries (0..100) answered only after SlowDelay.
	SlowPercent int
	SlowDelay   time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Refusal makes the simulator refuse one execution or every execution of one account with a 4xx,
// as a real receiver refuses what it can never accept (the poison case).
type Refusal struct {
	ExecutionID string `json:"executionId,omitempty"`
	AccountID   string `json:"accountId,omitempty"`
	// Status is the 4xx to answer; zero means 422.
	Status int    `json:"status,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Stats are the simulator's counters. Gaps is the number of sequence numbers currently missing below
// each account's highest one (so it falls back to 0 once late deliveries fill the holes); GapsOpened
// counts the deliveries that skipped ahead, and Reorders the ones that arrived after a higher
// sequence number of their account.
type Stats struct {
	Open              bool                    `json:"open"`
	Mode              string                  `json:"mode"`
	Schedule          string                  `json:"schedule"`
	Requests          int64                   `json:"requests"`
	Accepted          int64                   `json:"accepted"`
	Duplicates        int64                   `json:"duplicates"`
	BadSignatures     int64                   `json:"badSignatures"`
	Gaps              int64                   `json:"gaps"`
	GapsOpened        int64                   `json:"gapsOpened"`
	Reorders          int64                   `json:"reorders"`
	SeqConflicts      int64                   `json:"seqConflicts"`
	ClosedAnswers     int64                   `json:"closedAnswers"`
	InjectedFailures  int64                   `json:"injectedFailures"`
	SlowAnswers       int64                   `json:"slowAnswers"`
	Refused           int64                   `json:"refused"`
	Malformed         int64                   `json:"malformed"`
	FirstAcceptedAt   *time.Time              `json:"firstAcceptedAt,omitempty"`
	LastAcceptedAt    *time.Time              `json:"lastAcceptedAt,omitempty"`
	Accounts          map[string]AccountStats `json:"accounts"`
	AccountsTruncated bool                    `json:"accountsTruncated,omitempty"`
}

// AccountStats is one account's sequence check: LastSeq is the highest sequence number received,
// Contiguous the highest n such that 1..n have all arrived, Missing the holes below LastSeq.
type AccountStats struct {
	LastSeq    int64 `json:"lastSeq"`
	Contiguous int64 `json:"contiguous"`
	Received   int64 `json:"received"`
	Missing    int64 `json:"missing"`
}

// Complete reports whether the account's sequence has no holes: 1..LastSeq all arrived.
func (a AccountStats) Complete() bool { return a.Missing == 0 && a.Contiguous == a.LastSeq }

// Sim is the simulated external system.
type Sim struct {
	cfg      Config
	verifier *signature.Verifier
	start    time.Time
	mux      *http.ServeMux

	mu       sync.Mutex
	mode     string
	stats    Stats
	seen     map[string]struct{}
	seenFIFO []string
	seenHead int
	accounts map[string]*account
	byExec   map[string]Refusal
	byAcct   map[string]Refusal
}

// account tracks one account's sequence numbers: all of 1..contig, plus those above it in above.
type account struct {
	contig, max, received int64
	above                 map[int64]struct{}
}

func (a *account) missing() int64 { return a.max - a.contig - int64(len(a.above)) }

// New returns a simulator; it serves HTTP through ServeHTTP.
func New(cfg Config) (*Sim, error) {
	v, err := signature.NewVerifier(cfg.Secrets, cfg.Tolerance)
	if err != nil {
		return nil, fmt.Errorf("extsim: %w", err)
	}
	for _, p := range []int{cfg.FailPercent, cfg.SlowPercent} {
		if p < 0 || p > percentMax {
			return nil, fmt.Errorf("extsim: percentages must be 0..%d, not %d", percentMax, p)
		}
	}
	if cfg.SlowPercent > 0 && cfg.SlowDelay <= 0 {
		return nil, errors.New("extsim: slow answers need a positive slow delay")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sim{cfg: cfg, verifier: v, start: cfg.Now(), mode: ModeSchedule,
		seen: map[string]struct{}{}, accounts: map[string]*account{},
		byExec: map[string]Refusal{}, byAcct: map[string]Refusal{}}
	if cfg.StartClosed {
		s.mode = ModeClosed
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST "+DeliveryPath, s.deliver)
	s.mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Stats()) })
	s.mux.HandleFunc("POST /control/open", s.control(ModeOpen))
	s.mux.HandleFunc("POST /control/close", s.control(ModeClosed))
	s.mux.HandleFunc("POST /control/resume", s.control(ModeSchedule))
	s.mux.HandleFunc("POST /control/refuse", s.refuse)
	s.mux.HandleFunc("POST /control/allow", s.allow)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	return s, nil
}

// ServeHTTP serves deliveries, stats and control.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// SetMode switches the opening hours: ModeOpen or ModeClosed until told otherwise, or ModeSchedule.
func (s *Sim) SetMode(mode string) error {
	switch mode {
	case ModeOpen, ModeClosed, ModeSchedule:
	default:
		return fmt.Errorf("extsim: unknown mode %q", mode)
	}
	s.mu.Lock()
	s.mode = mode
	s.mu.Unlock()
	return nil
}

// Refuse makes the simulator refuse an execution or an account (see Refusal).
func (s *Sim) Refuse(r Refusal) error {
	if (r.ExecutionID == "") == (r.AccountID == "") {
		return errors.New("extsim: a refusal names exactly one of executionId and accountId")
	}
	if r.Status == 0 {
		r.Status = http.StatusUnprocessableEntity
	}
	if r.Status < 400 || r.Status > 499 {
		return fmt.Errorf("extsim: a refusal answers a 4xx, not %d", r.Status)
	}
	if len(r.Reason) > reasonBytesMax {
		r.Reason = r.Reason[:reasonBytesMax]
	}
	if r.Reason == "" {
		r.Reason = "refused by the external system"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.ExecutionID != "" {
		s.byExec[r.ExecutionID] = r
	} else {
		s.byAcct[r.AccountID] = r
	}
	return nil
}

// Allow undoes a refusal of an execution or an account.
func (s *Sim) Allow(r Refusal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byExec, r.ExecutionID)
	delete(s.byAcct, r.AccountID)
}

// IsOpen says whether the simulator takes deliveries now.
func (s *Sim) IsOpen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	open, _ := s.openLocked()
	return open
}

func (s *Sim) openLocked() (bool, time.Duration) {
	switch s.mode {
	case ModeOpen:
		return true, 0
	case ModeClosed:
		return false, 0
	}
	return s.cfg.Schedule.at(s.cfg.Now().Sub(s.start))
}

// Stats returns a snapshot of the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Open, _ = s.openLocked()
	st.Mode = s.mode
	st.Schedule = s.cfg.Schedule.String()
	st.Accounts = make(map[string]AccountStats, min(len(s.accounts), accountsListedMax))
	for id, a := range s.accounts {
		if len(st.Accounts) == accountsListedMax {
			st.AccountsTruncated = true
			break
		}
		st.Accounts[id] = AccountStats{LastSeq: a.max, Contiguous: a.contig, Received: a.received, Missing: a.missing()}
	}
	return st
}

// delivery is what the simulator reads from a delivery's body; the rest of the execution is opaque.
type delivery struct {
	ExecutionID string `json:"executionId"`
	AccountID   string `json:"accountId"`
	AccountSeq  int64  `json:"accountSeq"`
}

func (s *Sim) deliver(w http.ResponseWriter, r *http.Request) {
	s.count(func(st *Stats) { st.Requests++ })
	if p, refused := s.refuseOpening(r.Context()); refused {
		observe.WriteProblem(w, p)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, bodyBytesMax))
	if err != nil {
		s.count(func(st *Stats) { st.Malformed++ })
		observe.WriteProblem(w, observe.Problem{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
			Title: "body too large", Detail: err.Error()})
		return
	}
	if err := s.verifier.Verify(r.Header.Get(signature.HeaderSignature), body, s.cfg.Now()); err != nil {
		s.count(func(st *Stats) { st.BadSignatures++ })
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnauthorized, Code: "bad_signature",
			Title: "signature refused", Detail: err.Error()})
		return
	}
	d, err := parseDelivery(r.Header, body)
	if err != nil {
		s.count(func(st *Stats) { st.Malformed++ })
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "malformed_delivery",
			Title: "malformed delivery", Detail: err.Error()})
		return
	}
	if p, refused := s.refusal(d); refused {
		observe.WriteProblem(w, p)
		return
	}
	status := s.accept(d)
	writeJSON(w, http.StatusOK, map[string]any{"executionId": d.ExecutionID, "status": status})
}

// refuseOpening decides the answers that do not depend on the delivery: closed, injected failure,
// and the slow answer's wait.
func (s *Sim) refuseOpening(ctx context.Context) (observe.Problem, bool) {
	s.mu.Lock()
	open, opensIn := s.openLocked()
	if !open {
		s.stats.ClosedAnswers++
	}
	s.mu.Unlock()
	if !open {
		p := observe.Problem{Status: http.StatusServiceUnavailable, Code: "closed", Title: "the external system is closed"}
		if opensIn > 0 {
			p.Extra = map[string]any{"opensInSeconds": int(opensIn.Seconds()) + 1}
		}
		return p, true
	}
	if s.cfg.SlowPercent > 0 && rand.IntN(percentMax) < s.cfg.SlowPercent {
		s.count(func(st *Stats) { st.SlowAnswers++ })
		t := time.NewTimer(s.cfg.SlowDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if s.cfg.FailPercent > 0 && rand.IntN(percentMax) < s.cfg.FailPercent {
		s.count(func(st *Stats) { st.InjectedFailures++ })
		return observe.Problem{Status: http.StatusInternalServerError, Code: "injected_failure",
			Title: "simulated failure"}, true
	}
	return observe.Problem{}, false
}

func parseDelivery(h http.Header, body []byte) (delivery, error) {
	var d delivery
	if err := json.Unmarshal(body, &d); err != nil {
		return d, fmt.Errorf("body: %w", err)
	}
	if d.ExecutionID == "" || d.AccountID == "" || d.AccountSeq <= 0 {
		return d, errors.New("body lacks executionId, accountId or a positive accountSeq")
	}
	if got := h.Get(signature.HeaderIdempotencyKey); got != d.ExecutionID {
		return d, fmt.Errorf("%s %q does not match executionId %q", signature.HeaderIdempotencyKey, got, d.ExecutionID)
	}
	if got := h.Get(signature.HeaderAccountID); got != d.AccountID {
		return d, fmt.Errorf("%s %q does not match accountId %q", signature.HeaderAccountID, got, d.AccountID)
	}
	if got := h.Get(signature.HeaderAccountSeq); got != strconv.FormatInt(d.AccountSeq, 10) {
		return d, fmt.Errorf("%s %q does not match accountSeq %d", signature.HeaderAccountSeq, got, d.AccountSeq)
	}
	return d, nil
}

func (s *Sim) refusal(d delivery) (observe.Problem, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byExec[d.ExecutionID]
	if !ok {
		r, ok = s.byAcct[d.AccountID]
	}
	if !ok {
		return observe.Problem{}, false
	}
	s.stats.Refused++
	return observe.Problem{Status: r.Status, Code: "refused", Title: "refused by the external system", Detail: r.Reason}, true
}

// accept records a signed, well-formed delivery: a duplicate key is counted and answered like the
// first time; a new one is accepted and its sequence number checked.
func (s *Sim) accept(d delivery) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[d.ExecutionID]; dup {
		s.stats.Duplicates++
		return "duplicate"
	}
	s.remember(d.ExecutionID)
	now := s.cfg.Now().UTC()
	s.stats.Accepted++
	if s.stats.FirstAcceptedAt == nil {
		s.stats.FirstAcceptedAt = &now
	}
	s.stats.LastAcceptedAt = &now
	a := s.accounts[d.AccountID]
	if a == nil {
		a = &account{above: map[int64]struct{}{}}
		s.accounts[d.AccountID] = a
	}
	before := a.missing()
	s.checkSequence(a, d.AccountSeq)
	s.stats.Gaps += a.missing() - before
	return "accepted"
}

func (s *Sim) checkSequence(a *account, seq int64) {
	a.received++
	if _, dup := a.above[seq]; dup || seq <= a.contig {
		s.stats.SeqConflicts++ // a new key with a sequence number already delivered: a sender bug
		return
	}
	switch {
	case seq < a.max:
		s.stats.Reorders++
	case seq > a.max+1:
		s.stats.GapsOpened++
	}
	a.max = max(a.max, seq)
	a.above[seq] = struct{}{}
	for {
		if _, ok := a.above[a.contig+1]; !ok {
			break
		}
		delete(a.above, a.contig+1)
		a.contig++
	}
}

// remember adds a key to the dedup set, forgetting the oldest beyond dedupKeysMax.
func (s *Sim) remember(key string) {
	s.seen[key] = struct{}{}
	if len(s.seenFIFO) < dedupKeysMax {
		s.seenFIFO = append(s.seenFIFO, key)
		return
	}
	delete(s.seen, s.seenFIFO[s.seenHead])
	s.seenFIFO[s.seenHead] = key
	s.seenHead = (s.seenHead + 1) % dedupKeysMax
}

func (s *Sim) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Sim) control(mode string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		_ = s.SetMode(mode) // mode is one of the three constants
		writeJSON(w, http.StatusOK, map[string]any{"mode": mode, "open": s.IsOpen()})
	}
}

func (s *Sim) refuse(w http.ResponseWriter, r *http.Request) {
	var ref Refusal
	if !readControl(w, r, &ref) {
		return
	}
	if err := s.Refuse(ref); err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "bad_refusal", Title: "bad refusal", Detail: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ref)
}

func (s *Sim) allow(w http.ResponseWriter, r *http.Request) {
	var ref Refusal
	if !readControl(w, r, &ref) {
		return
	}
	s.Allow(ref)
	writeJSON(w, http.StatusOK, ref)
}

func readControl(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, controlBytesMax)).Decode(v); err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "bad_json", Title: "bad JSON", Detail: err.Error()})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
