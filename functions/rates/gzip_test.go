package rates_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"

	"github.com/kawase-fx/kawase/functions/rates"
)

// rawGet sends a GET without net/http's transparent decompression, so the test sees the bytes and
// headers as sent.
func rawGet(t *testing.T, url string, header ...string) response {
	t.Helper()
	return getWith(t, &http.Client{Transport: &http.Transport{DisableCompression: true}}, url, header...)
}

// TestBoardGzip: the whole board is gzipped for a client that accepts gzip, decompresses to exactly
// the identity body, has its own ETag (revalidated per representation) and says Vary; a client
// that refuses gzip, or asks for one pair, gets the identity body.
func TestBoardGzip(t *testing.T) {
	env := startRates(t, rates.Config{Pairs: apiPairs}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	url := env.srv.URL + "/v1/rates"

	plain := rawGet(t, url)
	plainBody := []byte(plain.body)
	mustf(t, plain.status == http.StatusOK && plain.header.Get("Content-Encoding") == "" &&
		plain.header.Get("Vary") == "Accept-Encoding", "identity: %d %v", plain.status, plain.header)

	gz := rawGet(t, url, "Accept-Encoding", "br;q=1.0, gzip;q=0.8")
	gzBody := []byte(gz.body)
	mustf(t, gz.status == http.StatusOK && gz.header.Get("Content-Encoding") == "gzip" &&
		gz.header.Get("Vary") == "Accept-Encoding" && gz.header.Get("Content-Type") == "application/json",
		"gzip: %d %v", gz.status, gz.header)
	mustf(t, len(gzBody) < len(plainBody), "gzipped %d bytes, identity %d", len(gzBody), len(plainBody))
	zr, err := gzip.NewReader(bytes.NewReader(gzBody))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	mustf(t, err == nil && bytes.Equal(unzipped, plainBody), "gunzipped body differs: %v\n%s\n%s", err, unzipped, plainBody)

	plainTag, gzTag := plain.header.Get("Etag"), gz.header.Get("Etag")
	mustf(t, plainTag != "" && gzTag != "" && plainTag != gzTag, "ETags identity %q, gzip %q", plainTag, gzTag)
	again := rawGet(t, url, "Accept-Encoding", "gzip", "If-None-Match", gzTag)
	mustf(t, again.status == http.StatusNotModified, "gzip revalidation: %d", again.status)
	other := rawGet(t, url, "Accept-Encoding", "gzip", "If-None-Match", plainTag)
	mustf(t, other.status == http.StatusOK && other.header.Get("Content-Encoding") == "gzip",
		"the identity ETag revalidated the gzip body: %d", other.status)

	// An explicit gzip wins over "*" wherever either stands.
	for _, ae := range []string{"*", "*;q=0, gzip", "*;q=0,gzip;q=0.5", "gzip, *;q=0", "identity, *;q=0.1", "x-gzip"} {
		r := rawGet(t, url, "Accept-Encoding", ae)
		mustf(t, r.status == http.StatusOK && r.header.Get("Content-Encoding") == "gzip", "Accept-Encoding %q got %q", ae, r.header.Get("Content-Encoding"))
	}
	for _, ae := range []string{"gzip;q=0", "identity", "br", "GZIP; q=0.0", "gzip;q=0, *", "*;q=0", "br, *; q=0", "gzip;level=1;q=0"} {
		r := rawGet(t, url, "Accept-Encoding", ae)
		mustf(t, r.status == http.StatusOK && r.header.Get("Content-Encoding") == "", "Accept-Encoding %q got %q", ae, r.header.Get("Content-Encoding"))
	}
	one := rawGet(t, url+"/USD_JPY", "Accept-Encoding", "gzip")
	mustf(t, one.status == http.StatusOK && one.header.Get("Content-Encoding") == "", "one pair gzipped")
}
