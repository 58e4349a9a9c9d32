package dispatch

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// How a KafkaSource turns a record that is not a CloudEvent into one (Knative's
// InvalidCloudEventInterceptor, compatible with eventing-kafka).
const (
	// KafkaEventType is the type of such an event.
	KafkaEventType     = "dev.knative.kafka.event"
	keyExtension       = "key"
	partitionKeyExt    = "partitionkey"
	kafkaHeaderExtPfx  = "kafkaheader"
	contentTypeHeader  = "content-type"
	structuredJSONType = "application/cloudevents+json"
)

// toEvent reads the CloudEvent in m (binary or structured mode) and adds Knative's Kafka metadata and
// the consumer's overrides. A record that is not a CloudEvent is wrapped when the consumer is a
// KafkaSource; ok is false when it must be discarded instead.
func (c *consumer) toEvent(m kafka.Message) (e event.Event, ok bool) {
	e, err := cekafka.FromMessage(m)
	if err != nil {
		if c.spec.InvalidSource == "" {
			c.log.Warnw("record discarded: not a cloudevent", "topic", m.Topic, "partition", m.Partition,
				"offset", m.Offset, "error", err)
			return event.Event{}, false
		}
		e = wrapRecord(m, c.spec.InvalidSource)
	}
	e.SetExtension(ExtKafkaPartition, strconv.Itoa(m.Partition))
	e.SetExtension(ExtKafkaOffset, strconv.FormatInt(m.Offset, 10))
	for name, v := range c.spec.Extensions {
		e.SetExtension(name, v)
	}
	return e, true
}

// wrapRecord builds the CloudEvent a KafkaSource makes of a plain record: id and subject from the
// partition and offset, the record time, the key as partitionkey and key, every header (but
// content-type, which becomes the data content type) as a kafkaheader<name> extension, the value as
// data.
func wrapRecord(m kafka.Message, source string) event.Event {
	e := event.New()
	e.SetID(fmt.Sprintf("partition:%d/offset:%d", m.Partition, m.Offset))
	e.SetType(KafkaEventType)
	e.SetSource(source)
	e.SetSubject(fmt.Sprintf("partition:%d#%d", m.Partition, m.Offset))
	if !m.Time.IsZero() {
		e.SetTime(m.Time.UTC())
	}
	if m.Key != nil {
		e.SetExtension(partitionKeyExt, string(m.Key))
		e.SetExtension(keyExtension, string(m.Key))
	}
	for _, h := range m.Headers {
		if strings.EqualFold(h.Key, contentTypeHeader) {
			e.SetDataContentType(strings.ToLower(string(h.Value)))
			continue
		}
		e.SetExtension(kafkaHeaderExtPfx+extensionSafe(h.Key), string(h.Value))
	}
	if m.Value != nil {
		e.DataEncoded = append([]byte(nil), m.Value...)
	}
	return e
}

// extensionSafe lower-cases name and keeps only the characters CloudEvents allows in attribute names.
func extensionSafe(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}
