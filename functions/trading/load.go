package trading

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Limits of Load.
const (
	loadRequestTimeoutMs = 30_000
	loadAccountsMax      = 10_000
	loadErrorSamplesMax  = 5
)

// LoadConfig describes a market-order load against a running trading API (for the bench program and
// the benchmarks): Accounts accounts are opened with the admin token, then one worker per account
// places market orders, alternately buying and selling so margin never runs out, one at a time (the
// way one client trades one account), until Duration has passed or Orders orders were placed.
type LoadConfig struct {
	// URL is the base URL of the trading REST API, e.g. http://127.0.0.1:8080.
	URL        string
	AdminToken string
	// Accounts is the number of accounts, and so of concurrent workers.
	Accounts int
	Duration time.Duration
	// Orders stops the load after this many orders in all (0: Duration only).
	Orders int
	// Pair and Units are what each order trades (default USD_JPY, 1000).
	Pair, Units string
	// Currency and Deposit open each account (default JPY, 100000000).
	Currency, Deposit string
	Client            *http.Client
}

// LoadResult is what a load measured.
type LoadResult struct {
	Orders   int
	Filled   int
	Rejected int
	// Pending is the number of 202 answers (no decision within the wait).
	Pending int
	Errors  int
	// ErrorSamples describes a few of the errors.
	ErrorSamples    []string
	Elapsed         time.Duration
	OrdersPerSecond float64
	P50, P99, Max   time.Duration
}

// Load runs the load of cfg and measures orders/s and the latency of each order, from sending the
// request to reading the answer.
func Load(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if err := cfg.defaults(); err != nil {
		return LoadResult{}, err
	}
	tokens, err := openLoadAccounts(ctx, cfg)
	if err != nil {
		return LoadResult{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Duration > 0 {
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	var mu sync.Mutex
	var res LoadResult
	var lat []time.Duration
	budget := make(chan struct{}, max(cfg.Orders, 1))
	for range cfg.Orders {
		budget <- struct{}{}
	}
	started := time.Now()
	var wg sync.WaitGroup
	for _, a := range tokens {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				if cfg.Orders > 0 {
					select {
					case <-budget:
					default:
						return
					}
				}
				side := "buy"
				if n%2 == 1 {
					side = "sell"
				}
				t0 := time.Now()
				status, order, err := placeLoadOrder(ctx, cfg, a, side)
				d := time.Since(t0)
				if ctx.Err() != nil && err != nil {
					return
				}
				mu.Lock()
				res.record(status, order, err)
				if err == nil {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(started)
	res.summarize(lat)
	return res, nil
}

func (cfg *LoadConfig) defaults() error {
	if cfg.URL == "" || cfg.AdminToken == "" || cfg.Accounts < 1 || cfg.Accounts > loadAccountsMax {
		return fmt.Errorf("load: URL, AdminToken and 1..%d Accounts are required", loadAccountsMax)
	}
	if cfg.Duration <= 0 && cfg.Orders <= 0 {
		return errors.New("load: Duration or Orders is required")
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	if cfg.Pair == "" {
		cfg.Pair = "USD_JPY"
	}
	if cfg.Units == "" {
		cfg.Units = "1000"
	}
	if cfg.Currency == "" {
		cfg.Currency, cfg.Deposit = "JPY", "100000000"
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: loadRequestTimeoutMs * time.Millisecond,
			Transport: &http.Transport{MaxIdleConns: 2 * cfg.Accounts, MaxIdleConnsPerHost: 2 * cfg.Accounts}}
	}
	return nil
}

type loadAccount struct {
	id, token string
}

func openLoadAccounts(ctx context.Context, cfg LoadConfig) ([]loadAccount, error) {
	out := make([]loadAccount, 0, cfg.Accounts)
	for range cfg.Accounts {
		body, _ := json.Marshal(map[string]string{"currency": cfg.Currency, "deposit": cfg.Deposit})
		status, raw, err := loadDo(ctx, cfg.Client, http.MethodPost, cfg.URL+"/v1/accounts", cfg.AdminToken, body)
		if err != nil {
			return nil, fmt.Errorf("load: open account: %w", err)
		}
		var a NewAccountView
		if status != http.StatusCreated || json.Unmarshal(raw, &a) != nil {
			return nil, fmt.Errorf("load: open account: %d %s", status, raw)
		}
		out = append(out, loadAccount{id: a.ID, token: a.Token})
	}
	return out, nil
}

func placeLoadOrder(ctx context.Context, cfg LoadConfig, a loadAccount, side string) (int, OrderView, error) {
	body, _ := json.Marshal(map[string]string{"pair": cfg.Pair, "side": side, "units": cfg.Units, "type": "market"})
	status, raw, err := loadDo(ctx, cfg.Client, http.MethodPost, cfg.URL+accountPath(a.id)+"/orders", a.token, body)
	if err != nil {
		return 0, OrderView{}, err
	}
	var o OrderView
	if status/100 != 2 || json.Unmarshal(raw, &o) != nil {
		return status, o, fmt.Errorf("status %d: %s", status, bytes.TrimSpace(raw))
	}
	return status, o, nil
}

func loadDo(ctx context.Context, c *http.Client, method, url, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

func (r *LoadResult) record(status int, o OrderView, err error) {
	r.Orders++
	switch {
	case err != nil:
		r.Errors++
		if len(r.ErrorSamples) < loadErrorSamplesMax {
			r.ErrorSamples = append(r.ErrorSamples, err.Error())
		}
	case status == http.StatusAccepted:
		r.Pending++
	case o.Status == "filled":
		r.Filled++
	default:
		r.Rejected++
	}
}

func (r *LoadResult) summarize(lat []time.Duration) {
	if r.Elapsed > 0 {
		r.OrdersPerSecond = float64(r.Orders-r.Errors) / r.Elapsed.Seconds()
	}
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	r.P50, r.P99, r.Max = at(0.50), at(0.99), lat[len(lat)-1]
}
