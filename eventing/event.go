package eventing

import (
	"encoding/json"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// NewEvent wraps a validated payload in a CloudEvent of the given catalogue type. The id must be
// deterministic wherever a retry could otherwise mint a new one; the partition key comes from the
// payload.
func NewEvent(eventType, id string, payload Payload) (cloudevents.Event, error) {
	spec, err := Lookup(eventType)
	if err != nil {
		return cloudevents.Event{}, err
	}
	return newEvent(spec, spec.Source, id, payload)
}

// NewEventFrom is NewEvent with a producer other than the type's default source (e.g. the ratekeeper
// producing order commands).
func NewEventFrom(eventType, source, id string, payload Payload) (cloudevents.Event, error) {
	spec, err := Lookup(eventType)
	if err != nil {
		return cloudevents.Event{}, err
	}
	return newEvent(spec, source, id, payload)
}

func newEvent(spec Spec, source, id string, payload Payload) (cloudevents.Event, error) {
	if id == "" {
		return cloudevents.Event{}, fmt.Errorf("new %s event: empty id", spec.Type)
	}
	if err := payload.Validate(); err != nil {
		return cloudevents.Event{}, fmt.Errorf("new %s event %s: %w", spec.Type, id, err)
	}
	data, err := json.Marshal(payload)
	if err != nil {
		return cloudevents.Event{}, fmt.Errorf("encode %s payload: %w", spec.Type, err)
	}
	return eventOf(spec, source, id, payload.PartitionKey(), data, time.Now().UTC())
}

// EventFromData is the event NewEvent makes, at time at, of a payload whose JSON was validated and
// stored earlier (an outbox row), without decoding and encoding it again.
func EventFromData(eventType, id, partitionKey string, data []byte, at time.Time) (cloudevents.Event, error) {
	spec, err := Lookup(eventType)
	if err != nil {
		return cloudevents.Event{}, err
	}
	if id == "" {
		return cloudevents.Event{}, fmt.Errorf("new %s event: empty id", spec.Type)
	}
	return eventOf(spec, spec.Source, id, partitionKey, data, at)
}

func eventOf(spec Spec, source, id, partitionKey string, data []byte, at time.Time) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(spec.Type)
	e.SetSource(source)
	e.SetTime(at)
	e.SetDataSchema(spec.DataSchema)
	e.SetExtension(ExtensionPartitionKey, partitionKey)
	if err := e.SetData(ContentTypeJSON, data); err != nil {
		return cloudevents.Event{}, fmt.Errorf("set %s data: %w", spec.Type, err)
	}
	return e, nil
}

// Decode checks that e is of the catalogue type of T and decodes and validates its payload. Every
// error it returns wraps ErrInvalid or ErrUnknownType: such an event can never be processed.
func Decode[T any, P interface {
	*T
	Payload
}](e cloudevents.Event, eventType string) (*T, error) {
	if e.Type() != eventType {
		return nil, fmt.Errorf("%w: want %s, got %q", ErrUnknownType, eventType, e.Type())
	}
	var v T
	if err := json.Unmarshal(e.Data(), &v); err != nil {
		return nil, invalidf("decode %s %s: %v", eventType, e.ID(), err)
	}
	if err := P(&v).Validate(); err != nil {
		return nil, err
	}
	return &v, nil
}

// PartitionKey returns the event's partitionkey extension, or "" when it has none.
func PartitionKey(e cloudevents.Event) string {
	v, ok := e.Extensions()[ExtensionPartitionKey]
	if !ok {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Sprint(v)
	}
	return s
}
