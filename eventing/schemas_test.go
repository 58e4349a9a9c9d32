package eventing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/shopspring/decimal"
)

const (
	schemaDraft   = "https://json-schema.org/draft/2020-12/schema"
	schemaURIBase = "https://kawase.dev/schemas/"
)

// tradingSchemaURIs are the dataschema URIs of the trading function's CloudEvent order requests and
// responses (trading.OrderRequestSchema and trading.OrderResponseSchema). eventing may not import
// functions/trading, not even in tests, so they are spelled out here.
var tradingSchemaURIs = []string{
	schemaURIBase + "order.request.v1.json",
	schemaURIBase + "order.response.v1.json",
}

// schemaKeywords are the JSON Schema keywords the documents may use: checkValue enforces every one of
// them that constrains a value, so a document cannot carry a rule the tests silently skip.
var schemaKeywords = map[string]bool{
	"$schema": true, "$id": true, "title": true, "description": true, "type": true, "properties": true,
	"required": true, "additionalProperties": true, "pattern": true, "enum": true, "format": true,
	"minimum": true, "minLength": true, "maximum": true, "maxLength": true,
}

// loadSchema reads and parses the embedded document a dataschema URI names.
func loadSchema(uri string) (map[string]any, error) {
	if !strings.HasPrefix(uri, schemaURIBase) {
		return nil, fmt.Errorf("dataschema %q is not under %s", uri, schemaURIBase)
	}
	name := "schemas/" + path.Base(uri)
	raw, err := Schemas.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	return doc, nil
}

func mustLoadSchema(t *testing.T, uri string) map[string]any {
	t.Helper()
	doc, err := loadSchema(uri)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// jsonField is one property a struct marshals to.
type jsonField struct {
	name      string
	omitempty bool
	typ       reflect.Type
}

// jsonFields lists the properties encoding/json writes for struct type t, from its json tags.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out = append(out, jsonField{name: name, omitempty: slices.Contains(strings.Split(opts, ","), "omitempty"), typ: f.Type})
	}
	return out
}

var (
	timeType    = reflect.TypeFor[time.Time]()
	decimalType = reflect.TypeFor[decimal.Decimal]()
)

// jsonType is the JSON Schema type a Go type marshals to.
func jsonType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == timeType, t == decimalType: // RFC 3339 strings; decimal.MarshalJSONWithoutQuotes is never set
		return "string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Struct, reflect.Map:
		return "object"
	case reflect.Slice, reflect.Array:
		return "array"
	}
	return "unknown " + t.String()
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func stringList(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// compareStruct checks that the object schema s describes struct type t as encoding/json marshals it:
// the same property names, required exactly when not omitempty, the JSON type of each field, a
// description on each property, and the same for nested structs.
func compareStruct(t *testing.T, where string, typ reflect.Type, s map[string]any) {
	t.Helper()
	props, _ := s["properties"].(map[string]any)
	var names, required []string
	for _, f := range jsonFields(typ) {
		names = append(names, f.name)
		if !f.omitempty {
			required = append(required, f.name)
		}
	}
	sort.Strings(names)
	sort.Strings(required)
	if got := sortedKeys(props); !slices.Equal(got, names) {
		t.Errorf("%s: properties %v, but %s marshals %v", where, got, typ, names)
	}
	gotRequired := stringList(s["required"])
	sort.Strings(gotRequired)
	if !slices.Equal(gotRequired, required) {
		t.Errorf("%s: required %v, but the fields of %s without omitempty are %v", where, gotRequired, typ, required)
	}
	for _, f := range jsonFields(typ) {
		p, ok := props[f.name].(map[string]any)
		if !ok {
			continue
		}
		at := where + "." + f.name
		if d, _ := p["description"].(string); strings.TrimSpace(d) == "" {
			t.Errorf("%s: no description", at)
		}
		if want := jsonType(f.typ); p["type"] != want {
			t.Errorf("%s: type %v, but %s marshals to %s", at, p["type"], f.typ, want)
		}
		if inner := derefType(f.typ); inner.Kind() == reflect.Struct && inner != timeType && inner != decimalType {
			compareStruct(t, at, inner, p)
		}
	}
}

func derefType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// checkKeywords reports keywords outside schemaKeywords anywhere in the document.
func checkKeywords(where string, s map[string]any) []string {
	var errs []string
	for k, v := range s {
		if !schemaKeywords[k] {
			errs = append(errs, fmt.Sprintf("%s: keyword %q is not one the tests enforce", where, k))
		}
		if k == "properties" {
			props, _ := v.(map[string]any)
			for name, p := range props {
				sub, ok := p.(map[string]any)
				if !ok {
					errs = append(errs, fmt.Sprintf("%s.%s: not a schema object", where, name))
					continue
				}
				errs = append(errs, checkKeywords(where+"."+name, sub)...)
			}
		}
	}
	return errs
}

// valueType is the JSON Schema type of a value decoded with UseNumber.
func valueType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if _, err := x.Int64(); err == nil {
			return "integer"
		}
		return "number"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	}
	return fmt.Sprintf("%T", v)
}

// checkValue validates v (decoded with UseNumber) against schema s, for the keywords in
// schemaKeywords, and returns every violation.
func checkValue(where string, s map[string]any, v any) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, where+": "+fmt.Sprintf(format, args...)) }
	if want, ok := s["type"].(string); ok {
		got := valueType(v)
		if got != want && !(want == "number" && got == "integer") {
			fail("%s, want %s", got, want)
			return errs
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return reflect.DeepEqual(e, v) }) {
		fail("%v is not one of %v", v, enum)
	}
	if str, ok := v.(string); ok {
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			fail("%q does not match %s", str, p)
		}
		if n, ok := s["minLength"].(float64); ok && float64(len([]rune(str))) < n {
			fail("%q is shorter than %v", str, n)
		}
		if n, ok := s["maxLength"].(float64); ok && float64(len([]rune(str))) > n {
			fail("%q is longer than %v", str, n)
		}
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				fail("%q is not an RFC 3339 date-time: %v", str, err)
			}
		}
	}
	if n, ok := v.(json.Number); ok {
		if lo, ok := s["minimum"].(float64); ok {
			if f, err := n.Float64(); err != nil || f < lo {
				fail("%s is below the minimum %v", n, lo)
			}
		}
		if hi, ok := s["maximum"].(float64); ok {
			if f, err := n.Float64(); err != nil || f > hi {
				fail("%s is above the maximum %v", n, hi)
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		props, _ := s["properties"].(map[string]any)
		for _, r := range stringList(s["required"]) {
			if _, ok := obj[r]; !ok {
				fail("required property %q missing", r)
			}
		}
		for _, k := range sortedKeys(obj) {
			p, ok := props[k].(map[string]any)
			if !ok {
				if s["additionalProperties"] == false {
					fail("property %q is not allowed", k)
				}
				continue
			}
			errs = append(errs, checkValue(where+"."+k, p, obj[k])...)
		}
	}
	return errs
}

// checkJSON validates a JSON document against schema s.
func checkJSON(s map[string]any, data []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []string{"not JSON: " + err.Error()}
	}
	return checkValue("$", s, v)
}

func TestEveryDataSchemaHasItsDocument(t *testing.T) {
	uris := append([]string{}, tradingSchemaURIs...)
	for _, spec := range Specs() {
		uris = append(uris, spec.DataSchema)
	}
	for _, uri := range uris {
		doc, err := loadSchema(uri)
		if err != nil {
			t.Error(err)
			continue
		}
		if doc["$id"] != uri {
			t.Errorf("%s: $id %v", uri, doc["$id"])
		}
		if doc["$schema"] != schemaDraft {
			t.Errorf("%s: $schema %v, want %s", uri, doc["$schema"], schemaDraft)
		}
		if doc["type"] != "object" {
			t.Errorf("%s: type %v, want object", uri, doc["type"])
		}
		if d, _ := doc["description"].(string); d == "" {
			t.Errorf("%s: no description", uri)
		}
		for _, e := range checkKeywords(path.Base(uri), doc) {
			t.Error(e)
		}
	}

	// And no document is left over that no dataschema names.
	files, err := fs.Glob(Schemas, "schemas/*.json")
	if err != nil {
		t.Fatal(err)
	}
	var named []string
	for _, uri := range uris {
		named = append(named, "schemas/"+path.Base(uri))
	}
	sort.Strings(files)
	sort.Strings(named)
	if !slices.Equal(files, named) {
		t.Errorf("embedded schemas %v, but the dataschema URIs name %v", files, named)
	}
}

func TestSchemasDescribeCataloguePayloads(t *testing.T) {
	for _, spec := range Specs() {
		doc := mustLoadSchema(t, spec.DataSchema)
		typ := derefType(reflect.TypeOf(spec.New()))
		compareStruct(t, path.Base(spec.DataSchema), typ, doc)
	}
}

// TestCatalogueSchemasAllowUnknownProperties: Decode uses json.Unmarshal, which ignores unknown
// properties, so no catalogue schema may claim additionalProperties false.
func TestCatalogueSchemasAllowUnknownProperties(t *testing.T) {
	r := fullRate()
	data, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	data = append([]byte(`{"addedLater":1,`), data[1:]...)
	e := cloudevents.NewEvent()
	e.SetType(TypeRate)
	e.SetID("x")
	if err := e.SetData(ContentTypeJSON, data); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode[RateV1](e, TypeRate); err != nil {
		t.Fatalf("Decode refused an unknown property (%v): the schemas would need additionalProperties false", err)
	}
	for _, spec := range Specs() {
		var walk func(where string, s map[string]any)
		walk = func(where string, s map[string]any) {
			if s["additionalProperties"] == false {
				t.Errorf("%s: additionalProperties false, but Decode accepts unknown properties", where)
			}
			props, _ := s["properties"].(map[string]any)
			for name, p := range props {
				if sub, ok := p.(map[string]any); ok {
					walk(where+"."+name, sub)
				}
			}
		}
		walk(path.Base(spec.DataSchema), mustLoadSchema(t, spec.DataSchema))
	}
}

func TestSchemaEnumsMatchTheCode(t *testing.T) {
	for _, c := range []struct {
		uri  string
		path []string
		want []string
	}{
		{schemaURIBase + "order.command.v1.json", []string{"kind"}, []string{CommandPlace, CommandCancel, CommandTrigger, CommandCloseOut}},
		{schemaURIBase + "order.command.v1.json", []string{"order", "side"}, []string{SideBuy, SideSell}},
		{schemaURIBase + "order.command.v1.json", []string{"order", "type"}, []string{OrderTypeMarket, OrderTypeLimit, OrderTypeStop}},
		{schemaURIBase + "order.command.v1.json", []string{"order", "timeInForce"},
			[]string{TimeInForceFOK, TimeInForceIOC, TimeInForceGTC, TimeInForceGTD}},
		{schemaURIBase + "trade.executed.v1.json", []string{"side"}, []string{SideBuy, SideSell}},
		{schemaURIBase + "order.result.v1.json", []string{"status"},
			[]string{ResultAccepted, ResultFilled, ResultRejected, ResultCancelled}},
		{schemaURIBase + "order.request.v1.json", []string{"order", "side"}, []string{SideBuy, SideSell}},
		{schemaURIBase + "order.request.v1.json", []string{"order", "type"}, []string{OrderTypeMarket, OrderTypeLimit, OrderTypeStop}},
		{schemaURIBase + "order.request.v1.json", []string{"order", "timeInForce"},
			[]string{TimeInForceFOK, TimeInForceIOC, TimeInForceGTC, TimeInForceGTD}},
	} {
		s := mustLoadSchema(t, c.uri)
		for _, p := range c.path {
			props, _ := s["properties"].(map[string]any)
			s, _ = props[p].(map[string]any)
		}
		got := stringList(s["enum"])
		sort.Strings(got)
		want := slices.Clone(c.want)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s %s: enum %v, the code's values are %v", path.Base(c.uri), strings.Join(c.path, "."), got, want)
		}
	}
}

func fullRate() RateV1 {
	return RateV1{Pair: "USD_JPY", Bid: decimal.RequireFromString("151.420"), Ask: decimal.RequireFromString("151.425"),
		BidSize: decimal.NewFromInt(1_000_000), AskSize: decimal.RequireFromString("2500000"),
		ProviderTime: time.Date(2026, 11, 22, 4, 0, 0, 50_000_000, time.UTC), QuoteID: "17",
		Session: "FIX.4.4:KAWASE->PROVIDER", MsgSeqNum: 4211, Epoch: 3, Seq: 9,
		ReceivedAt: time.Date(2026, 11, 22, 4, 0, 0, 51_200_000, time.UTC)}
}

// samplePayloads are realistic payloads of every catalogue type, between them using every optional
// field.
func samplePayloads() map[string][]Payload {
	at := time.Date(2026, 11, 30, 9, 15, 0, 123_456_789, time.UTC)
	goodTill := at.Add(24 * time.Hour)
	limit := decimal.RequireFromString("150.125")
	bound := decimal.RequireFromString("1.08500")
	fill := decimal.RequireFromString("151.425")
	pl := decimal.RequireFromString("-1250")
	r := fullRate()
	return map[string][]Payload{
		TypeRate: {&r},
		TypeOrderCommand: {
			&OrderCommandV1{CommandID: "cmd_7f3a", Kind: CommandPlace, AccountID: "acc_12", OrderID: "o_9c1",
				Order: &OrderSpec{Pair: "USD_JPY", Side: SideBuy, Units: decimal.NewFromInt(10_000), Type: OrderTypeLimit,
					Price: &limit, TimeInForce: TimeInForceGTD, GoodTill: &goodTill, ClientOrderID: "my-1"},
				RequestedAt: at},
			&OrderCommandV1{CommandID: "cmd_7f3b", Kind: CommandPlace, AccountID: "acc_12", OrderID: "o_9c2",
				Order: &OrderSpec{Pair: "EUR_USD", Side: SideSell, Units: decimal.NewFromInt(5_000), Type: OrderTypeMarket,
					PriceBound: &bound, TimeInForce: TimeInForceFOK},
				RequestedAt: at},
			&OrderCommandV1{CommandID: "trigger:o_9c1:17", Kind: CommandTrigger, AccountID: "acc_12", OrderID: "o_9c1",
				TriggerRateID: "17", RequestedAt: at, TriggerQuote: &TriggerQuote{Pair: "USD_JPY",
					Bid: decimal.RequireFromString("150.118"), Ask: decimal.RequireFromString("150.125"), Time: at.Add(-40 * time.Millisecond)}},
			&OrderCommandV1{CommandID: "closeout:acc_12:1", Kind: CommandCloseOut, AccountID: "acc_12", RequestedAt: at},
		},
		TypeTradeExecuted: {
			&TradeExecutedV1{ExecutionID: "x_55", AccountID: "acc_12", AccountSeq: 42, OrderID: "o_9c1", Pair: "USD_JPY",
				Side: SideSell, Units: decimal.NewFromInt(10_000), Price: fill, RealizedPL: decimal.RequireFromString("-1250.5"),
				Currency: "JPY", Reason: "trigger", ExecutedAt: at},
		},
		TypeOrderResult: {
			&OrderResultV1{CommandID: "cmd_7f3a", AccountID: "acc_12", OrderID: "o_9c1", Status: ResultFilled,
				ExecutionID: "x_55", Price: &fill, AccountSeq: 42, RealizedPL: &pl, Currency: "JPY", Placed: true, DecidedAt: at},
			&OrderResultV1{CommandID: "cmd_7f3c", AccountID: "acc_12", OrderID: "o_9c3", Status: ResultRejected,
				Reason: "insufficient_margin", Placed: true, DecidedAt: at},
		},
	}
}

func TestSchemasAcceptRealisticPayloads(t *testing.T) {
	samples := samplePayloads()
	for _, spec := range Specs() {
		if len(samples[spec.Type]) == 0 {
			t.Errorf("no sample payload of %s", spec.Type)
			continue
		}
		doc := mustLoadSchema(t, spec.DataSchema)
		for i, p := range samples[spec.Type] {
			if err := p.Validate(); err != nil {
				t.Fatalf("%s sample %d is not a valid payload: %v", spec.Type, i, err)
			}
			data, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range checkJSON(doc, data) {
				t.Errorf("%s sample %d: %s\n%s", spec.Type, i, e, data)
			}
		}
	}
}

// The trading function's order requests and responses, as its README section and events.go show them.
func TestTradingSchemasAcceptDocumentedExamples(t *testing.T) {
	for _, c := range []struct {
		uri, data string
	}{
		{tradingSchemaURIs[0], `{"accountId":"acc_1","action":"place","order":{"pair":"USD_JPY","side":"buy","units":"1000",
			"type":"market","timeInForce":"FOK","priceBound":"151.500","clientOrderId":"my-1"}}`},
		{tradingSchemaURIs[0], `{"accountId":"acc_1","action":"place","order":{"pair":"EUR_USD","side":"sell","units":"2000",
			"type":"limit","price":"1.09000","timeInForce":"GTD","goodTill":"2026-12-01T00:00:00Z"}}`},
		{tradingSchemaURIs[0], `{"accountId":"acc_1","action":"cancel","orderId":"@my-1"}`},
		{tradingSchemaURIs[1], `{"id":"o_1","accountId":"acc_1","clientOrderId":"my-1","pair":"USD_JPY","side":"buy",
			"units":"1000","type":"market","priceBound":"151.500","timeInForce":"FOK","status":"filled",
			"createdAt":"2026-11-30T09:15:00.123456789Z","updatedAt":"2026-11-30T09:15:00.2Z",
			"execution":{"id":"x_1","accountSeq":1,"orderId":"o_1","pair":"USD_JPY","side":"buy","units":"1000",
			"price":"151.425","realizedPL":"0","currency":"JPY","reason":"order","executedAt":"2026-11-30T09:15:00.2Z"},
			"href":"/v1/accounts/acc_1/orders/o_1"}`},
		{tradingSchemaURIs[1], `{"id":"o_2","accountId":"acc_1","pair":"USD_JPY","side":"buy","units":"1000","type":"market",
			"timeInForce":"FOK","status":"filled","execution":{"id":"x_2","accountSeq":0,"orderId":"o_2","pair":"USD_JPY",
			"side":"buy","units":"1000","price":"151.425","realizedPL":"","currency":"","reason":"","executedAt":""},
			"href":"/v1/accounts/acc_1/orders/o_2"}`},
	} {
		for _, e := range checkJSON(mustLoadSchema(t, c.uri), []byte(c.data)) {
			t.Errorf("%s: %s", path.Base(c.uri), e)
		}
	}
}

// The checker itself must be able to say no.
func TestSchemaCheckerRefusesBadPayloads(t *testing.T) {
	rate := mustLoadSchema(t, schemaURIBase+"rate.v1.json")
	request := mustLoadSchema(t, tradingSchemaURIs[0])
	for _, c := range []struct {
		name string
		s    map[string]any
		data string
		want string
	}{
		{"decimal as a number", rate, `{"pair":"USD_JPY","bid":151.42}`, "$.bid: number, want string"},
		{"bad decimal", rate, `{"bid":"1e3"}`, `"1e3" does not match`},
		{"bad time", rate, `{"providerTime":"2026-11-30 09:15"}`, "not an RFC 3339 date-time"},
		{"missing required", rate, `{"pair":"USD_JPY"}`, `required property "epoch" missing`},
		{"below minimum", rate, `{"epoch":0}`, "below the minimum"},
		{"above maximum", rate, `{"msgSeqNum":2147483648}`, "above the maximum"},
		{"too long", rate, `{"session":"` + strings.Repeat("s", 129) + `"}`, "longer than"},
		{"control character", rate, `{"quoteId":"17\u0000"}`, "does not match"},
		{"integer as string", rate, `{"seq":"9"}`, "$.seq: string, want integer"},
		{"not in enum", request, `{"accountId":"a","action":"replace"}`, `replace is not one of`},
		{"nested enum", request, `{"accountId":"a","action":"place","order":{"pair":"USD_JPY","side":"long","units":"1"}}`,
			"$.order.side: long is not one of"},
		{"unknown property refused", request, `{"accountId":"a","action":"cancel","orderId":"o","note":"x"}`,
			`property "note" is not allowed`},
		{"empty string", request, `{"accountId":"","action":"cancel","orderId":"o"}`, "shorter than"},
	} {
		errs := checkJSON(c.s, []byte(c.data))
		if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, c.want) }) {
			t.Errorf("%s: want an error containing %q, got %q", c.name, c.want, errs)
		}
	}
	if errs := checkJSON(rate, []byte(`{"pair":"USD_JPY","unknown":true}`)); slices.ContainsFunc(errs,
		func(e string) bool { return strings.Contains(e, "not allowed") }) {
		t.Errorf("rate schema refused an unknown property: %q", errs)
	}
}
