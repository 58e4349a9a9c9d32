package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// Where kawase dev mounts the ingress of each KafkaChannel and KafkaSink on its HTTP port (see
// Dispatcher.Mount); a Resolver answers KafkaChannel and KafkaSink references with these paths.
const (
	ChannelPathPrefix = "/_channel/"
	SinkPathPrefix    = "/_sink/"
)

// Limits of an ingress request.
const (
	// ingressBodyBytesMax matches Kafka's default largest record (message.max.bytes, about 1 MiB).
	ingressBodyBytesMax   = 1 << 20
	ingressWriteTimeoutMs = 10_000
)

// ChannelPath is the path of the KafkaChannel name's ingress.
func ChannelPath(name string) string { return ChannelPathPrefix + name }

// SinkPath is the path of the KafkaSink name's endpoint.
func SinkPath(name string) string { return SinkPathPrefix + name }

// recordWriter is the part of *kafka.Writer an ingress uses.
type recordWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// ingress is the HTTP endpoint of a KafkaChannel or KafkaSink: it takes one CloudEvent, binary or
// structured, writes it to the topic keyed by its partitionkey, and answers as Knative's receiver
// does: 202 once the broker has the record, 400 for a request that is not a CloudEvent, 503 when
// Kafka cannot take it (so the sender retries).
type ingress struct {
	endpoint string
	topic    string
	mode     ContentMode
	writer   recordWriter
	m        *metrics
}

func (in *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status := in.serve(w, r)
	in.m.ingress.WithLabelValues(in.endpoint, strconv.Itoa(status)).Inc()
}

// serve handles one request and returns the status it answered.
func (in *ingress) serve(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return problem(w, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed",
			"send events with POST")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, ingressBodyBytesMax))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return problem(w, http.StatusRequestEntityTooLarge, "body_too_large", "event too large",
			fmt.Sprintf("an event may have at most %d bytes", ingressBodyBytesMax))
	}
	if err != nil {
		return problem(w, http.StatusBadRequest, "unreadable_body", "unreadable body", err.Error())
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err == nil {
		err = e.Validate()
	}
	if err != nil {
		return problem(w, http.StatusBadRequest, "invalid_cloudevent", "not a cloudevent",
			"send one CloudEvent in binary or structured mode: "+err.Error())
	}
	msg, err := in.record(*e)
	if err != nil {
		return problem(w, http.StatusBadRequest, "invalid_cloudevent", "event cannot be encoded", err.Error())
	}
	ctx, cancel := context.WithTimeout(r.Context(), ingressWriteTimeoutMs*time.Millisecond)
	defer cancel()
	if err := in.writer.WriteMessages(ctx, msg); err != nil {
		return problem(w, http.StatusServiceUnavailable, "kafka_unavailable", "event not stored",
			fmt.Sprintf("writing to topic %s failed: %v", in.topic, err))
	}
	w.WriteHeader(http.StatusAccepted)
	return http.StatusAccepted
}

// record encodes e for the topic in the endpoint's content mode.
func (in *ingress) record(e event.Event) (kafka.Message, error) {
	if in.mode == ContentStructured {
		return structuredRecord(e)
	}
	return cekafka.ToMessage(e)
}

// structuredRecord puts e, as JSON, in the record value, keyed by its partitionkey.
func structuredRecord(e event.Event) (kafka.Message, error) {
	value, err := e.MarshalJSON()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encode structured cloudevent: %w", err)
	}
	var key []byte
	if v, ok := e.Extensions()[partitionKeyExt]; ok {
		s, err := types.Format(v)
		if err != nil {
			return kafka.Message{}, fmt.Errorf("encode extension %s: %w", partitionKeyExt, err)
		}
		key = []byte(s)
	}
	return kafka.Message{Key: key, Value: value,
		Headers: []kafka.Header{{Key: contentTypeHeader, Value: []byte(structuredJSONType)}}}, nil
}

// problem answers with problem+json and returns the status.
func problem(w http.ResponseWriter, status int, code, title, detail string) int {
	observe.WriteProblem(w, observe.Problem{Status: status, Code: code, Title: title, Detail: detail})
	return status
}
