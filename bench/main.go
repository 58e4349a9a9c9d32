// Command bench measures kawase's speed and capacity: in-process load scenarios against real parts
// (the embedded broker over TCP, PostgreSQL), the whole system running for real (`kawase dev` as a
// child process under GET, SSE, order and pgbench loads) plus every Go benchmark in the module. It
// prints the figures and writes them to results.md and results.json, and refreshes the table in
// README.md.
//
//	go run ./bench -out bench                       # everything (make bench)
//	go run ./bench -out /tmp/b -only system -readme ''   # only the system scenario, README untouched
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// figure is one measured value.
type figure struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Unit  string `json:"unit"`
	// Note says how it was measured and what the goal is.
	Note    string `json:"note,omitempty"`
	Machine string `json:"machine"`
	Date    string `json:"date"`
}

// scenario is one load scenario; it returns its figures.
type scenario struct {
	name string
	run  func(ctx context.Context) ([]figure, error)
}

var scenarios = []scenario{
	{name: "cloudevents-kafka", run: runCloudEventsKafka},
	{name: "system", run: runSystem},
}

const (
	readmeStart = "<!-- bench:start -->"
	readmeEnd   = "<!-- bench:end -->"
	goBenchTime = "2s"
	modulePath  = "github.com/kawase-fx/kawase"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	out := flag.String("out", "bench", "directory for results.md and results.json")
	only := flag.String("only", "", "run only scenarios whose name contains this (cloudevents-kafka, system); skips the Go benchmarks")
	skipGo := flag.Bool("skip-go-bench", false, "skip the Go benchmarks")
	readme := flag.String("readme", "README.md", "README whose bench table to refresh (empty: leave every README alone)")
	bareBody := flag.String("bare-body", "", "internal: serve this file's bytes as the bare server the GET load is compared with, and nothing else")
	bareEncoding := flag.String("bare-encoding", "", "internal: the bare server's Content-Encoding")
	flag.Parse()
	if *bareBody != "" {
		return serveBare(*bareBody, *bareEncoding)
	}
	machine := machineName()
	var figs []figure
	for _, s := range scenarios {
		if *only != "" && !strings.Contains(s.name, *only) {
			continue
		}
		fmt.Printf("== scenario %s\n", s.name)
		got, err := s.run(ctx)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s.name, err)
		}
		figs = append(figs, got...)
	}
	if !*skipGo && *only == "" {
		got, err := goBenchmarks(ctx)
		if err != nil {
			return err
		}
		figs = append(figs, got...)
	}
	date := time.Now().UTC().Format("2006-01-02")
	for i := range figs {
		figs[i].Machine, figs[i].Date = machine, date
		fmt.Printf("%-60s %14s %s\n", figs[i].Name, figs[i].Value, figs[i].Unit)
	}
	return writeResults(*out, *readme, figs)
}

func machineName() string {
	model := "unknown cpu"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d cores, %s", runtime.NumCPU(), model)
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// goBenchRun is one `go test -bench` invocation.
type goBenchRun struct {
	pkgs      []string
	bench     string
	benchtime string
}

// goBenchOverrides are benchmarks that need an iteration count rather than goBenchTime: one op is one
// rate, and each b.N round builds a fresh rig, so a fixed count gives steady percentiles in one round.
var goBenchOverrides = []goBenchRun{
	{pkgs: []string{"./feeder"}, bench: "^BenchmarkPublishLatency$", benchtime: "5000x"},
	{pkgs: []string{"./feeder"}, bench: "^BenchmarkFeederThroughput$", benchtime: "200000x"},
}

// goBenchPlan is every package's benchmarks for goBenchTime, except the packages of
// goBenchOverrides, which run as those say.
func goBenchPlan(ctx context.Context) ([]goBenchRun, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "./...").Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	special := map[string]bool{}
	for _, o := range goBenchOverrides {
		for _, p := range o.pkgs {
			special[modulePath+strings.TrimPrefix(p, ".")] = true
		}
	}
	rest := goBenchRun{bench: ".", benchtime: goBenchTime}
	for _, p := range strings.Fields(string(out)) {
		if !special[p] {
			rest.pkgs = append(rest.pkgs, p)
		}
	}
	return append([]goBenchRun{rest}, goBenchOverrides...), nil
}

// goBenchmarks runs every Go benchmark of the module as goBenchPlan says and turns each reported
// metric into a figure.
func goBenchmarks(ctx context.Context) ([]figure, error) {
	fmt.Println("== go benchmarks")
	plan, err := goBenchPlan(ctx)
	if err != nil {
		return nil, err
	}
	var figs []figure
	for _, r := range plan {
		got, err := r.run(ctx)
		if err != nil {
			return nil, err
		}
		figs = append(figs, got...)
	}
	return figs, nil
}

func (r goBenchRun) run(ctx context.Context) ([]figure, error) {
	args := append([]string{"test", "-run", "^$", "-bench", r.bench, "-benchtime", r.benchtime}, r.pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	os.Stdout.Write(out)
	if err != nil {
		return nil, fmt.Errorf("go benchmarks (-bench %s -benchtime %s): %w", r.bench, r.benchtime, err)
	}
	return parseGoBench(string(out), "-benchtime "+r.benchtime), nil
}

// parseGoBench turns each metric of go test -bench output into a figure.
func parseGoBench(out, note string) []figure {
	var figs []figure
	pkg := ""
	for _, line := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, modulePath+"/")
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			figs = append(figs, figure{Name: pkg + " " + m[1], Value: fields[i], Unit: fields[i+1], Note: note})
		}
	}
	return figs
}

func writeResults(dir, readme string, figs []figure) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(figs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	table := markdownTable(figs)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte("# kawase benchmark results\n\n"+table), 0o644); err != nil {
		return err
	}
	if readme == "" {
		return nil
	}
	return refreshReadme(readme, table)
}

func markdownTable(figs []figure) string {
	var b strings.Builder
	b.WriteString("| figure | value | unit | note | machine | date |\n|---|---:|---|---|---|---|\n")
	for _, f := range figs {
		note := strings.NewReplacer("|", "\\|", "\n", " ").Replace(f.Note)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", f.Name, f.Value, f.Unit, note, f.Machine, f.Date)
	}
	return b.String()
}

// refreshReadme replaces the text between the bench markers of the README with the new table.
func refreshReadme(path, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("refresh readme: %w", err)
	}
	s := string(b)
	i, j := strings.Index(s, readmeStart), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("refresh readme: %s lacks the %s / %s markers", path, readmeStart, readmeEnd)
	}
	s = s[:i+len(readmeStart)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
