package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Limits of the `kawase dev` child process the system scenario measures.
const (
	devReadyTimeoutS   = 90
	devStopTimeoutS    = 30
	devPollIntervalMs  = 250
	devPairCount       = 50
	devBuildTimeoutS   = 300
	devHTTPTimeoutS    = 10
	devLogTailBytes    = 4_000
	devStateFileName   = "dev.json"
	devLogFileName     = "kawase-dev.log"
	devPostmasterGlob  = "pg/*/postmaster.pid"
	devLogLevelForLoad = "warn"
)

// devState is the part of <datadir>/dev.json the bench reads: where the running `kawase dev` is.
type devState struct {
	HTTP       string         `json:"http"`
	GRPC       string         `json:"grpc"`
	Kafka      string         `json:"kafka"`
	Database   string         `json:"database"`
	AdminToken string         `json:"adminToken"`
	PID        int            `json:"pid"`
	Extsim     string         `json:"extsim"`
	Children   map[string]int `json:"children"`
}

// devProcess is a `kawase dev` started by the bench, in its own process group.
type devProcess struct {
	cmd     *exec.Cmd
	dataDir string
	logPath string
	state   devState
	done    chan struct{}
	waitErr error
}

// buildKawase compiles ./cmd/kawase into dir and returns the binary's path.
func buildKawase(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, devBuildTimeoutS*time.Second)
	defer cancel()
	bin := filepath.Join(dir, "kawase")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/kawase").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/kawase: %w\n%s", err, out)
	}
	return bin, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// devEnv is the environment of a bench-owned `kawase dev`: private data directory and free ports, so
// it never meets a developer's running instance.
func devEnv(dataDir string) ([]string, error) {
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	env := make([]string, 0, len(os.Environ())+8)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KAWASE_") && !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "KAFKA_BROKERS=") {
			env = append(env, kv)
		}
	}
	return append(env, "KAWASE_DATA_DIR="+dataDir,
		"KAWASE_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(ports[0]),
		"KAWASE_GRPC_ADDR=127.0.0.1:"+strconv.Itoa(ports[1]),
		"KAWASE_KAFKA_PORT="+strconv.Itoa(ports[2]),
		"KAWASE_LOG_LEVEL="+devLogLevelForLoad), nil
}

// startDev runs `bin dev` on a fresh data directory under dir and waits until it serves every pair.
// The caller must stop it.
func startDev(ctx context.Context, bin, dir string) (*devProcess, error) {
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	env, err := devEnv(dataDir)
	if err != nil {
		return nil, err
	}
	p := &devProcess{dataDir: dataDir, logPath: filepath.Join(dir, devLogFileName), done: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	p.cmd = exec.Command(bin, "dev")
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = env, logf, logf
	// Pdeathsig: if the bench dies, dev gets SIGTERM and stops its children and Postgres.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("dev: start: %w", err)
	}
	go func() { p.waitErr = p.cmd.Wait(); logf.Close(); close(p.done) }()
	if err := p.waitReady(ctx); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w\n--- log tail:\n%s", err, p.logTail())
	}
	return p, nil
}

// waitReady polls until dev.json names this process, /readyz answers 200 and /v1/rates has every pair.
func (p *devProcess) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, devReadyTimeoutS*time.Second)
	defer cancel()
	tick := time.NewTicker(devPollIntervalMs * time.Millisecond)
	defer tick.Stop()
	last := errors.New("no dev.json yet")
	for {
		select {
		case <-p.done:
			return fmt.Errorf("kawase dev exited before ready: %w", p.exitErr())
		case <-ctx.Done():
			return fmt.Errorf("kawase dev not ready within %d s: %w", devReadyTimeoutS, last)
		case <-tick.C:
		}
		if last = p.checkReady(ctx); last == nil {
			return nil
		}
	}
}

func (p *devProcess) checkReady(ctx context.Context) error {
	b, err := os.ReadFile(filepath.Join(p.dataDir, devStateFileName))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &p.state); err != nil {
		return fmt.Errorf("dev.json: %w", err)
	}
	if p.state.PID != p.cmd.Process.Pid {
		return fmt.Errorf("dev.json names pid %d, not %d", p.state.PID, p.cmd.Process.Pid)
	}
	if _, err := httpGet(ctx, p.state.HTTP+"/readyz"); err != nil {
		return err
	}
	n, err := ratePairCount(ctx, p.state.HTTP)
	if err != nil {
		return err
	}
	if n != devPairCount {
		return fmt.Errorf("/v1/rates has %d of %d pairs", n, devPairCount)
	}
	return nil
}

// ratePairCount is how many pairs GET /v1/rates lists.
func ratePairCount(ctx context.Context, base string) (int, error) {
	body, err := httpGet(ctx, base+"/v1/rates")
	if err != nil {
		return 0, err
	}
	var v struct {
		Rates []json.RawMessage `json:"rates"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("/v1/rates: %w", err)
	}
	return len(v.Rates), nil
}

// alive reports an error when the dev process has exited.
func (p *devProcess) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("kawase dev exited (log %s): %w", p.logPath, p.exitErr())
	default:
		return nil
	}
}

// exitErr is why the exited process ended; a clean exit is an error too while it should be running.
func (p *devProcess) exitErr() error {
	if p.waitErr == nil {
		return errors.New("exit status 0")
	}
	return p.waitErr
}

// stop sends SIGINT and waits devStopTimeoutS, then kills the process group (and a database server
// left behind, which runs in its own group). It reports whether the stop was clean.
func (p *devProcess) stop() error {
	if p.alive() != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(devStopTimeoutS * time.Second):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.killPostmaster()
	<-p.done
	return fmt.Errorf("kawase dev still running %d s after SIGINT; killed its process group", devStopTimeoutS)
}

// killPostmaster stops the private PostgreSQL server of a killed dev, named by its postmaster.pid.
func (p *devProcess) killPostmaster() {
	files, _ := filepath.Glob(filepath.Join(p.dataDir, devPostmasterGlob))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(b), "\n")
		if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
		}
	}
}

// logTail is the end of the dev log, for error messages.
func (p *devProcess) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > devLogTailBytes {
		b = b[len(b)-devLogTailBytes:]
	}
	return string(b)
}

// httpGet fetches url and returns the body of a 200 answer.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	return httpDo(ctx, http.MethodGet, url)
}

// httpDo sends a bodyless request and returns the body of a 2xx answer.
func httpDo(ctx context.Context, method, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, devHTTPTimeoutS*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, nil
}
