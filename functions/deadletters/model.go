package deadletters

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Categories of a dead letter: why its destination did not take it.
const (
	// CategoryParked: the destination was unavailable (no answer, 5xx, 404, 408, 409, 429) — the
	// event may well succeed later, and the redrive replays it once the destination answers again.
	CategoryParked = "parked"
	// CategoryRejected: the destination refused the event (any other 4xx); a person must look at it,
	// fix the cause and replay it, or discard it.
	CategoryRejected = "rejected"
)

// Statuses of a dead letter.
const (
	StatusOpen      = "open"
	StatusReplayed  = "replayed"
	StatusDiscarded = "discarded"
	// statusAll is the list filter that matches every status.
	statusAll = "all"
)

// Knative's extensions on a dead-lettered event.
const (
	extErrorDest      = "knativeerrordest"
	extErrorCode      = "knativeerrorcode"
	extErrorData      = "knativeerrordata"
	extKafkaPartition = "knativekafkapartition"
	extKafkaOffset    = "knativekafkaoffset"
	extPartitionKey   = "partitionkey"
)

// categorize says what a destination's answer (0: none) means for a dead letter, by the same rules
// Knative's Kafka dispatcher retries on.
func categorize(status int) string {
	if status >= 400 && status < 500 && !retryableStatus(status) {
		return CategoryRejected
	}
	return CategoryParked
}

func retryableStatus(status int) bool {
	switch status {
	case http.StatusNotFound, http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests:
		return true
	}
	return status >= 500 || status == 0
}

// DeadLetter is one stored dead letter as the REST API shows it.
type DeadLetter struct {
	ID           int64  `json:"id"`
	EventID      string `json:"eventId"`
	EventSource  string `json:"eventSource"`
	EventType    string `json:"eventType"`
	PartitionKey string `json:"partitionKey,omitempty"`
	Category     string `json:"category"`
	Status       string `json:"status"`
	// ErrorCode, ErrorData and ErrorDest are Knative's knativeerrorcode, knativeerrordata (decoded;
	// ErrorDataBase64 instead when it is not text) and knativeerrordest.
	ErrorCode       *int   `json:"errorCode,omitempty"`
	ErrorData       string `json:"errorData,omitempty"`
	ErrorDataBase64 string `json:"errorDataBase64,omitempty"`
	ErrorDest       string `json:"errorDest"`
	// KafkaPartition and KafkaOffset locate the original record (first time it was dead-lettered).
	KafkaPartition  *int32     `json:"kafkaPartition,omitempty"`
	KafkaOffset     *int64     `json:"kafkaOffset,omitempty"`
	FirstFailedAt   time.Time  `json:"firstFailedAt"`
	LastFailedAt    time.Time  `json:"lastFailedAt"`
	FailureCount    int        `json:"failureCount"`
	ReplayCount     int        `json:"replayCount"`
	LastReplayAt    *time.Time `json:"lastReplayAt,omitempty"`
	LastReplayCode  *int       `json:"lastReplayCode,omitempty"`
	LastReplayError string     `json:"lastReplayError,omitempty"`
	ReplayedAt      *time.Time `json:"replayedAt,omitempty"`
	ReplayedBy      string     `json:"replayedBy,omitempty"`
	DiscardedAt     *time.Time `json:"discardedAt,omitempty"`
	DiscardedBy     string     `json:"discardedBy,omitempty"`
	DiscardReason   string     `json:"discardReason,omitempty"`
	// Event is the original event; only GET /v1/deadletters/{id} includes it.
	Event *StoredEvent `json:"event,omitempty"`
	// History lists what people did to the letter; only GET /v1/deadletters/{id} includes it.
	History []Action `json:"history,omitempty"`
}

// StoredEvent is the original event: its attributes and its data (as JSON when it is JSON, else
// base64).
type StoredEvent struct {
	Attributes map[string]string `json:"attributes"`
	Data       json.RawMessage   `json:"data,omitempty"`
	DataBase64 string            `json:"dataBase64,omitempty"`
}

// Action is one thing a person did to a dead letter.
type Action struct {
	Action  string    `json:"action"`
	Actor   string    `json:"actor"`
	Reason  string    `json:"reason,omitempty"`
	Outcome string    `json:"outcome,omitempty"`
	At      time.Time `json:"at"`
}

// letter is a dead letter as the store and the replayer handle it.
type letter struct {
	id           int64
	eventID      string
	partitionKey string
	dest         string
	attributes   map[string]string
	data         []byte
}

// setErrorData puts the decoded knativeerrordata on d, as text when it is text.
func (d *DeadLetter) setErrorData(b []byte) {
	if len(b) == 0 {
		return
	}
	if utf8.Valid(b) {
		d.ErrorData = string(b)
		return
	}
	d.ErrorDataBase64 = base64.StdEncoding.EncodeToString(b)
}

func storedEvent(attrs map[string]string, data []byte) *StoredEvent {
	se := &StoredEvent{Attributes: attrs}
	if len(data) == 0 {
		return se
	}
	ct := attrs["datacontenttype"]
	if (ct == "" || strings.Contains(ct, "json")) && json.Valid(data) {
		se.Data = json.RawMessage(data)
	} else {
		se.DataBase64 = base64.StdEncoding.EncodeToString(data)
	}
	return se
}

// event rebuilds the original CloudEvent (same id, source, type and extensions) for a replay; an
// attribute the SDK does not take shows up when the event is validated before sending.
func (l *letter) event() (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	for k, v := range l.attributes {
		var err error
		switch k {
		case "specversion":
			e.SetSpecVersion(v)
		case "id":
			e.SetID(v)
		case "source":
			e.SetSource(v)
		case "type":
			e.SetType(v)
		case "subject":
			e.SetSubject(v)
		case "datacontenttype":
			e.SetDataContentType(v)
		case "dataschema":
			e.SetDataSchema(v)
		case "time":
			var t time.Time
			if t, err = time.Parse(time.RFC3339Nano, v); err == nil {
				e.SetTime(t)
			}
		default:
			e.SetExtension(k, v)
		}
		if err != nil {
			return e, err
		}
	}
	if l.data != nil {
		e.DataEncoded = l.data
	}
	return e, nil
}
