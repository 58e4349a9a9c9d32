package feeder

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixsim"
)

// checkConsecutive checks that each pair's rates carry quote ids 1, 2, 3, … in topic order.
func checkConsecutive(t *testing.T, tl *tail, pairs []fx.Pair, atLeast int) {
	t.Helper()
	waitFor(t, recoveryWaitSeconds*time.Second, "rates of every pair", func() bool {
		rates, _ := tl.snapshot()
		per := byPair(rates)
		for _, p := range pairs {
			if len(per[p]) < atLeast {
				return false
			}
		}
		return true
	})
	rates, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for p, rs := range byPair(rates) {
		for i, r := range rs {
			if r.rate.QuoteID != strconv.Itoa(i+1) {
				t.Fatalf("%s: rate %d has quote id %s", p, i, r.rate.QuoteID)
			}
		}
	}
}

// TestIncrementalRefreshes asks for MDUpdateType 1: the simulator streams 35=X (NEW, then CHANGE),
// and the feeder keeps each pair's book and publishes every update in order.
func TestIncrementalRefreshes(t *testing.T) {
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond})
	tl := tailRates(t, addr)
	startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr(), Incremental: true}, Pairs: recoveryPairs, Brokers: []string{addr}})
	checkConsecutive(t, tl, recoveryPairs, 20)
}

// TestTLSSession runs the FIX session over TLS, the feeder verifying the simulator's certificate.
func TestTLSSession(t *testing.T) {
	certFile, keyFile := selfSignedCert(t)
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond, TLSCertFile: certFile, TLSKeyFile: keyFile})
	tl := tailRates(t, addr)
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr(), TLS: true, TLSCAFile: certFile}, Pairs: recoveryPairs,
		Brokers: []string{addr}})
	checkConsecutive(t, tl, recoveryPairs, 10)
	if n := sim.DropSessions(); n != 1 {
		t.Fatalf("%d TLS connections to drop", n)
	}
	waitPublished(t, rf, recoveryPairs, 10)
	checkRising(t, tl) // quotes in flight when the connection dropped are lost, not reordered
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key.
func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fixsim"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
