package deadletters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"unicode"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Limits of replaying.
const (
	// replayTimeoutMs bounds one replay, as the Subscriptions' delivery timeout bounds an attempt.
	replayTimeoutMs = 10_000
	// replayWorkersMax bounds the replays in flight at once (per destination being drained); the
	// letters of one partition key go through one worker, in order.
	replayWorkersMax = 16
	// replayUnavailableMax is how many "unavailable" answers in a row stop a drain: a destination
	// that fails now and then (a random 5xx) must not stop the redrive, one that is down must.
	replayUnavailableMax = 5
	// replayAnswerBytesMax bounds the destination's answer kept as the replay's error.
	replayAnswerBytesMax = 512
	// replayDrainBytesMax is read and dropped from an answer so its connection can be reused.
	replayDrainBytesMax = 64 << 10
)

// Errors of a replay.
var (
	// errUnavailable: the destination did not take the event but may later (no answer, 5xx, 404,
	// 408, 409, 429).
	errUnavailable = errors.New("destination unavailable")
	// errRefused: the destination refused the event (another 4xx).
	errRefused = errors.New("destination refused the event")
	// errNoDestination: the letter has no usable knativeerrordest to replay to.
	errNoDestination = errors.New("dead letter has no usable destination")
)

// failure is one replay that did not succeed; status is the destination's answer, 0 for none.
type failure struct {
	id     int64
	status int
	err    error
}

// category is what the failure makes of the letter: parked while the destination is unavailable,
// rejected when it refused the event or the event cannot be sent at all.
func (f failure) category() string {
	if errors.Is(f.err, errUnavailable) {
		return CategoryParked
	}
	return CategoryRejected
}

func checkDestination(dest string) error {
	u, err := url.Parse(dest)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: %q", errNoDestination, dest)
	}
	return nil
}

// send re-sends the original event (same id, attributes and data) to its destination in binary
// mode, as the dispatcher first sent it. It returns the destination's status (0: no answer).
func (s *Service) send(ctx context.Context, l letter) (int, error) {
	if err := checkDestination(l.dest); err != nil {
		return 0, err
	}
	e, err := l.event()
	if err != nil {
		return 0, fmt.Errorf("%w: rebuild event %s: %v", errRefused, l.eventID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.replayTimeout)
	defer cancel()
	req, err := cehttp.NewHTTPRequestFromEvent(ctx, l.dest, e)
	if err != nil {
		return 0, fmt.Errorf("%w: encode event %s: %v", errRefused, l.eventID, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errUnavailable, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, replayAnswerBytesMax))
	_, _ = io.CopyN(io.Discard, resp.Body, replayDrainBytesMax)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return resp.StatusCode, nil
	case categorize(resp.StatusCode) == CategoryRejected:
		return resp.StatusCode, fmt.Errorf("%w: HTTP %d: %s", errRefused, resp.StatusCode, printable(answer))
	}
	return resp.StatusCode, fmt.Errorf("%w: HTTP %d: %s", errUnavailable, resp.StatusCode, printable(answer))
}

// drain replays letters, all for one destination and oldest first. Letters with the same partition
// key go through one worker in order, so an account's events reach the destination in their
// original order; different keys go in parallel. When a letter finds the destination unavailable,
// the rest of its key waits for a later pass (its key is added to held, which a caller shares across
// the batches of one pass); after replayUnavailableMax such answers in a row, or when nothing got
// through, the destination counts as unavailable: nothing more is sent (sends in flight finish) and
// unavailable is true. A refusal (rejected) does not hold its key up: that event can never succeed,
// as the live delivery path dead-letters it and moves on.
func (s *Service) drain(ctx context.Context, letters []letter, held *keySet) (ok []int64, failed []failure, unavailable bool) {
	groups := groupByKey(letters)
	work := make(chan []letter, len(groups))
	for _, g := range groups {
		work <- g
	}
	close(work)
	var (
		mu     sync.Mutex
		inARow int
		stop   bool
		downs  int
		wg     sync.WaitGroup
	)
	stopped := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return stop || ctx.Err() != nil
	}
	for range min(replayWorkersMax, len(groups)) {
		wg.Go(func() {
			for g := range work {
				for _, l := range g {
					if stopped() || held.has(l.partitionKey) {
						break
					}
					status, err := s.send(ctx, l)
					mu.Lock()
					switch {
					case err == nil:
						ok = append(ok, l.id)
						inARow = 0
					case errors.Is(err, errUnavailable):
						failed = append(failed, failure{id: l.id, status: status, err: err})
						held.add(l.partitionKey)
						downs++
						inARow++
						stop = stop || inARow >= replayUnavailableMax
					default:
						failed = append(failed, failure{id: l.id, status: status, err: err})
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return ok, failed, stop || (len(ok) == 0 && downs > 0)
}

// keySet is a set of partition keys safe for concurrent use; the nil set holds nothing back.
type keySet struct {
	mu   sync.Mutex
	keys map[string]bool
}

func newKeySet() *keySet { return &keySet{keys: map[string]bool{}} }

func (k *keySet) add(key string) {
	if k == nil || key == "" {
		return
	}
	k.mu.Lock()
	k.keys[key] = true
	k.mu.Unlock()
}

func (k *keySet) has(key string) bool {
	if k == nil || key == "" {
		return false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys[key]
}

// groupByKey splits letters into per-partition-key lists, keeping their order; letters without a
// key are independent of each other.
func groupByKey(letters []letter) [][]letter {
	index := map[string]int{}
	var groups [][]letter
	for _, l := range letters {
		if l.partitionKey == "" {
			groups = append(groups, []letter{l})
			continue
		}
		i, seen := index[l.partitionKey]
		if !seen {
			i = len(groups)
			index[l.partitionKey] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], l)
	}
	return groups
}

// record stores the outcome of a drain: successes in one statement, each failure with its error.
// trigger (manual, filter or redrive) labels the metrics; by is who is recorded as replaying.
func (s *Service) record(ctx context.Context, trigger, by string, ok []int64, failed []failure) error {
	errs := []error{s.store.markReplayed(ctx, ok, by)}
	for _, f := range failed {
		errs = append(errs, s.store.markFailed(ctx, f))
	}
	s.replays.WithLabelValues(trigger, StatusReplayed).Add(float64(len(ok)))
	for _, f := range failed {
		s.replays.WithLabelValues(trigger, f.category()).Inc()
	}
	return errors.Join(errs...)
}

// replayByDest replays letters grouped by destination, each destination drained on its own.
func (s *Service) replayByDest(ctx context.Context, letters []letter, trigger, by string) (ok []int64, failed []failure, err error) {
	order := []string{}
	byDest := map[string][]letter{}
	for _, l := range letters {
		if _, seen := byDest[l.dest]; !seen {
			order = append(order, l.dest)
		}
		byDest[l.dest] = append(byDest[l.dest], l)
	}
	for _, dest := range order {
		o, f, _ := s.drain(ctx, byDest[dest], newKeySet())
		ok, failed = append(ok, o...), append(failed, f...)
	}
	return ok, failed, s.record(ctx, trigger, by, ok, failed)
}

// printable makes an answer safe to keep as text: control characters become spaces.
func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(string(b)))
}
