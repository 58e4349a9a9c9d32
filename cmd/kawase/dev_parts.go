package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kawase-fx/kawase/eventing/dispatch"
	"github.com/kawase-fx/kawase/eventing/manifest"
	"github.com/kawase-fx/kawase/functions/relay/extsim"
)

// Local parts of kawase dev beside the functions: the FIX simulator and the feeder replicas as
// supervised child processes, the external-system simulator in process, and the local dispatcher.
const (
	devFeederReplicaCount = 2
	devFIXUsername        = "kawase"
	devFIXSecretBytes     = 16
	devHMACSecretBytes    = 32
	// devFeederDeployment is the Deployment in config/ whose CPU limit the dev children run under.
	devFeederDeployment = "feeder"
)

// devChildren are the processes kawase dev supervises as a Deployment would: the FIX simulator and
// devFeederReplicaCount feeder replicas competing for leadership through a PostgreSQL advisory lock.
func (e *devEnv) devChildren(set *manifest.Set) ([]childSpec, error) {
	fixAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	controlAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	e.fixAddr, e.fixsimControl = fixAddr, "http://"+controlAddr
	procs, err := feederProcs(set)
	if err != nil {
		return nil, err
	}
	gomaxprocs := "GOMAXPROCS=" + strconv.Itoa(procs)
	pairs := joinPairs(e.cfg.Pairs)
	specs := []childSpec{{name: "fixsim", args: []string{"fixsim", "-listen", fixAddr, "-control", controlAddr,
		"-pairs", pairs, "-username", devFIXUsername, "-password", e.secrets.FIXPassword},
		env: []string{"KAWASE_MODE=dev", gomaxprocs}}}
	for i := range devFeederReplicaCount {
		port, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		_, p, _ := net.SplitHostPort(port)
		specs = append(specs, childSpec{name: "feeder-" + strconv.Itoa(i), args: []string{"feeder"}, env: []string{
			"KAWASE_MODE=dev", gomaxprocs, "KAWASE_LEADER_ELECTION=postgres", "POD_NAME=feeder-" + strconv.Itoa(i), "PORT=" + p,
			"KAWASE_FIX_ADDR=" + fixAddr, "KAWASE_FIX_USERNAME=" + devFIXUsername,
			"KAWASE_FIX_PASSWORD=" + e.secrets.FIXPassword, "KAWASE_PAIRS=" + pairs,
			"KAFKA_BROKERS=" + strings.Join(e.brokers, ","), "DATABASE_URL=" + e.dbURL,
		}})
	}
	return specs, nil
}

// feederProcs is the GOMAXPROCS a feeder pod gets in a cluster: Go sizes it from the container's CPU
// limit (rounded up), which config/feeder.yaml sets. Dev gives its children the same, rather than one
// per core of the machine: with a quote a millisecond, a process with more Ps than it needs spends
// much of its CPU waking idle threads to hand each quote over.
func feederProcs(set *manifest.Set) (int, error) {
	d := set.Deployment(devFeederDeployment)
	if d == nil {
		return 0, fmt.Errorf("dev: config/ has no Deployment %s", devFeederDeployment)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if cpu, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
			return cpuProcs(cpu), nil
		}
	}
	return 0, fmt.Errorf("dev: Deployment %s in config/ has no CPU limit", devFeederDeployment)
}

// cpuProcs is the GOMAXPROCS Go derives from a CPU limit: the limit rounded up, at least 1.
func cpuProcs(limit resource.Quantity) int {
	return max(1, int((limit.MilliValue()+999)/1000))
}

// superviseChildren returns one run per child; each restarts its child whenever it exits and records
// its PID in dev.json.
func (e *devEnv) superviseChildren(specs []childSpec) ([]func(context.Context) error, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("dev: find own binary: %w", err)
	}
	runs := make([]func(context.Context) error, 0, len(specs))
	for _, spec := range specs {
		log := e.log.Named(spec.name)
		runs = append(runs, func(ctx context.Context) error {
			return supervise(ctx, log, bin, spec, func(pid int) {
				e.children.set(spec.name, pid)
				if err := e.writeState(); err != nil {
					log.Warnw("updating dev.json", "error", err)
				}
			})
		})
	}
	return runs, nil
}

// startExtsim runs the external-system simulator in process (unless KAWASE_EXTERNAL_URL names a real
// one) and points the relay at it.
func (e *devEnv) startExtsim() (func(context.Context) error, error) {
	if e.cfg.ExternalURL != "" {
		return nil, nil
	}
	sched, err := extsim.ParseSchedule(devExtsimSchedule)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	url, serve, err := listenExtsim("127.0.0.1:0", extsim.Config{Secrets: e.cfg.RelayHMACSecrets, Schedule: sched})
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	e.cfg.ExternalURL = url
	e.extsim = strings.TrimSuffix(url, extsim.DeliveryPath)
	return serve, nil
}

// startDispatcher runs config/'s KafkaSources, KafkaChannel, Subscription and KafkaSinks locally,
// delivering to the functions mounted at devServicePath on httpAddr. Consumers whose subscriber is a
// function that is not running are left out, so their events wait in Kafka.
func (e *devEnv) startDispatcher(set *manifest.Set, httpAddr string, built map[string]bool, mux *http.ServeMux, d componentDeps) (func(context.Context) error, error) {
	top, err := dispatch.FromManifest(set)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	consumers := top.Consumers[:0]
	for _, c := range top.Consumers {
		if c.Subscriber.Kind == dispatch.KindService && !built[c.Subscriber.Name] {
			e.log.Warnw("subscriber not running; its events wait in Kafka", "consumer", c.ID(), "subscriber", c.Subscriber.Name)
			continue
		}
		consumers = append(consumers, c)
	}
	top.Consumers = consumers
	base := "http://" + httpAddr
	resolve := func(kind, name string) (string, error) {
		switch kind {
		case dispatch.KindService:
			return base + devServicePath(name) + "/", nil
		case dispatch.KindKafkaSink:
			return base + dispatch.SinkPath(name), nil
		case dispatch.KindKafkaChannel:
			return base + dispatch.ChannelPath(name), nil
		}
		return "", fmt.Errorf("dev: cannot resolve %s/%s", kind, name)
	}
	disp, err := dispatch.New(dispatch.Config{Brokers: e.brokers, TimeScale: e.cfg.TimeScale, Resolve: resolve,
		Log: e.log.Named("dispatch"), Registry: d.reg}, top)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	disp.Mount(mux)
	e.closers = append(e.closers, func() {
		if err := disp.Close(); err != nil {
			e.log.Warnw("closing dispatcher", "error", err)
		}
	})
	return disp.Run, nil
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("dev: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// The demo account kawase dev opens once per data directory and prints, so a user can trade at once.
const (
	devDemoCurrency    = "JPY"
	devDemoDeposit     = "10000000"
	devDemoWaitSec     = 120
	devDemoPollMs      = 500
	devDemoCallTimeout = 10 * time.Second
)

// announceDemo waits until the system answers, makes sure the demo account exists (reusing the one in
// secrets.json while its token still works), records it in dev.json and prints the URLs and its token.
// It never stops kawase dev: a failure is reported and the system runs on without a demo account.
func (e *devEnv) announceDemo(ctx context.Context) error {
	base := "http://" + e.httpAddr
	hc := &http.Client{Timeout: devDemoCallTimeout}
	deadline := time.Now().Add(devDemoWaitSec * time.Second)
	for !devReady(ctx, hc, base) {
		if time.Now().After(deadline) {
			e.log.Warnw("not ready in time; no demo account announced", "waitedSec", devDemoWaitSec)
			<-ctx.Done()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(devDemoPollMs * time.Millisecond):
		}
	}
	if err := e.ensureDemoAccount(ctx, hc, base); err != nil {
		e.log.Warnw("no demo account", "error", err)
	}
	if err := e.writeState(); err != nil {
		e.log.Warnw("updating dev.json", "error", err)
	}
	external := e.cfg.ExternalURL
	if e.extsim != "" {
		external = e.extsim + "/stats"
	}
	fmt.Printf("kawase dev is ready:\n  rate board  %s/\n  rates       %s/v1/rates\n  trading     %s/v1/accounts/%s  (Authorization: Bearer %s)\n  admin token %s\n  external    %s\n",
		base, base, base, e.secrets.DemoAccountID, e.secrets.DemoAccountToken, e.secrets.AdminToken, external)
	<-ctx.Done()
	return nil
}

func devReady(ctx context.Context, hc *http.Client, base string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (e *devEnv) ensureDemoAccount(ctx context.Context, hc *http.Client, base string) error {
	if id, tok := e.secrets.DemoAccountID, e.secrets.DemoAccountToken; id != "" && tok != "" {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/accounts/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("check demo account: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	body := strings.NewReader(`{"currency":"` + devDemoCurrency + `","deposit":"` + devDemoDeposit + `"}`)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/accounts", body)
	req.Header.Set("Authorization", "Bearer "+e.secrets.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("open demo account: %w", err)
	}
	defer resp.Body.Close()
	var acct struct{ ID, Token string }
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&acct) != nil || acct.Token == "" {
		return fmt.Errorf("open demo account: answered %s", resp.Status)
	}
	e.stateMu.Lock()
	e.secrets.DemoAccountID, e.secrets.DemoAccountToken = acct.ID, acct.Token
	e.stateMu.Unlock()
	return e.saveSecrets()
}
