package dispatch

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Extensions the dispatcher adds, named as Knative's Kafka data plane names them.
const (
	// ExtKafkaPartition and ExtKafkaOffset locate the record an event was read from.
	ExtKafkaPartition = "knativekafkapartition"
	ExtKafkaOffset    = "knativekafkaoffset"
	// ExtErrorDest is the subscriber URL a dead-lettered event failed at.
	ExtErrorDest = "knativeerrordest"
	// ExtErrorCode is the last HTTP status the subscriber answered (absent when it never answered).
	ExtErrorCode = "knativeerrorcode"
	// ExtErrorData is the base64 of the first errorDataBytesMax bytes of the subscriber's last answer.
	ExtErrorData = "knativeerrordata"
	// errorHeaderPrefix marks response headers copied onto a dead-lettered event as extensions
	// ("Kne-Reason: x" becomes extension "reason"), as Knative does.
	errorHeaderPrefix = "kne-"
)

// Limits of one HTTP exchange with a subscriber or dead-letter sink.
const (
	errorDataBytesMax     = 1024
	responseDrainBytesMax = 64 << 10
	dialTimeoutMs         = 5_000
	idleConnsPerHostMax   = 64
	idleConnTimeoutMs     = 90_000
)

// response is the result of one attempt: the status (0 when there was no answer: connection error,
// timeout), the start of the body, the headers, and the transport error if any.
type response struct {
	status int
	body   []byte
	header http.Header
	err    error
}

// sender posts CloudEvents in binary mode, as Knative's dispatcher does.
type sender struct {
	client *http.Client
}

// newSender returns a sender whose client never follows redirects: Knative treats a 3xx as a failure.
func newSender() *sender {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: dialTimeoutMs * time.Millisecond}).DialContext,
		MaxIdleConnsPerHost: idleConnsPerHostMax,
		IdleConnTimeout:     idleConnTimeoutMs * time.Millisecond,
	}
	return &sender{client: &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// send makes one attempt bounded by timeout.
func (s *sender) send(ctx context.Context, url string, e *event.Event, timeout time.Duration) response {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return response{err: fmt.Errorf("build request to %s: %w", url, err)}
	}
	if err := cehttp.WriteRequest(binding.WithForceBinary(ctx), binding.ToMessage(e), req); err != nil {
		return response{err: fmt.Errorf("encode event %s for %s: %w", e.ID(), url, err)}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return response{err: fmt.Errorf("post event %s to %s: %w", e.ID(), url, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, errorDataBytesMax))
	if err != nil {
		return response{err: fmt.Errorf("read answer of %s to event %s: %w", url, e.ID(), err)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, responseDrainBytesMax)) // lets the connection be reused
	return response{status: resp.StatusCode, body: body, header: resp.Header}
}

func (s *sender) close() { s.client.CloseIdleConnections() }

// describe says what went wrong with an attempt, for logs.
func (r response) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	return "status " + strconv.Itoa(r.status)
}

// deliver sends e to the subscriber with the consumer's retries and, when they are exhausted or the
// subscriber refuses e for good, to the dead-letter sink. It returns outcomeAbandoned, having
// committed nothing, as soon as ctx ends.
func (c *consumer) deliver(ctx context.Context, e *event.Event) outcome {
	var last response
	for k := 0; k <= c.sched.retry; k++ {
		if k > 0 {
			c.m.retries.WithLabelValues(c.id).Inc()
			if !sleep(ctx, c.sched.backoff(k)) {
				return outcomeAbandoned
			}
		}
		last = c.sender.send(ctx, c.subscriber, e, c.sched.timeout)
		if ctx.Err() != nil {
			return outcomeAbandoned
		}
		if succeeded(last.status) {
			return outcomeDelivered
		}
		c.log.Warnw("delivery attempt failed", "event", e.ID(), "attempt", k+1, "of", c.sched.retry+1,
			"subscriber", c.subscriber, "error", last.describe())
		if !retryable(last.status) {
			break
		}
	}
	return c.deadLetter(ctx, e, last)
}

// deadLetter hands e, with the error extensions describing last, to the dead-letter sink.
//
// Unlike Knative, which commits the offset even when the dead-letter sink cannot be reached, the local
// dispatcher retries an unreachable sink (no answer, or a retryable status) for as long as it runs:
// each attempt is bounded by the delivery's timeout and the waits by deadLetterRetryDelayMaxMs, but
// the number of attempts is deliberately unbounded, so an event is never lost because the dead-letter
// sink is down. Meanwhile the partition waits (ordered) or the offset is not committed (unordered).
// A final refusal (a non-retryable status) is not retried: the event is dropped and counted, as
// Knative does.
func (c *consumer) deadLetter(ctx context.Context, e *event.Event, last response) outcome {
	if c.deadLetterURL == "" {
		c.log.Errorw("event dropped: delivery failed and the consumer has no dead-letter sink",
			"event", e.ID(), "subscriber", c.subscriber, "error", last.describe())
		return outcomeDropped
	}
	dl := e.Clone()
	setErrorExtensions(&dl, c.subscriber, last)
	for k := 1; ; k++ {
		res := c.sender.send(ctx, c.deadLetterURL, &dl, c.sched.timeout)
		if ctx.Err() != nil {
			return outcomeAbandoned
		}
		if succeeded(res.status) {
			c.m.deadLetters.WithLabelValues(c.id, deadLetterAccepted).Inc()
			return outcomeDeadLettered
		}
		if !retryable(res.status) {
			c.m.deadLetters.WithLabelValues(c.id, deadLetterRefused).Inc()
			c.log.Errorw("event dropped: the dead-letter sink refused it", "event", e.ID(),
				"dead_letter_sink", c.deadLetterURL, "error", res.describe())
			return outcomeDropped
		}
		c.m.deadLetters.WithLabelValues(c.id, deadLetterFailed).Inc()
		c.log.Warnw("dead-letter sink unreachable; retrying", "event", e.ID(), "attempt", k,
			"dead_letter_sink", c.deadLetterURL, "error", res.describe())
		if !sleep(ctx, c.sched.deadLetterBackoff(k)) {
			return outcomeAbandoned
		}
	}
}

// setErrorExtensions adds what Knative adds to a dead-lettered event: the subscriber URL, and when the
// subscriber answered, its status, its kne-* headers and the base64 of the start of its body.
func setErrorExtensions(e *event.Event, subscriber string, last response) {
	e.SetExtension(ExtErrorDest, subscriber)
	if last.status == 0 {
		return
	}
	e.SetExtension(ExtErrorCode, strconv.Itoa(last.status))
	for name, values := range last.header {
		ext, ok := strings.CutPrefix(strings.ToLower(name), errorHeaderPrefix)
		if !ok || len(values) == 0 || !event.IsExtensionNameValid(ext) {
			continue
		}
		e.SetExtension(ext, values[0])
	}
	if len(last.body) > 0 {
		e.SetExtension(ExtErrorData, base64.StdEncoding.EncodeToString(last.body[:min(len(last.body), errorDataBytesMax)]))
	}
}

// sleep waits d, or less when ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
