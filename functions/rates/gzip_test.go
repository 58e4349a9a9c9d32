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
func rawGet(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
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

	plain, plainBody := rawGet(t, url)
	mustf(t, plain.StatusCode == http.StatusOK && plain.Header.Get("Content-Encoding") == "" &&
		plain.Header.Get("Vary") == "Accept-Encoding", "identity: %d %v", plain.StatusCode, plain.Header)

	gz, gzBody := rawGet(t, url, "Accept-Encoding", "br;q=1.0, gzip;q=0.8")
	mustf(t, gz.StatusCode == http.StatusOK && gz.Header.Get("Content-Encoding") == "gzip" &&
		gz.Header.Get("Vary") == "Accept-Encoding" && gz.Header.Get("Content-Type") == "application/json",
		"gzip: %d %v", gz.StatusCode, gz.Header)
	mustf(t, len(gzBody) < len(plainBody), "gzipped %d bytes, identity %d", len(gzBody), len(plainBody))
	zr, err := gzip.NewReader(bytes.NewReader(gzBody))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	mustf(t, err == nil && bytes.Equal(unzipped, plainBody), "gunzipped body differs: %v\n%s\n%s", err, unzipped, plainBody)

	plainTag, gzTag := plain.Header.Get("Etag"), gz.Header.Get("Etag")
	mustf(t, plainTag != "" && gzTag != "" && plainTag != gzTag, "ETags identity %q, gzip %q", plainTag, gzTag)
	again, _ := rawGet(t, url, "Accept-Encoding", "gzip", "If-None-Match", gzTag)
	mustf(t, again.StatusCode == http.StatusNotModified, "gzip revalidation: %d", again.StatusCode)
	other, _ := rawGet(t, url, "Accept-Encoding", "gzip", "If-None-Match", plainTag)
	mustf(t, other.StatusCode == http.StatusOK && other.Header.Get("Content-Encoding") == "gzip",
		"the identity ETag revalidated the gzip body: %d", other.StatusCode)

	for _, ae := range []string{"gzip;q=0", "identity", "br", "GZIP; q=0.0"} {
		r, _ := rawGet(t, url, "Accept-Encoding", ae)
		mustf(t, r.StatusCode == http.StatusOK && r.Header.Get("Content-Encoding") == "", "Accept-Encoding %q got %q", ae, r.Header.Get("Content-Encoding"))
	}
	one, _ := rawGet(t, url+"/USD_JPY", "Accept-Encoding", "gzip")
	mustf(t, one.StatusCode == http.StatusOK && one.Header.Get("Content-Encoding") == "", "one pair gzipped")
}
