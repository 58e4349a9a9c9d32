package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"k8s.io/apimachinery/pkg/api/resource"

	manifests "github.com/kawase-fx/kawase/config"
	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/manifest"
)

// Limits of the dev-mode test.
const (
	devReadyTimeoutSec = 90
	devStopTimeoutSec  = 30
)

// buildKawase compiles this command into dir and returns the binary's path.
func buildKawase(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "kawase")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// Ports a dev under test listens on are picked below the kernel's ephemeral range: a port picked
// there (listening on :0) is free only until some connection's local end takes it, and a dev that is
// killed and restarted must get its ports back. testPortMin is the lowest tried; testPortTriesMax
// bounds the search before falling back to an ephemeral port.
const (
	testPortMin           = 20_000
	ephemeralPortMinLinux = 32_768
	testPortTriesMax      = 200
)

// freeAddr returns a loopback address with a port that is free now and outside the ephemeral range.
func freeAddr(t *testing.T) string {
	t.Helper()
	limit := ephemeralPortLow()
	for range testPortTriesMax {
		if limit <= testPortMin {
			break
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testPortMin+rand.IntN(limit-testPortMin)))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ephemeralPortLow is the lowest port the kernel hands to connections and to listeners on port 0.
func ephemeralPortLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return ephemeralPortMinLinux
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil || low <= 0 {
		return ephemeralPortMinLinux
	}
	return low
}

// devSetup is what a test needs to run `kawase dev`: the built binary, a fresh data directory, and
// the environment with free ports for its listeners and no outside database or broker.
type devSetup struct {
	tmp, bin, dataDir, kafkaPort string
	env                          []string
}

func newDevSetup(t *testing.T, extraEnv ...string) devSetup {
	t.Helper()
	tmp := t.TempDir()
	s := devSetup{tmp: tmp, bin: buildKawase(t, tmp), dataDir: filepath.Join(tmp, "run")}
	if err := os.Mkdir(s.dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, s.kafkaPort, _ = net.SplitHostPort(freeAddr(t))
	s.env = append([]string{"KAWASE_HTTP_ADDR=" + freeAddr(t), "KAWASE_GRPC_ADDR=" + freeAddr(t),
		"KAWASE_KAFKA_PORT=" + s.kafkaPort, "DATABASE_URL=", "KAFKA_BROKERS="}, extraEnv...)
	return s
}

// devProcess is a running `kawase dev`.
type devProcess struct {
	cmd   *exec.Cmd
	state devState
	done  chan error
}

func startDev(t *testing.T, bin, dataDir string, env []string) *devProcess {
	t.Helper()
	cmd := exec.Command(bin, "dev")
	// If this test binary dies (a timeout's panic, a kill), dev gets SIGTERM and stops its own children
	// and Postgres, instead of running on and starving the next test of the cores.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "KAWASE_DATA_DIR="+dataDir)
	logf, err := os.Create(filepath.Join(dataDir, fmt.Sprintf("dev-%d.log", time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &devProcess{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.Now().Add(devReadyTimeoutSec * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("kawase dev exited early: %v\n%s", err, b)
		case <-time.After(200 * time.Millisecond):
		}
		b, err := os.ReadFile(filepath.Join(dataDir, devStateFile))
		if err != nil || json.Unmarshal(b, &p.state) != nil || p.state.PID != cmd.Process.Pid {
			continue
		}
		resp, err := http.Get(p.state.HTTP + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
	}
	t.Fatalf("kawase dev not ready within %d s", devReadyTimeoutSec)
	return nil
}

func (p *devProcess) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("kawase dev did not exit cleanly on Ctrl-C: %v", err)
		}
	case <-time.After(devStopTimeoutSec * time.Second):
		t.Fatalf("kawase dev still running %d s after Ctrl-C", devStopTimeoutSec)
	}
}

// TestDevStartsStopsAndKeepsData runs the real binary twice on one data directory: it must become
// ready, write dev.json, stop cleanly on Ctrl-C (its database server too), and keep both the database
// and the broker's records across the restart.
func TestDevStartsStopsAndKeepsData(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole dev environment")
	}
	setup := newDevSetup(t)
	bin, dataDir, env, kafkaPort := setup.bin, setup.dataDir, setup.env, setup.kafkaPort
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := startDev(t, bin, dataDir, env)
	if first.state.AdminToken == "" || first.state.Kafka != "127.0.0.1:"+kafkaPort || first.state.Database == "" {
		t.Fatalf("dev.json = %+v", first.state)
	}
	demo := waitDemoAccount(t, dataDir)
	conn, err := pgx.Connect(ctx, first.state.Database)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE survivor (price numeric); INSERT INTO survivor VALUES (151.425)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	w := cekafka.NewWriter([]string{first.state.Kafka}, eventing.TopicDeadLetters)
	e := devTestEvent(t)
	if err := cekafka.Publish(ctx, w, e); err != nil {
		t.Fatal(err)
	}
	w.Close()
	first.interrupt(t)
	if out, err := exec.Command("pg_isready", "-d", first.state.Database).CombinedOutput(); err == nil {
		t.Errorf("postgres still accepting connections after Ctrl-C: %s", out)
	}

	second := startDev(t, bin, dataDir, env)
	defer second.interrupt(t)
	if second.state.AdminToken != first.state.AdminToken {
		t.Error("admin token changed across restarts of one data directory")
	}
	if again := waitDemoAccount(t, dataDir); again != demo {
		t.Errorf("demo account changed across restarts: %+v, then %+v", demo, again)
	}
	req, _ := http.NewRequest(http.MethodGet, second.state.HTTP+"/v1/accounts/"+demo.ID, nil)
	req.Header.Set("Authorization", "Bearer "+demo.Token)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("demo account after restart: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// What no function serves is a problem too, not net/http's plain text.
	for _, c := range []struct {
		method, path string
		status       int
	}{{http.MethodGet, "/nope", http.StatusNotFound}, {http.MethodGet, "/_svc/nope", http.StatusNotFound},
		{http.MethodPut, "/", http.StatusMethodNotAllowed}} {
		req, _ := http.NewRequest(c.method, second.state.HTTP+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	conn, err = pgx.Connect(ctx, second.state.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var price string
	if err := conn.QueryRow(ctx, "SELECT price::text FROM survivor").Scan(&price); err != nil || price != "151.425" {
		t.Fatalf("database after restart: %q, %v", price, err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{second.state.Kafka}, Topic: eventing.TopicDeadLetters,
		Partition: partitionOf(t, second.state.Kafka, eventing.PartitionKey(e))})
	defer r.Close()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	back, err := cekafka.FromMessage(m)
	if err != nil || back.ID() != e.ID() {
		t.Fatalf("kafka record after restart: %v, %v", back.ID(), err)
	}
	checkColdReplicaSeedsFromTheRatekeeper(t, second.state)
}

func devTestEvent(t *testing.T) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID("survivor-1")
	e.SetType("kawase.test.v1")
	e.SetSource("/kawase/test")
	e.SetExtension("partitionkey", "k1")
	if err := e.SetData("application/json", []byte(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
	return e
}

// partitionOf finds the partition a key landed on by asking each partition for its high-water mark.
func partitionOf(t *testing.T, addr, _ string) int {
	t.Helper()
	conn, err := kafka.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(eventing.TopicDeadLetters)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", addr, p.Topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err == nil && last > 0 {
			return p.ID
		}
	}
	t.Fatal("no partition of " + eventing.TopicDeadLetters + " holds a record: " + strconv.Itoa(len(parts)))
	return 0
}

// waitDemoAccount waits for the demo account kawase dev announces in dev.json once it is ready.
func waitDemoAccount(t *testing.T, dataDir string) devAccount {
	t.Helper()
	deadline := time.Now().Add(devReadyTimeoutSec * time.Second)
	for time.Now().Before(deadline) {
		var st devState
		if b, err := os.ReadFile(filepath.Join(dataDir, devStateFile)); err == nil && json.Unmarshal(b, &st) == nil &&
			st.DemoAccount != nil && st.DemoAccount.Token != "" {
			return *st.DemoAccount
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("no demo account in dev.json")
	return devAccount{}
}

// TestFeederProcsFollowTheManifest: dev's children get the GOMAXPROCS a feeder pod would, from the CPU
// limit in config/feeder.yaml, rounded up as Go rounds it.
func TestFeederProcsFollowTheManifest(t *testing.T) {
	for limit, want := range map[string]int{"1": 1, "500m": 1, "1500m": 2, "2": 2, "100m": 1} {
		if got := cpuProcs(resource.MustParse(limit)); got != want {
			t.Errorf("cpuProcs(%s) = %d, want %d", limit, got, want)
		}
	}
	set, err := manifest.Load(manifests.FS)
	if err != nil {
		t.Fatal(err)
	}
	procs, err := feederProcs(set)
	if err != nil {
		t.Fatal(err)
	}
	if procs < 1 {
		t.Fatalf("feederProcs() = %d", procs)
	}
}
