package fixspec

import (
	"bytes"
	"errors"
	"fmt"
	"iter"

	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/quickfix/datadictionary"
	"github.com/quickfixgo/tag"
)

// tagDigitsMax is the longest tag number split reads.
const tagDigitsMax = 9

// SessionRejectReason(373) values the checks report that quickfixgo offers no exported constructor for.
const (
	rejectTagAppearsMoreThanOnce         = 13
	rejectTagSpecifiedOutOfRequiredOrder = 14
	rejectIncorrectNumInGroupCount       = 16
)

// Field is one tag=value field of a raw FIX message. Value aliases the raw message and is valid only
// as long as the message is.
type Field struct {
	Tag   quickfix.Tag
	Value []byte
	// Span, on the NumInGroup field of a repeating group, is how many fields the group's entries
	// take after it; 0 on other fields.
	Span int
}

// Fields is a run of fields in wire order: a part of a message, or one entry of a repeating group.
type Fields []Field

// Int returns the value of the field with the given tag at this level as an integer.
func (fs Fields) Int(tag quickfix.Tag) (int, bool) {
	v, ok := fs.Get(tag)
	if !ok {
		return 0, false
	}
	return atoi(v)
}

// Get returns the value of the field with the given tag at this level (not inside a repeating group).
func (fs Fields) Get(tag quickfix.Tag) ([]byte, bool) {
	for i := 0; i < len(fs); i++ {
		if fs[i].Tag == tag {
			return fs[i].Value, true
		}
		i += fs[i].Span
	}
	return nil, false
}

// Entries yields the entries of the repeating group at this level whose NumInGroup field has the
// given tag; each entry's fields include its nested groups.
func (fs Fields) Entries(tag quickfix.Tag) iter.Seq[Fields] {
	return func(yield func(Fields) bool) {
		for i := 0; i < len(fs); i++ {
			if fs[i].Tag != tag {
				i += fs[i].Span
				continue
			}
			group := fs[i+1 : i+1+fs[i].Span]
			start := 0
			for j := 0; j < len(group); j++ {
				if j > 0 && group[j].Tag == group[0].Tag {
					if !yield(group[start:j]) {
						return
					}
					start = j
				}
				j += group[j].Span
			}
			if len(group) > 0 {
				yield(group[start:])
			}
			return
		}
	}
}

// Message is a raw FIX message split into its fields and checked against a Dictionary.
type Message struct {
	// MsgType is MsgType(35).
	MsgType string
	Header  Fields
	Body    Fields
	Trailer Fields
	all     Fields
}

// Fields returns all the message's fields, for reuse as the storage of the next Check.
func (m Message) Fields() []Field { return m.all }

// valueKind is how a field's value is checked.
type valueKind uint8

const (
	kindString valueKind = iota
	kindInt
	kindDecimal
	kindBool
	kindTimestamp
)

// fieldType is what the dictionary says about one tag's values.
type fieldType struct {
	kind valueKind
	// enums, when not nil, are the values allowed; multi says the value is a space-separated list
	// of them.
	enums map[string]struct{}
	multi bool
}

// member is a field of a message part or of a repeating group; a group lists its members in
// dictionary order, the first being its delimiter.
type member struct {
	tag      quickfix.Tag
	required bool
	members  []*member
}

// part is a message body, the header or the trailer.
type part struct {
	msgType string
	// fields are the part's own fields (not those inside its repeating groups), by tag.
	fields   []*member
	required []quickfix.Tag
}

// member returns the part's own field with the given tag, or nil.
func (p *part) member(tag quickfix.Tag) *member {
	if tag < 0 || int(tag) >= len(p.fields) {
		return nil
	}
	return p.fields[tag]
}

// Dictionary is a FIX data dictionary compiled to check raw messages the way quickfixgo's validator
// does with its default settings (every field defined and well formed, enumerated values allowed,
// required fields present, no tag twice, repeating groups in dictionary order with the count they
// announce), and to read their repeating groups by the dictionary's group definitions.
//
// quickfixgo, given a data dictionary, looks up every field of a repeating group by building a map of
// the group's definition anew; a Dictionary compiles those definitions once, so a session can leave
// quickfixgo without a dictionary and check and read each message with one instead.
type Dictionary struct {
	types    []*fieldType
	header   *part
	trailer  *part
	messages map[string]*part
}

// NewDictionary compiles the FIX 4.4 data dictionary.
func NewDictionary() (*Dictionary, error) {
	dd, err := datadictionary.ParseSrc(bytes.NewReader(fix44))
	if err != nil {
		return nil, fmt.Errorf("fix data dictionary: %w", err)
	}
	return CompileDictionary(dd)
}

// CompileDictionary compiles a parsed data dictionary.
func CompileDictionary(dd *datadictionary.DataDictionary) (*Dictionary, error) {
	d := &Dictionary{messages: make(map[string]*part, len(dd.Messages))}
	tagMax := 0
	for tag := range dd.FieldTypeByTag {
		tagMax = max(tagMax, tag)
	}
	d.types = make([]*fieldType, tagMax+1)
	for tag, ft := range dd.FieldTypeByTag {
		t, err := compileType(ft)
		if err != nil {
			return nil, err
		}
		d.types[tag] = t
	}
	if dd.Header == nil || dd.Trailer == nil {
		return nil, errors.New("fix data dictionary: no header or trailer")
	}
	d.header, d.trailer = compilePart(dd.Header), compilePart(dd.Trailer)
	for msgType, md := range dd.Messages {
		d.messages[msgType] = compilePart(md)
	}
	return d, nil
}

func compileType(ft *datadictionary.FieldType) (*fieldType, error) {
	t := &fieldType{}
	switch ft.Type {
	case "MULTIPLESTRINGVALUE", "MULTIPLEVALUESTRING", "MULTIPLECHARVALUE":
		t.multi = true
	case "CHAR", "CURRENCY", "DATA", "MONTHYEAR", "LOCALMKTDATE", "DATE", "EXCHANGE", "LANGUAGE", "XMLDATA",
		"COUNTRY", "UTCTIMEONLY", "UTCDATEONLY", "UTCDATE", "TZTIMEONLY", "TZTIMESTAMP", "STRING":
	case "BOOLEAN":
		t.kind = kindBool
	case "LENGTH", "DAYOFMONTH", "NUMINGROUP", "SEQNUM", "INT":
		t.kind = kindInt
	case "UTCTIMESTAMP", "TIME":
		t.kind = kindTimestamp
	case "QTY", "QUANTITY", "AMT", "PRICE", "PRICEOFFSET", "PERCENTAGE", "FLOAT":
		t.kind = kindDecimal
	default:
		return nil, fmt.Errorf("fix data dictionary: field %s(%d) has unknown type %q", ft.Name(), ft.Tag(), ft.Type)
	}
	if len(ft.Enums) > 0 {
		t.enums = make(map[string]struct{}, len(ft.Enums))
		for v := range ft.Enums {
			t.enums[v] = struct{}{}
		}
	}
	return t, nil
}

func compilePart(md *datadictionary.MessageDef) *part {
	tagMax := 0
	for tag := range md.Fields {
		tagMax = max(tagMax, tag)
	}
	p := &part{msgType: md.MsgType, fields: make([]*member, tagMax+1)}
	for tag, fd := range md.Fields {
		p.fields[tag] = compileMember(fd)
	}
	for t := range md.RequiredTags {
		p.required = append(p.required, quickfix.Tag(t))
	}
	return p
}

func compileMember(fd *datadictionary.FieldDef) *member {
	m := &member{tag: quickfix.Tag(fd.Tag()), required: fd.Required()}
	for _, child := range fd.Fields {
		m.members = append(m.members, compileMember(child))
	}
	return m
}

// Check splits a raw message (one quickfixgo framed and parsed) into fields, reusing buf's storage,
// and checks it against the dictionary. A problem is reported as the session-level Reject quickfixgo's
// validator would answer with; checks run in that validator's order (message type, required fields,
// field order, field values, structure), so the reject is the one that validator gives: the tests
// compare the two over many ways of breaking one field of each message type the feeder receives.
func (d *Dictionary) Check(raw []byte, buf []Field) (Message, quickfix.MessageRejectError) {
	fields, err := split(raw, buf[:0])
	if err != nil {
		return Message{}, err
	}
	m := Message{all: fields}
	h, t := 0, len(fields)
	for h < len(fields) && fields[h].Tag.IsHeader() {
		h++
	}
	for t > h && fields[t-1].Tag.IsTrailer() {
		t--
	}
	m.Header, m.Body, m.Trailer = fields[:h], fields[h:t], fields[t:]
	msgType, ok := m.Header.Get(tag.MsgType)
	if !ok {
		return m, quickfix.RequiredTagMissing(tag.MsgType)
	}
	body, ok := d.messages[string(msgType)]
	if !ok {
		return m, quickfix.InvalidMessageType()
	}
	m.MsgType = body.msgType
	walkErr := d.walk(d.header, m.Header)
	if walkErr == nil {
		walkErr = d.walk(body, m.Body)
	}
	if walkErr == nil {
		walkErr = d.walk(d.trailer, m.Trailer)
	}
	// Header and trailer fields count wherever they are (their order is checked next); body fields
	// only outside repeating groups.
	for _, c := range []struct {
		p  *part
		fs Fields
	}{{d.header, fields}, {body, m.Body}, {d.trailer, fields}} {
		for _, t := range c.p.required {
			if _, ok := c.fs.Get(t); !ok {
				return m, quickfix.RequiredTagMissing(t)
			}
		}
	}
	if err := fieldOrder(fields); err != nil {
		return m, err
	}
	for _, f := range fields {
		if err := d.checkValue(f); err != nil {
			return m, err
		}
	}
	return m, walkErr
}

// split cuts a raw message into tag=value fields.
func split(raw []byte, out []Field) (Fields, quickfix.MessageRejectError) {
	for len(raw) > 0 {
		tag, i := 0, 0
		for ; i < len(raw) && i <= tagDigitsMax && raw[i] >= '0' && raw[i] <= '9'; i++ {
			tag = tag*10 + int(raw[i]-'0')
		}
		if i == 0 || i > tagDigitsMax || i == len(raw) || raw[i] != '=' || tag == 0 {
			return nil, quickfix.NewMessageRejectError(fmt.Sprintf("invalid tag in %.20q", raw), 0, nil)
		}
		raw = raw[i+1:]
		end := bytes.IndexByte(raw, '\x01')
		if end < 0 {
			return nil, quickfix.NewMessageRejectError("field without delimiter", 0, nil)
		}
		out = append(out, Field{Tag: quickfix.Tag(tag), Value: raw[:end:end]})
		raw = raw[end+1:]
	}
	return out, nil
}

// fieldOrder checks that the header comes first and the trailer last.
func fieldOrder(fields Fields) quickfix.MessageRejectError {
	inHeader, inTrailer := true, false
	for _, f := range fields {
		t := f.Tag
		switch {
		case inHeader && t.IsHeader():
		case inHeader && !t.IsHeader():
			inHeader = false
		case !inHeader && t.IsHeader():
			return outOfOrder(t)
		case t.IsTrailer():
			inTrailer = true
		case inTrailer && !t.IsTrailer():
			return outOfOrder(t)
		}
	}
	return nil
}

func outOfOrder(t quickfix.Tag) quickfix.MessageRejectError {
	return rejectWithTag("Tag specified out of required order", rejectTagSpecifiedOutOfRequiredOrder, t)
}

// rejectWithTag is a session-level reject about one tag (its own function, so that the tag escapes
// to the heap only when there is a reject).
func rejectWithTag(text string, reason int, t quickfix.Tag) quickfix.MessageRejectError {
	return quickfix.NewMessageRejectError(text, reason, &t)
}

// checkValue checks one field's value against its type.
func (d *Dictionary) checkValue(f Field) quickfix.MessageRejectError {
	tag := f.Tag
	if len(f.Value) == 0 {
		return quickfix.TagSpecifiedWithoutAValue(tag)
	}
	if int(f.Tag) >= len(d.types) || d.types[f.Tag] == nil {
		return quickfix.InvalidTagNumber(tag)
	}
	t := d.types[f.Tag]
	if t.enums != nil {
		if t.multi {
			for v := range bytes.SplitSeq(f.Value, []byte{' '}) {
				if _, ok := t.enums[string(v)]; !ok {
					return quickfix.ValueIsIncorrect(tag)
				}
			}
		} else if _, ok := t.enums[string(f.Value)]; !ok {
			return quickfix.ValueIsIncorrect(tag)
		}
	}
	ok := true
	switch t.kind {
	case kindInt:
		_, ok = atoi(f.Value)
	case kindDecimal:
		ok = isDecimal(f.Value)
	case kindBool:
		ok = len(f.Value) == 1 && (f.Value[0] == 'Y' || f.Value[0] == 'N')
	case kindTimestamp:
		_, err := UTCTimestamp(f.Value)
		ok = err == nil
	}
	if !ok {
		return quickfix.IncorrectDataFormatForValue(tag)
	}
	return nil
}

// walk checks the structure of one part: every tag defined for it and there once, repeating groups
// in dictionary order with the count they announce. It sets the Span of every NumInGroup field.
func (d *Dictionary) walk(p *part, fs Fields) quickfix.MessageRejectError {
	for i := 0; i < len(fs); {
		if _, dup := fs[:i].Get(fs[i].Tag); dup {
			return rejectWithTag("Tag appears more than once", rejectTagAppearsMoreThanOnce, fs[i].Tag)
		}
		m := p.member(fs[i].Tag)
		if m == nil {
			return quickfix.TagNotDefinedForThisMessageType(fs[i].Tag)
		}
		next, err := visit(m, fs, i)
		if err != nil {
			return err
		}
		i = next
	}
	return nil
}

// visit steps over the field at fs[i], a plain field or a whole repeating group.
func visit(m *member, fs Fields, i int) (int, quickfix.MessageRejectError) {
	if len(m.members) == 0 {
		return i + 1, nil
	}
	count, ok := atoi(fs[i].Value)
	if !ok {
		return i, quickfix.IncorrectDataFormatForValue(fs[i].Tag)
	}
	j, entries := i+1, 0
	var expect []*member
	for j < len(fs) {
		if fs[j].Tag == m.members[0].tag {
			expect = m.members
			entries++
		}
		if len(expect) == 0 {
			break
		}
		if fs[j].Tag == expect[0].tag {
			next, err := visit(expect[0], fs, j)
			if err != nil {
				return j, err
			}
			j = next
		} else if expect[0].required {
			return j, quickfix.RequiredTagMissing(expect[0].tag)
		}
		expect = expect[1:]
	}
	// The part ended inside an entry: its remaining required members are missing.
	for _, e := range expect {
		if e.required {
			return j, quickfix.RequiredTagMissing(e.tag)
		}
	}
	if entries != count {
		return j, rejectWithTag("Incorrect NumInGroup count for repeating group", rejectIncorrectNumInGroupCount, fs[i].Tag)
	}
	fs[i].Span = j - i - 1
	return j, nil
}

// atoi reads an optionally negative decimal integer.
func atoi(b []byte) (int, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	n, ok := Digits(b)
	if neg {
		n = -n
	}
	return n, ok
}

// isDecimal reports whether b is a FIX float: an optional minus, digits and at most one point, with
// at least one digit.
func isDecimal(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	digits, points := 0, 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			points++
		default:
			return false
		}
	}
	return digits > 0 && points <= 1
}
