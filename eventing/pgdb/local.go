package pgdb

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Local is a private PostgreSQL cluster under a directory of ours, for dev mode and tests: created on
// first use, reused across runs, listening on 127.0.0.1 only, with a password generated per cluster.
type Local struct {
	dir      string
	port     int
	password string
	cred     *syscall.Credential
	bin      string
}

// Layout of a local cluster's directory and its limits.
const (
	localDataSubdir      = "data"
	localPasswordFile    = "password"
	localLogFile         = "postgres.log"
	localSuperuser       = "kawase"
	localDatabase        = "kawase"
	localStartTimeoutSec = 60
	// localStartTriesMax bounds how many ports a start tries when the picked one was taken;
	// localLogTailBytes is how much of the log's end is searched for that.
	localStartTriesMax = 3
	localLogTailBytes  = 4 << 10
	localPasswordBytes = 24
	localUnprivileged  = "postgres"
	// A server that looks running but refuses connections (killed, not yet reaped) is polled every
	// localStalePollMs for at most localStaleWaitMs before a new one is started.
	localStaleWaitMs = 5_000
	localStalePollMs = 200
)

// ErrNoPostgres means no PostgreSQL server binaries were found; `make` installs them.
var ErrNoPostgres = errors.New("postgresql server binaries (initdb, pg_ctl) not found; install the postgresql package")

// StartLocal starts (creating if needed) the private cluster in dir and returns it running. When the
// process is root, the server runs as the unprivileged "postgres" user, since initdb refuses root.
func StartLocal(ctx context.Context, dir string) (*Local, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local postgres: %w", err)
	}
	l := &Local{dir: abs}
	if l.bin, err = findBinDir(); err != nil {
		return nil, err
	}
	if err := l.prepare(); err != nil {
		return nil, err
	}
	if err := l.start(ctx); err != nil {
		return nil, err
	}
	if err := l.ensureDatabase(ctx, localDatabase); err != nil {
		return nil, err
	}
	return l, nil
}

// URL is the connection string of the cluster's kawase database.
func (l *Local) URL() string { return l.DatabaseURL(localDatabase) }

// DatabaseURL is the connection string of database name on this cluster.
func (l *Local) DatabaseURL(name string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(localSuperuser, l.password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(l.port)), Path: "/" + name, RawQuery: "sslmode=disable"}
	return u.String()
}

// BinDir is where the server's programs (pgbench among them) live.
func (l *Local) BinDir() string { return l.bin }

// CreateDatabase creates a new, empty database on the cluster.
func (l *Local) CreateDatabase(ctx context.Context, name string) error {
	return l.ensureDatabase(ctx, name)
}

// Stop shuts the cluster down (fast mode: open transactions roll back, committed data stays).
func (l *Local) Stop() error {
	if err := l.pgctl(context.Background(), "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("stop local postgres: %w", err)
	}
	return nil
}

func findBinDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// prepare creates the directory and, as root, hands it to the unprivileged user.
func (l *Local) prepare() error {
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return fmt.Errorf("local postgres: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(localUnprivileged)
	if err != nil {
		return fmt.Errorf("local postgres: running as root needs the %q user: %w", localUnprivileged, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	l.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if err := os.Chown(l.dir, uid, gid); err != nil {
		return fmt.Errorf("local postgres: %w", err)
	}
	return makeTraversable(filepath.Dir(l.dir))
}

// makeTraversable adds search permission for others to dir and its ancestors, so the unprivileged
// server can reach its data directory under a root-owned checkout (e.g. a 0700 temp dir).
func makeTraversable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("local postgres: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("local postgres: make %s traversable: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func (l *Local) dataDir() string { return filepath.Join(l.dir, localDataSubdir) }

func (l *Local) start(ctx context.Context) error {
	if err := l.initdbOnce(ctx); err != nil {
		return err
	}
	if port, ok := l.reusablePort(ctx); ok {
		l.port = port
		return nil
	}
	logPath := filepath.Join(l.dir, localLogFile)
	for try := 1; ; try++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("local postgres: %w", err)
		}
		l.port = port
		opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200", port)
		err = l.pgctl(ctx, "-w", "-t", strconv.Itoa(localStartTimeoutSec), "-l", logPath, "-o", opts, "start")
		if err == nil {
			return nil
		}
		// The port was free when picked, but another socket may have taken it before the server
		// bound it: pick another, a bounded number of times.
		if try >= localStartTriesMax || !portTaken(logPath) {
			return fmt.Errorf("start local postgres (log in %s): %w", logPath, err)
		}
	}
}

// portTaken reports whether the server log's end says its port was in use.
func portTaken(logPath string) bool {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return false
	}
	return bytes.Contains(b[max(0, len(b)-localLogTailBytes):], []byte("Address already in use"))
}

// reusablePort reports the port of a server already running on this data directory that accepts
// connections. A server killed a moment ago may still look running (its postmaster not yet reaped):
// that is waited out for at most localStaleWaitMs, after which the caller starts a new one.
func (l *Local) reusablePort(ctx context.Context) (int, bool) {
	deadline := time.Now().Add(localStaleWaitMs * time.Millisecond)
	for {
		port, ok := l.runningPort()
		if !ok {
			return 0, false
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), localStalePollMs*time.Millisecond)
		if err == nil {
			conn.Close()
			return port, true
		}
		if time.Now().After(deadline) {
			return 0, false
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(localStalePollMs * time.Millisecond):
		}
	}
}

// runningPort reports the port of a server already running on this data directory.
func (l *Local) runningPort() (int, bool) {
	if err := l.pgctl(context.Background(), "status"); err != nil {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(l.dataDir(), "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	return port, err == nil
}

func (l *Local) initdbOnce(ctx context.Context) error {
	pwPath := filepath.Join(l.dir, localPasswordFile)
	if _, err := os.Stat(filepath.Join(l.dataDir(), "PG_VERSION")); err == nil {
		pw, err := os.ReadFile(pwPath)
		if err != nil {
			return fmt.Errorf("local postgres: read password: %w", err)
		}
		l.password = strings.TrimSpace(string(pw))
		return nil
	}
	buf := make([]byte, localPasswordBytes)
	if _, err := rand.Read(buf); err != nil {
		return fmt.Errorf("local postgres: %w", err)
	}
	l.password = hex.EncodeToString(buf)
	if err := l.writeOwned(pwPath, l.password+"\n"); err != nil {
		return err
	}
	args := []string{"-D", l.dataDir(), "-U", localSuperuser, "--pwfile", pwPath, "-A", "scram-sha-256",
		"-E", "UTF8", "--locale=C"}
	if out, err := l.command(ctx, "initdb", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// writeOwned writes a 0600 file that the server's user owns.
func (l *Local) writeOwned(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("local postgres: %w", err)
	}
	if l.cred != nil {
		if err := os.Chown(path, int(l.cred.Uid), int(l.cred.Gid)); err != nil {
			return fmt.Errorf("local postgres: %w", err)
		}
	}
	return nil
}

func (l *Local) pgctl(ctx context.Context, args ...string) error {
	full := append([]string{"-D", l.dataDir()}, args...)
	out, err := l.command(ctx, "pg_ctl", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", args[len(args)-1], err, bytes.TrimSpace(out))
	}
	return nil
}

func (l *Local) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(l.bin, prog), args...)
	cmd.Dir = l.dir
	cmd.Env = []string{"PATH=" + l.bin + ":/usr/bin:/bin", "LC_ALL=C"}
	// The server must outlive a Ctrl-C sent to our process group; Stop shuts it down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if l.cred != nil {
		cmd.SysProcAttr.Credential = l.cred
	}
	return cmd
}

func (l *Local) ensureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, l.DatabaseURL("postgres"))
	if err != nil {
		return fmt.Errorf("local postgres: connect: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("local postgres: %w", err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("local postgres: create database %s: %w", name, err)
	}
	return nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
