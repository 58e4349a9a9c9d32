package rates

import (
	"bytes"
	"compress/gzip"
	"strconv"
	"strings"
	"sync"
)

// The whole board (about 6 KB for 50 pairs) is sent gzipped to clients that accept it: about a fifth
// of the bytes for 20,000 viewers a second, and one write per answer instead of two. It is compressed
// at most once per snapshot, by the first request that wants it; smaller bodies (one pair, a
// filtered list assembled per request) are sent as they are.
const gzipLevel = gzip.BestSpeed

// gzipWriters recycles compressors: a new one costs far more than compressing 6 KB.
var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzipLevel) // the level is a valid constant
	return w
}}

// gzipped is a body compressed once, with its length header ready to assign.
type gzipped struct {
	body         []byte
	lengthHeader []string
}

// gzipETag is the ETag of the gzipped representation of a body whose ETag is etag: a strong
// validator names one representation, so it differs from the identity body's.
func gzipETag(etag string) string { return strings.TrimSuffix(etag, `"`) + `-gzip"` }

// lazyGzip compresses a snapshot's body on first use.
type lazyGzip struct {
	once sync.Once
	gz   *gzipped
}

// get returns body compressed, compressing it on the first call.
func (l *lazyGzip) get(body []byte) *gzipped {
	l.once.Do(func() { l.gz = compress(body) })
	return l.gz
}

func compress(body []byte) *gzipped {
	var buf bytes.Buffer
	buf.Grow(len(body)/3 + 64)
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	_, _ = zw.Write(body) // a bytes.Buffer does not fail
	_ = zw.Close()
	gzipWriters.Put(zw)
	return &gzipped{body: buf.Bytes(), lengthHeader: []string{strconv.Itoa(buf.Len())}}
}

// acceptsGzip reports whether Accept-Encoding header values allow gzip: gzip (or x-gzip) listed
// without q=0, or, when neither is listed, "*" without q=0. An explicit coding takes precedence over
// "*" wherever it stands (RFC 9110 12.5.3), so "*;q=0, gzip" allows gzip and "gzip;q=0, *" does not.
func acceptsGzip(values []string) bool {
	explicit, explicitOK, star, starOK := false, true, false, false
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			coding = strings.TrimSpace(coding)
			switch {
			case strings.EqualFold(coding, "gzip") || strings.EqualFold(coding, "x-gzip"):
				explicit = true
				explicitOK = explicitOK && !refused(params)
			case coding == "*":
				star, starOK = true, !refused(params)
			}
		}
	}
	if explicit {
		return explicitOK
	}
	return star && starOK
}

// refused reports whether the parameters of an Accept-Encoding element hold q=0.
func refused(params string) bool {
	for p := range strings.SplitSeq(params, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(strings.TrimSpace(name), "q") {
			f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return err == nil && f == 0
		}
	}
	return false
}
