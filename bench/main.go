// Command bench measures kawase's speed and capacity: in-process load scenarios against real parts
// (the embedded broker over TCP, PostgreSQL) plus every Go benchmark in the module. It prints the
// figures and writes them to results.md and results.json, and refreshes the table in README.md.
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
	Name    string `json:"name"`
	Value   string `json:"value"`
	Unit    string `json:"unit"`
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
}

const (
	readmeStart = "<!-- bench:start -->"
	readmeEnd   = "<!-- bench:end -->"
	goBenchTime = "2s"
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
	only := flag.String("only", "", "run only scenarios whose name contains this")
	skipGo := flag.Bool("skip-go-bench", false, "skip the Go benchmarks")
	readme := flag.String("readme", "README.md", "README to refresh (empty: none)")
	flag.Parse()
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

// goBenchmarks runs every Go benchmark of the module once for goBenchTime and turns each reported
// metric into a figure.
func goBenchmarks(ctx context.Context) ([]figure, error) {
	fmt.Println("== go benchmarks")
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", ".", "-benchtime", goBenchTime, "./...")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	os.Stdout.Write(out)
	if err != nil {
		return nil, fmt.Errorf("go benchmarks: %w", err)
	}
	var figs []figure
	pkg := ""
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/kawase-fx/kawase/")
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			figs = append(figs, figure{Name: pkg + " " + m[1], Value: fields[i], Unit: fields[i+1]})
		}
	}
	return figs, nil
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
	b.WriteString("| figure | value | unit | machine | date |\n|---|---:|---|---|---|\n")
	for _, f := range figs {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", f.Name, f.Value, f.Unit, f.Machine, f.Date)
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
