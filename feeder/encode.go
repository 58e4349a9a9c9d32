package feeder

import (
	"bytes"
	"math"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Binary-mode CloudEvent record headers, as cekafka writes them.
const (
	ceHeaderSpecVersion  = "ce_specversion"
	ceHeaderID           = "ce_id"
	ceHeaderSource       = "ce_source"
	ceHeaderType         = "ce_type"
	ceHeaderTime         = "ce_time"
	ceHeaderDataSchema   = "ce_dataschema"
	ceHeaderContentType  = "content-type"
	ceHeaderPartitionKey = "ce_" + eventing.ExtensionPartitionKey
	// rateValueBytesMax is room for a rate's JSON payload, event id, time and key, so they are
	// written without growing.
	rateValueBytesMax = 768
	// decimalFracDigitsMax bounds the exponents appendDecimalString writes itself.
	decimalFracDigitsMax = 18
)

// rateEncoder renders rates as binary-mode kawase.rate.v1 CloudEvent records: byte for byte what
// eventing.NewEvent and cekafka.ToMessage make of them (a test holds it to that), without their
// reflection and intermediate event, which cost the feeder a quarter of its CPU. A rate with a string
// JSON would escape other than for HTML (quotes, backslashes, control or non-ASCII characters), or a
// time other than UTC, takes the general path.
type rateEncoder struct {
	specVersion, source, typ, dataSchema, contentType []byte
}

func newRateEncoder() (*rateEncoder, error) {
	spec, err := eventing.Lookup(eventing.TypeRate)
	if err != nil {
		return nil, err
	}
	e := cloudevents.NewEvent()
	e.SetSource(spec.Source)
	e.SetType(spec.Type)
	e.SetDataSchema(spec.DataSchema)
	return &rateEncoder{specVersion: []byte(e.SpecVersion()), source: []byte(e.Source()), typ: []byte(e.Type()),
		dataSchema: []byte(e.DataSchema()), contentType: []byte(eventing.ContentTypeJSON)}, nil
}

// encode renders a validated rate, made at now.
func (enc *rateEncoder) encode(r *eventing.RateV1, now time.Time) (kafka.Message, error) {
	if !plainJSON(string(r.Pair)) || !plainJSON(r.QuoteID) || !plainJSON(r.Session) || !jsonTime(r.ProviderTime) ||
		!jsonTime(r.ReceivedAt) {
		return encodeRate(r)
	}
	// One allocation holds the payload, then the id and time headers and the key.
	v := make([]byte, 0, rateValueBytesMax)
	v = appendString(append(v, `{"pair":`...), string(r.Pair))
	v = appendDecimal(append(v, `,"bid":`...), r.Bid)
	v = appendDecimal(append(v, `,"ask":`...), r.Ask)
	v = appendDecimal(append(v, `,"bidSize":`...), r.BidSize)
	v = appendDecimal(append(v, `,"askSize":`...), r.AskSize)
	v = appendTime(append(v, `,"providerTime":`...), r.ProviderTime)
	v = appendString(append(v, `,"quoteId":`...), r.QuoteID)
	v = appendString(append(v, `,"session":`...), r.Session)
	v = strconv.AppendInt(append(v, `,"msgSeqNum":`...), int64(r.MsgSeqNum), 10)
	v = strconv.AppendInt(append(v, `,"epoch":`...), r.Epoch, 10)
	v = strconv.AppendInt(append(v, `,"seq":`...), r.Seq, 10)
	v = appendTime(append(v, `,"receivedAt":`...), r.ReceivedAt)
	v = append(v, '}')
	valueEnd := len(v)
	v = r.AppendEventID(v)
	idEnd := len(v)
	v = now.UTC().AppendFormat(v, time.RFC3339Nano)
	atEnd := len(v)
	v = append(v, r.Pair...)
	value, id, at, key := v[:valueEnd:valueEnd], v[valueEnd:idEnd:idEnd], v[idEnd:atEnd:atEnd], v[atEnd:]

	return kafka.Message{Key: key, Value: value, Headers: []kafka.Header{
		{Key: ceHeaderSpecVersion, Value: enc.specVersion},
		{Key: ceHeaderID, Value: id},
		{Key: ceHeaderSource, Value: enc.source},
		{Key: ceHeaderType, Value: enc.typ},
		{Key: ceHeaderTime, Value: at},
		{Key: ceHeaderDataSchema, Value: enc.dataSchema},
		{Key: ceHeaderContentType, Value: enc.contentType},
		{Key: ceHeaderPartitionKey, Value: key},
	}}, nil
}

// plainJSON reports whether s is printable ASCII without quotes or backslashes: appendString writes
// it as encoding/json does.
func plainJSON(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// appendString writes a plainJSON string as encoding/json does, which escapes <, > and & for HTML.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := range len(s) {
		switch c := s[i]; c {
		case '<':
			b = append(b, `\u003c`...)
		case '>':
			b = append(b, `\u003e`...)
		case '&':
			b = append(b, `\u0026`...)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// jsonTime reports whether encoding/json writes t as its RFC 3339 form with nanoseconds: a UTC time
// of a four-digit year.
func jsonTime(t time.Time) bool {
	_, offset := t.Zone()
	return t.Year() >= 0 && t.Year() <= 9999 && offset == 0
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendDecimal writes d as decimal.Decimal's MarshalJSON does.
func appendDecimal(b []byte, d decimal.Decimal) []byte {
	if decimal.MarshalJSONWithoutQuotes {
		return appendDecimalString(b, d)
	}
	b = append(b, '"')
	b = appendDecimalString(b, d)
	return append(b, '"')
}

// appendDecimalString writes d as decimal.Decimal's String does (no exponent, no trailing zeros after
// the point), from its coefficient when that fits an int64 and the exponent is small.
func appendDecimalString(b []byte, d decimal.Decimal) []byte {
	c, exp := d.Coefficient(), int(d.Exponent())
	if !c.IsInt64() || exp > 0 || exp < -decimalFracDigitsMax {
		return append(b, d.String()...)
	}
	n := c.Int64()
	if n < 0 {
		if n == math.MinInt64 {
			return append(b, d.String()...)
		}
		b = append(b, '-')
		n = -n
	}
	var buf [20]byte
	digits := strconv.AppendInt(buf[:0], n, 10)
	frac := -exp
	intPart, zeros, fracPart := digits, 0, digits[:0]
	if frac > 0 {
		if len(digits) > frac {
			intPart, fracPart = digits[:len(digits)-frac], digits[len(digits)-frac:]
		} else {
			intPart, zeros, fracPart = []byte{'0'}, frac-len(digits), digits
		}
	}
	fracPart = bytes.TrimRight(fracPart, "0")
	b = append(b, intPart...)
	if len(fracPart) == 0 {
		return b
	}
	b = append(b, '.')
	for range zeros {
		b = append(b, '0')
	}
	return append(b, fracPart...)
}

// encodeRate renders a validated rate as a binary-mode CloudEvent record keyed by pair, the general
// way.
func encodeRate(r *eventing.RateV1) (kafka.Message, error) {
	e, err := eventing.NewEvent(eventing.TypeRate, r.EventID(), r)
	if err != nil {
		return kafka.Message{}, err
	}
	return cekafka.ToMessage(e)
}
