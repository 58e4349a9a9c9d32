// Package cekafka binds CloudEvents (cloudevents/sdk-go/v2) to Kafka records (segmentio/kafka-go) per
// the CloudEvents Kafka protocol binding. We write binary mode only — attributes in ce_* headers, the
// data as the record value, the partitionkey extension as the record key — because that is what
// Knative's Kafka components pass through unchanged; we read both binary and structured mode.
package cekafka

import (
	"errors"
	"fmt"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/segmentio/kafka-go"
)

// Header names of the binding.
const (
	headerPrefix      = "ce_"
	headerContentType = "content-type"
	// structuredPrefix starts the content type of a structured-mode record.
	structuredPrefix = "application/cloudevents"
	partitionKeyExt  = "partitionkey"
)

// ErrNotCloudEvent marks a record that is neither a binary- nor a structured-mode CloudEvent.
var ErrNotCloudEvent = errors.New("record is not a cloudevent")

// ToMessage renders e as a binary-mode Kafka record. The record key is the partitionkey extension
// (no key when it is absent).
func ToMessage(e cloudevents.Event) (kafka.Message, error) {
	if err := e.Validate(); err != nil {
		return kafka.Message{}, fmt.Errorf("encode cloudevent: %w", err)
	}
	headers := make([]kafka.Header, 0, 8+len(e.Extensions()))
	add := func(name, value string) {
		headers = append(headers, kafka.Header{Key: name, Value: []byte(value)})
	}
	add(headerPrefix+"specversion", e.SpecVersion())
	add(headerPrefix+"id", e.ID())
	add(headerPrefix+"source", e.Source())
	add(headerPrefix+"type", e.Type())
	if !e.Time().IsZero() {
		add(headerPrefix+"time", types.FormatTime(e.Time()))
	}
	if s := e.Subject(); s != "" {
		add(headerPrefix+"subject", s)
	}
	if s := e.DataSchema(); s != "" {
		add(headerPrefix+"dataschema", s)
	}
	if ct := e.DataContentType(); ct != "" {
		add(headerContentType, ct)
	}
	var key []byte
	for name, v := range e.Extensions() {
		s, err := types.Format(v)
		if err != nil {
			return kafka.Message{}, fmt.Errorf("encode extension %s: %w", name, err)
		}
		add(headerPrefix+name, s)
		if name == partitionKeyExt {
			key = []byte(s)
		}
	}
	return kafka.Message{Key: key, Value: e.Data(), Headers: headers}, nil
}

// FromMessage reads a record written in binary or structured mode back into a CloudEvent and
// validates it. Errors wrap ErrNotCloudEvent when the record carries no CloudEvent at all.
func FromMessage(m kafka.Message) (cloudevents.Event, error) {
	ct := header(m.Headers, headerContentType)
	if strings.HasPrefix(strings.ToLower(ct), structuredPrefix) {
		return fromStructured(m)
	}
	if header(m.Headers, headerPrefix+"specversion") == "" {
		return cloudevents.Event{}, fmt.Errorf("%w: no ce_specversion header and content type %q", ErrNotCloudEvent, ct)
	}
	return fromBinary(m, ct)
}

func fromStructured(m kafka.Message) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	if err := e.UnmarshalJSON(m.Value); err != nil {
		return cloudevents.Event{}, fmt.Errorf("decode structured cloudevent: %w", err)
	}
	if err := e.Validate(); err != nil {
		return cloudevents.Event{}, fmt.Errorf("decode structured cloudevent: %w", err)
	}
	return e, nil
}

func fromBinary(m kafka.Message, contentType string) (cloudevents.Event, error) {
	e := cloudevents.NewEvent(header(m.Headers, headerPrefix+"specversion"))
	for _, h := range m.Headers {
		name, ok := strings.CutPrefix(strings.ToLower(h.Key), headerPrefix)
		if !ok {
			continue
		}
		if err := setAttribute(&e, name, string(h.Value)); err != nil {
			return cloudevents.Event{}, fmt.Errorf("decode binary cloudevent: %w", err)
		}
	}
	if contentType != "" {
		e.SetDataContentType(contentType)
	}
	if m.Value != nil {
		e.DataEncoded = append([]byte(nil), m.Value...)
	}
	if err := e.Validate(); err != nil {
		return cloudevents.Event{}, fmt.Errorf("decode binary cloudevent: %w", err)
	}
	return e, nil
}

func setAttribute(e *event.Event, name, value string) error {
	switch name {
	case "specversion":
		return nil
	case "id":
		e.SetID(value)
	case "source":
		e.SetSource(value)
	case "type":
		e.SetType(value)
	case "subject":
		e.SetSubject(value)
	case "dataschema":
		e.SetDataSchema(value)
	case "time":
		t, err := types.ParseTime(value)
		if err != nil {
			return fmt.Errorf("ce_time %q: %w", value, err)
		}
		e.SetTime(t)
	default:
		if !event.IsExtensionNameValid(name) {
			return fmt.Errorf("extension name %q is not valid", name)
		}
		e.SetExtension(name, value)
	}
	return nil
}

func header(hs []kafka.Header, name string) string {
	for _, h := range hs {
		if strings.EqualFold(h.Key, name) {
			return string(h.Value)
		}
	}
	return ""
}
