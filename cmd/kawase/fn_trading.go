package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/functions/trading"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// newTradingComponent builds the trading function: the REST API under /v1/accounts, CloudEvent
// order requests at POST / and /v1/order-requests, commands to kawase.commands, reads through the
// ledger's gRPC LedgerService, and (background) the tail of kawase.order.results.
func newTradingComponent(ctx context.Context, d componentDeps) (*component, error) {
	if d.dbURL == "" {
		return nil, errors.New("trading needs DATABASE_URL")
	}
	if d.ledgerGRPC == "" {
		return nil, errors.New("trading needs KAWASE_LEDGER_GRPC (the ledger's gRPC address)")
	}
	if d.cfg.AdminToken == "" {
		if d.cfg.Mode != modeDev {
			return nil, errors.New("trading needs KAWASE_ADMIN_TOKEN")
		}
		d.log.Warnw("no admin token: accounts cannot be opened through the REST API")
	}
	if err := trading.Migrate(ctx, d.dbURL); err != nil {
		return nil, fmt.Errorf("trading: %w", err)
	}
	pool, err := pgdb.Open(ctx, d.dbURL)
	if err != nil {
		return nil, fmt.Errorf("trading: %w", err)
	}
	conn, err := grpc.NewClient(d.ledgerGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("trading: ledger client: %w", err)
	}
	cfg := trading.DefaultConfig()
	cfg.AdminToken = d.cfg.AdminToken
	svc, err := trading.New(cfg, trading.Deps{Pool: pool, Ledger: ledgerv1.NewLedgerServiceClient(conn),
		Brokers: d.brokers, Log: d.log, Registry: d.reg})
	if err != nil {
		conn.Close()
		pool.Close()
		return nil, err
	}
	d.health.AddCheck("trading_database", pool.Ping)
	d.health.AddCheck("trading_results", svc.Ready)
	return &component{
		handler: svc.Handler(),
		public:  trading.PublicPatterns(),
		run:     svc.Run,
		close: func() {
			svc.Close()
			conn.Close()
			pool.Close()
		},
	}, nil
}

// The trading CLI: `kawase account …` and `kawase order …` over the REST API.

// Limits of the trading CLI.
const (
	tradingCLITimeoutMs   = 30_000
	tradingCLIAnswerBytes = 4 << 20
)

const tradingUsage = `usage:
  kawase account create --currency JPY|USD --deposit AMOUNT        (admin token; prints the account's token)
  kawase account show <account>
  kawase account positions|trades|transactions <account> [--from N] [--page-size N]
  kawase order place <account> --pair P --side buy|sell --units N [--type market|limit|stop] [--price P]
                     [--bound P] [--tif FOK|IOC|GTC|GTD] [--good-till RFC3339] [--client-id ID] [--key KEY]
  kawase order list <account> [--status pending|filled|rejected|cancelled|expired] [--from N] [--page-size N]
  kawase order show <account> <order id | @client id>
  kawase order cancel <account> <order id | @client id>
a POST without --key gets a fresh Idempotency-Key, named in the error when the outcome is unknown;
every command also takes --url URL and --token TOKEN (default KAWASE_URL, KAWASE_TOKEN, else the running
kawase dev's .run/dev.json, whose token is the admin's); answers are printed as JSON.`

// runTradingCLI is `kawase account …` and `kawase order …` (noun is "account" or "order").
func runTradingCLI(ctx context.Context, cfg config, noun string, args []string) error {
	return tradingCLI(ctx, os.Stdout, cfg.DataDir, apiTarget{URL: cfg.URL, Token: cfg.Token}, noun, args)
}

// tradingCLIFlags are the flags of every trading CLI command.
type tradingCLIFlags struct {
	target                                          apiTarget
	currency, deposit, status                       string
	pair, side, units, typ, price, bound, tif, till string
	clientID, key                                   string
	from, pageSize                                  int
}

// tradingCLI runs one command, writing the answer to out.
func tradingCLI(ctx context.Context, out io.Writer, dataDir string, env apiTarget, noun string, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s needs a command\n%s", errUsage, noun, tradingUsage)
	}
	verb, rest := args[0], args[1:]
	if verb == "help" || verb == "-h" || verb == "--help" {
		fmt.Fprintln(out, tradingUsage)
		return nil
	}
	var f tradingCLIFlags
	fs := flag.NewFlagSet(noun+" "+verb, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.target.URL, "url", "", "REST API base URL")
	fs.StringVar(&f.target.Token, "token", "", "bearer token")
	for name, p := range map[string]*string{"currency": &f.currency, "deposit": &f.deposit, "status": &f.status,
		"pair": &f.pair, "side": &f.side, "units": &f.units, "type": &f.typ, "price": &f.price, "bound": &f.bound,
		"tif": &f.tif, "good-till": &f.till, "client-id": &f.clientID, "key": &f.key} {
		fs.StringVar(p, name, "", name)
	}
	fs.IntVar(&f.from, "from", 0, "first id of the page")
	fs.IntVar(&f.pageSize, "page-size", 0, "page size")
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %v\n%s", errUsage, noun, verb, err, tradingUsage)
	}
	var bad string
	fs.Visit(func(fl *flag.Flag) {
		if (fl.Name == "from" && f.from < 0) || (fl.Name == "page-size" && f.pageSize < 1) {
			bad = fl.Name
		}
	})
	if bad != "" {
		return fmt.Errorf("%w: %s %s: --%s must be positive\n%s", errUsage, noun, verb, bad, tradingUsage)
	}
	method, path, body, key, err := tradingRequest(noun, verb, pos, f)
	if err != nil {
		return err
	}
	if method == http.MethodPost && key == "" {
		// A key of its own, so a retry after a timeout (with --key, as the error says) cannot place
		// the order or open the account twice.
		if key, err = newCLIIdempotencyKey(); err != nil {
			return err
		}
	}
	if err := resolveTradingTarget(&f.target, env, dataDir); err != nil {
		return err
	}
	return tradingCall(ctx, out, f.target, method, path, body, key)
}

// tradingRequest turns a command into its REST request.
func tradingRequest(noun, verb string, pos []string, f tradingCLIFlags) (method, path string, body any, key string, err error) {
	need := func(n int) error {
		if len(pos) != n {
			return fmt.Errorf("%w: %s %s takes %d argument(s)\n%s", errUsage, noun, verb, n, tradingUsage)
		}
		return nil
	}
	page := func(p string, extra url.Values) string {
		q := url.Values{}
		for k, v := range extra {
			q[k] = v
		}
		if f.from > 0 {
			q.Set("from", strconv.Itoa(f.from))
		}
		if f.pageSize > 0 {
			q.Set("pageSize", strconv.Itoa(f.pageSize))
		}
		if len(q) == 0 {
			return p
		}
		return p + "?" + q.Encode()
	}
	acct := func() string { return "/v1/accounts/" + url.PathEscape(pos[0]) }
	switch noun + " " + verb {
	case "account create":
		return http.MethodPost, "/v1/accounts", map[string]string{"currency": f.currency, "deposit": f.deposit}, f.key, need(0)
	case "account show":
		if err := need(1); err != nil {
			return "", "", nil, "", err
		}
		return http.MethodGet, acct(), nil, "", nil
	case "account positions":
		if err := need(1); err != nil {
			return "", "", nil, "", err
		}
		return http.MethodGet, acct() + "/positions", nil, "", nil
	case "account trades", "account transactions":
		if err := need(1); err != nil {
			return "", "", nil, "", err
		}
		return http.MethodGet, page(acct()+"/"+verb, nil), nil, "", nil
	case "order place":
		if err := need(1); err != nil {
			return "", "", nil, "", err
		}
		o := map[string]string{"pair": f.pair, "side": f.side, "units": f.units, "type": f.typ, "price": f.price,
			"priceBound": f.bound, "timeInForce": f.tif, "goodTill": f.till, "clientOrderId": f.clientID}
		for k, v := range o {
			if v == "" {
				delete(o, k)
			}
		}
		return http.MethodPost, acct() + "/orders", o, f.key, nil
	case "order list":
		if err := need(1); err != nil {
			return "", "", nil, "", err
		}
		extra := url.Values{}
		if f.status != "" {
			extra.Set("status", f.status)
		}
		return http.MethodGet, page(acct()+"/orders", extra), nil, "", nil
	case "order show", "order cancel":
		if err := need(2); err != nil {
			return "", "", nil, "", err
		}
		m := http.MethodGet
		if verb == "cancel" {
			m = http.MethodDelete
		}
		return m, acct() + "/orders/" + url.PathEscape(pos[1]), nil, "", nil
	}
	return "", "", nil, "", fmt.Errorf("%w: unknown command %s %s\n%s", errUsage, noun, verb, tradingUsage)
}

// resolveTradingTarget fills the URL and token from the flags, then env, then dev.json.
func resolveTradingTarget(t *apiTarget, env apiTarget, dataDir string) error {
	if t.URL == "" {
		t.URL = env.URL
	}
	if t.Token == "" {
		t.Token = env.Token
	}
	if t.URL == "" || t.Token == "" {
		dev, err := devStateTarget(dataDir)
		if err != nil && t.URL == "" {
			return fmt.Errorf("no API address: set KAWASE_URL or --url, or run kawase dev in this checkout (%w)", err)
		}
		if t.URL == "" {
			t.URL = dev.URL
		}
		if t.Token == "" {
			t.Token = dev.Token
		}
	}
	if t.Token == "" {
		return errors.New("no token: set KAWASE_TOKEN or --token")
	}
	t.URL = strings.TrimRight(t.URL, "/")
	return nil
}

// cliIdempotencyKeyBytes is the randomness of a key the CLI makes for a POST given none.
const cliIdempotencyKeyBytes = 16

// newCLIIdempotencyKey returns a fresh random Idempotency-Key.
func newCLIIdempotencyKey() (string, error) {
	b := make([]byte, cliIdempotencyKeyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make an idempotency key: %w", err)
	}
	return "cli-" + hex.EncodeToString(b), nil
}

// retryHint tells how to retry a POST whose outcome is unknown without doing it twice.
func retryHint(key string) string {
	if key == "" {
		return ""
	}
	return fmt.Sprintf("; the outcome may be unknown: run it again with --key %s to retry without doing it twice", key)
}

// tradingCall sends one request and prints the answer indented; a non-2xx answer is an error with
// the problem's title, detail and code.
func tradingCall(ctx context.Context, out io.Writer, t apiTarget, method, path string, body any, key string) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, tradingCLITimeoutMs*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, t.URL+path, rd)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+t.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w%s", method, path, err, retryHint(key))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, tradingCLIAnswerBytes))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var p struct{ Title, Detail, Code string }
		perr := json.Unmarshal(b, &p)
		hint := ""
		if resp.StatusCode >= http.StatusInternalServerError || p.Code == "idempotency_key_in_flight" {
			hint = retryHint(key)
		}
		if perr == nil && p.Code != "" {
			return fmt.Errorf("%s %s: %s: %s (%s, HTTP %d)%s", method, path, p.Title, p.Detail, p.Code, resp.StatusCode, hint)
		}
		return fmt.Errorf("%s %s: HTTP %d: %s%s", method, path, resp.StatusCode, strings.TrimSpace(string(b)), hint)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("answer is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	if resp.StatusCode == http.StatusAccepted {
		buf.WriteString("(not decided yet; the order is queued — check it with kawase order show)\n")
	}
	_, err = out.Write(buf.Bytes())
	return err
}
