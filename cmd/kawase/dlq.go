package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kawase-fx/kawase/functions/deadletters"
)

// Limits of the dlq CLI.
const (
	// dlqRequestTimeoutMs bounds one API call; a filter replay of many letters takes a while.
	dlqRequestTimeoutMs = 300_000
	// dlqAnswerBytesMax bounds an API answer the CLI reads.
	dlqAnswerBytesMax = 16 << 20
	// dlqCellRunesMax shortens long cells (destinations, ids) in tables.
	dlqCellRunesMax = 48
)

const dlqUsage = `usage:
  kawase dlq list    [--category parked|rejected] [--type T] [--status open|replayed|discarded|all]
                     [--since 2h|RFC3339] [--dest URL] [--limit N] [--after ID]
  kawase dlq show    <id>
  kawase dlq replay  <id>
  kawase dlq replay  --all [--category C] [--type T] [--since S] [--dest URL] [--limit N]
  kawase dlq discard <id> --reason "why"
every command also takes --url URL, --token TOKEN (default KAWASE_URL, KAWASE_TOKEN, else the running
kawase dev's .run/dev.json) and -o table|json. As a kn plugin: kn kawase dlq ...`

// apiTarget is where the CLI finds the REST API and the token to send.
type apiTarget struct {
	URL   string
	Token string
}

// runDLQ is `kawase dlq` (and `kn kawase dlq`): dead letters over the REST API.
func runDLQ(ctx context.Context, cfg config, args []string) error {
	return dlqMain(ctx, os.Stdout, cfg.DataDir, apiTarget{URL: cfg.URL, Token: cfg.Token}, args)
}

// dlqMain runs one dlq command, writing to out. env is KAWASE_URL/KAWASE_TOKEN; dataDir holds the
// dev.json that fills in what neither the flags nor env give.
func dlqMain(ctx context.Context, out io.Writer, dataDir string, env apiTarget, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: dlq needs a command\n%s", errUsage, dlqUsage)
	}
	cmd, rest := args[0], args[1:]
	c := &dlqCommand{out: out}
	fs := flag.NewFlagSet("dlq "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.target.URL, "url", "", "REST API base URL (default KAWASE_URL, else .run/dev.json)")
	fs.StringVar(&c.target.Token, "token", "", "admin token (default KAWASE_TOKEN, else .run/dev.json)")
	fs.StringVar(&c.format, "o", "table", "output: table or json")
	var run func(ctx context.Context, pos []string) error
	switch cmd {
	case "list", "ls":
		c.listFlags(fs)
		run = c.list
	case "show", "get":
		run = c.show
	case "replay":
		c.replayFlags(fs)
		run = c.replay
	case "discard", "rm":
		fs.StringVar(&c.reason, "reason", "", "why the dead letter is discarded (required)")
		run = c.discard
	case "help", "-h", "--help":
		fmt.Fprintln(out, dlqUsage)
		return nil
	default:
		return fmt.Errorf("%w: unknown dlq command %q\n%s", errUsage, cmd, dlqUsage)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return fmt.Errorf("%w: dlq %s: %v\n%s", errUsage, cmd, err, dlqUsage)
	}
	if c.format != "table" && c.format != "json" {
		return fmt.Errorf("%w: -o must be table or json, not %q", errUsage, c.format)
	}
	if err := c.resolve(env, dataDir); err != nil {
		return err
	}
	return run(ctx, pos)
}

// parseInterspersed parses flags that may come before or after positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// dlqCommand holds one command's flags and where it talks to.
type dlqCommand struct {
	out    io.Writer
	target apiTarget
	format string
	// list and replay --all filters
	category, eventType, status, since, dest string
	limit                                    int
	after                                    int64
	all                                      bool
	reason                                   string
}

func (c *dlqCommand) listFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.category, "category", "", "parked or rejected")
	fs.StringVar(&c.eventType, "type", "", "event type, e.g. kawase.trade.executed.v1")
	fs.StringVar(&c.status, "status", "", "open (default), replayed, discarded or all")
	fs.StringVar(&c.since, "since", "", "last failure no earlier than this (RFC 3339) or this long ago (2h)")
	fs.StringVar(&c.dest, "dest", "", "destination URL (knativeerrordest)")
	fs.IntVar(&c.limit, "limit", 0, "page size (server default 50)")
	fs.Int64Var(&c.after, "after", 0, "list after this id (the previous page's last)")
}

func (c *dlqCommand) replayFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.all, "all", false, "replay every open dead letter the filters select")
	fs.StringVar(&c.category, "category", "", "parked or rejected (with --all)")
	fs.StringVar(&c.eventType, "type", "", "event type (with --all)")
	fs.StringVar(&c.since, "since", "", "last failure no earlier than this (with --all)")
	fs.StringVar(&c.dest, "dest", "", "destination URL (with --all)")
	fs.IntVar(&c.limit, "limit", 0, "replay at most this many (with --all; server maximum 1000)")
}

// devStateTarget reads the API address and admin token of the kawase dev running in dataDir.
func devStateTarget(dataDir string) (apiTarget, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, devStateFile))
	if err != nil {
		return apiTarget{}, err
	}
	var st devState
	if err := json.Unmarshal(b, &st); err != nil {
		return apiTarget{}, fmt.Errorf("read %s: %w", filepath.Join(dataDir, devStateFile), err)
	}
	return apiTarget{URL: st.HTTP, Token: st.AdminToken}, nil
}

// resolve fills the target from the flags, then env, then dev.json.
func (c *dlqCommand) resolve(env apiTarget, dataDir string) error {
	if c.target.URL == "" {
		c.target.URL = env.URL
	}
	if c.target.Token == "" {
		c.target.Token = env.Token
	}
	if c.target.URL == "" || c.target.Token == "" {
		dev, err := devStateTarget(dataDir)
		if err != nil && c.target.URL == "" {
			return fmt.Errorf("dlq: no API address: set KAWASE_URL or --url, or run kawase dev in this checkout (%v)", err)
		}
		if c.target.URL == "" {
			c.target.URL = dev.URL
		}
		if c.target.Token == "" {
			c.target.Token = dev.Token
		}
	}
	if c.target.Token == "" {
		return errors.New("dlq: no token: set KAWASE_TOKEN or --token")
	}
	c.target.URL = strings.TrimRight(c.target.URL, "/")
	return nil
}

// call sends one API request and returns the answer's body; a non-2xx answer is an error carrying
// the problem's title, detail and code.
func (c *dlqCommand) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("dlq: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, dlqRequestTimeoutMs*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.target.URL+path, rd)
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.target.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		req.Header.Set(deadletters.HeaderActor, u.Username)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, dlqAnswerBytesMax))
	if err != nil {
		return nil, fmt.Errorf("dlq: read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var p struct{ Title, Detail, Code string }
		if json.Unmarshal(b, &p) == nil && p.Code != "" {
			return b, fmt.Errorf("dlq: %s %s: %s: %s (%s, HTTP %d)", method, path, p.Title, p.Detail, p.Code, resp.StatusCode)
		}
		return b, fmt.Errorf("dlq: %s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// fetch calls the API and, with -o json, prints the answer as it is (printed is true); otherwise it
// decodes the answer into v for the caller to print.
func (c *dlqCommand) fetch(ctx context.Context, method, path string, body, v any) (printed bool, err error) {
	b, err := c.call(ctx, method, path, body)
	if err != nil {
		return false, err
	}
	if c.format == "json" {
		return true, c.printJSON(b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("dlq: %w", err)
	}
	return false, nil
}

// printJSON writes an answer indented, for -o json.
func (c *dlqCommand) printJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("dlq: answer is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := c.out.Write(buf.Bytes())
	return err
}

func (c *dlqCommand) list(ctx context.Context, pos []string) error {
	if len(pos) > 0 {
		return fmt.Errorf("%w: dlq list takes no arguments", errUsage)
	}
	q := url.Values{}
	for k, v := range map[string]string{"category": c.category, "type": c.eventType, "status": c.status,
		"since": c.since, "dest": c.dest} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if c.limit > 0 {
		q.Set("pageSize", strconv.Itoa(c.limit))
	}
	if c.after > 0 {
		q.Set("after", strconv.FormatInt(c.after, 10))
	}
	var page deadletters.ListPage
	if printed, err := c.fetch(ctx, http.MethodGet, "/v1/deadletters?"+q.Encode(), nil, &page); err != nil || printed {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCATEGORY\tSTATUS\tCODE\tTYPE\tEVENT ID\tFAILURES\tLAST FAILED\tDESTINATION")
	for _, d := range page.Items {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Category, d.Status, codeText(d.ErrorCode),
			d.EventType, cell(d.EventID), d.FailureCount, d.LastFailedAt.UTC().Format(time.DateTime), cell(d.ErrorDest))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(page.Items) == 0 {
		fmt.Fprintln(c.out, "no dead letters")
	}
	if page.NextAfter > 0 {
		fmt.Fprintf(c.out, "more: kawase dlq list --after %d\n", page.NextAfter)
	}
	return nil
}

func codeText(code *int) string {
	if code == nil {
		return "-"
	}
	return strconv.Itoa(*code)
}

func cell(s string) string {
	r := []rune(s)
	if len(r) <= dlqCellRunesMax {
		return s
	}
	return string(r[:dlqCellRunesMax-1]) + "…"
}

func oneID(cmd string, pos []string) (string, error) {
	if len(pos) != 1 {
		return "", fmt.Errorf("%w: dlq %s takes one dead-letter id\n%s", errUsage, cmd, dlqUsage)
	}
	if _, err := strconv.ParseInt(pos[0], 10, 64); err != nil {
		return "", fmt.Errorf("%w: %q is not a dead-letter id", errUsage, pos[0])
	}
	return pos[0], nil
}

func (c *dlqCommand) show(ctx context.Context, pos []string) error {
	id, err := oneID("show", pos)
	if err != nil {
		return err
	}
	var d deadletters.DeadLetter
	if printed, err := c.fetch(ctx, http.MethodGet, "/v1/deadletters/"+id, nil, &d); err != nil || printed {
		return err
	}
	c.printLetter(d)
	return nil
}

// categoryText explains a category to a person.
var categoryText = map[string]string{
	deadletters.CategoryParked:   "parked: the destination was unavailable; redriven automatically once it answers",
	deadletters.CategoryRejected: "rejected: the destination refused it; fix the cause, then replay (or discard)",
}

func (c *dlqCommand) printLetter(d deadletters.DeadLetter) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
	}
	row("id", "%d", d.ID)
	row("event", "%s (%s from %s)", d.EventID, d.EventType, d.EventSource)
	if d.PartitionKey != "" {
		row("partition key", "%s", d.PartitionKey)
	}
	row("category", "%s", categoryText[d.Category])
	row("status", "%s", d.Status)
	row("destination", "%s", d.ErrorDest)
	row("error code", "%s", codeText(d.ErrorCode))
	if reason := problemReason(d.ErrorData); reason != "" {
		row("reason", "%s", reason)
	}
	if d.ErrorData != "" {
		row("error data", "%s", d.ErrorData)
	}
	if d.ErrorDataBase64 != "" {
		row("error data (base64)", "%s", d.ErrorDataBase64)
	}
	if d.KafkaPartition != nil && d.KafkaOffset != nil {
		row("kafka record", "partition %d, offset %d", *d.KafkaPartition, *d.KafkaOffset)
	}
	row("failures", "%d (first %s, last %s)", d.FailureCount, stamp(&d.FirstFailedAt), stamp(&d.LastFailedAt))
	row("replays", "%d", d.ReplayCount)
	if d.LastReplayAt != nil && d.LastReplayError != "" {
		row("last replay", "%s: %s", stamp(d.LastReplayAt), d.LastReplayError)
	}
	if d.ReplayedAt != nil {
		row("replayed", "%s by %s", stamp(d.ReplayedAt), d.ReplayedBy)
	}
	if d.DiscardedAt != nil {
		row("discarded", "%s by %s: %s", stamp(d.DiscardedAt), d.DiscardedBy, d.DiscardReason)
	}
	_ = tw.Flush()
	if d.Event != nil {
		fmt.Fprintln(c.out, "event attributes:")
		tw = tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		for _, k := range slices.Sorted(maps.Keys(d.Event.Attributes)) {
			fmt.Fprintf(tw, "  %s:\t%s\n", k, d.Event.Attributes[k])
		}
		_ = tw.Flush()
		switch {
		case len(d.Event.Data) > 0:
			var buf bytes.Buffer
			if json.Indent(&buf, d.Event.Data, "  ", "  ") != nil {
				buf.Write(d.Event.Data)
			}
			fmt.Fprintf(c.out, "data:\n  %s\n", buf.String())
		case d.Event.DataBase64 != "":
			fmt.Fprintf(c.out, "data (base64):\n  %s\n", d.Event.DataBase64)
		}
	}
	if len(d.History) > 0 {
		fmt.Fprintln(c.out, "history:")
		for _, a := range d.History {
			fmt.Fprintf(c.out, "  %s  %s by %s", stamp(&a.At), a.Action, a.Actor)
			if a.Reason != "" {
				fmt.Fprintf(c.out, " (%s)", a.Reason)
			}
			if a.Outcome != "" {
				fmt.Fprintf(c.out, ": %s", a.Outcome)
			}
			fmt.Fprintln(c.out)
		}
	}
}

// problemReason pulls the human part out of a problem+json answer kept as error data.
func problemReason(data string) string {
	var p struct{ Title, Detail string }
	if json.Unmarshal([]byte(data), &p) != nil {
		return ""
	}
	if p.Detail != "" {
		return p.Detail
	}
	return p.Title
}

func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

func (c *dlqCommand) replay(ctx context.Context, pos []string) error {
	if c.all {
		if len(pos) > 0 {
			return fmt.Errorf("%w: dlq replay takes an id or --all, not both", errUsage)
		}
		return c.replayAll(ctx)
	}
	id, err := oneID("replay", pos)
	if err != nil {
		return err
	}
	var d deadletters.DeadLetter
	if printed, err := c.fetch(ctx, http.MethodPost, "/v1/deadletters/"+id+"/replay", nil, &d); err != nil || printed {
		return err
	}
	fmt.Fprintf(c.out, "replayed dead letter %d (event %s) to %s\n", d.ID, d.EventID, d.ErrorDest)
	return nil
}

func (c *dlqCommand) replayAll(ctx context.Context) error {
	var rep deadletters.ReplayReport
	if printed, err := c.fetch(ctx, http.MethodPost, "/v1/deadletters/replay", deadletters.ReplayFilter{Category: c.category,
		Type: c.eventType, Dest: c.dest, Since: c.since, Limit: c.limit}, &rep); err != nil || printed {
		return err
	}
	fmt.Fprintf(c.out, "matched %d, replayed %d, failed %d\n", rep.Matched, rep.Replayed, rep.Failed)
	for _, f := range rep.Failures {
		fmt.Fprintf(c.out, "  %d (%s): %s\n", f.ID, f.Category, f.Error)
	}
	if rep.Failed > 0 {
		return fmt.Errorf("dlq: %d dead letters not replayed", rep.Failed)
	}
	return nil
}

func (c *dlqCommand) discard(ctx context.Context, pos []string) error {
	id, err := oneID("discard", pos)
	if err != nil {
		return err
	}
	if strings.TrimSpace(c.reason) == "" {
		return fmt.Errorf("%w: dlq discard needs --reason", errUsage)
	}
	var d deadletters.DeadLetter
	if printed, err := c.fetch(ctx, http.MethodDelete, "/v1/deadletters/"+id, map[string]string{"reason": c.reason}, &d); err != nil || printed {
		return err
	}
	fmt.Fprintf(c.out, "discarded dead letter %d (event %s) by %s: %s\n", d.ID, d.EventID, d.DiscardedBy, d.DiscardReason)
	return nil
}
