package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const modulePath = "github.com/kawase-fx/kawase"

// layer returns the architectural layer of a package of this module and, for functions, which one.
func layer(pkg string) (name, function string) {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, modulePath), "/")
	top, rest, _ := strings.Cut(rel, "/")
	if top == "functions" {
		fn, _, _ := strings.Cut(rest, "/")
		return "functions", fn
	}
	return top, ""
}

// allowed says whether a package in layer from (function fromFn) may import one in layer to (toFn):
// proto <- eventing <- functions/*, feeder; config is data anyone may embed; cmd and bench wire
// everything; a function never imports another function.
func allowed(from, fromFn, to, toFn string) bool {
	switch to {
	case "config", "proto":
		return from != "proto" || to == "proto"
	case "eventing":
		return from != "proto" && from != "config"
	case "functions":
		return from == "cmd" || from == "bench" || (from == "functions" && fromFn == toFn)
	case "feeder":
		return from == "cmd" || from == "bench" || from == "feeder"
	}
	return from == "cmd" && to == "cmd" || from == "bench" && to == "bench"
}

// TestImportsFlowOneWay enforces the import rule on every package of the module, tests included.
func TestImportsFlowOneWay(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "-test=false", modulePath+"/...")
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(out)
	checked := 0
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		checked++
		from, fromFn := layer(p.ImportPath)
		for _, imp := range append(append(p.Imports, p.TestImports...), p.XTestImports...) {
			if !strings.HasPrefix(imp, modulePath+"/") {
				continue
			}
			to, toFn := layer(imp)
			if !allowed(from, fromFn, to, toFn) {
				t.Errorf("%s imports %s: %s may not import %s", p.ImportPath, imp, from, to)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if checked < 5 {
		t.Fatalf("checked only %d packages", checked)
	}
}

func TestLayerRules(t *testing.T) {
	cases := []struct {
		from, to string
		ok       bool
	}{
		{modulePath + "/functions/ledger", modulePath + "/eventing/cekafka", true},
		{modulePath + "/functions/ledger", modulePath + "/functions/rates", false},
		{modulePath + "/functions/ledger/store", modulePath + "/functions/ledger", true},
		{modulePath + "/eventing", modulePath + "/functions/ledger", false},
		{modulePath + "/eventing/cekafka", modulePath + "/feeder", false},
		{modulePath + "/proto/ratesv1", modulePath + "/eventing", false},
		{modulePath + "/feeder", modulePath + "/functions/rates", false},
		{modulePath + "/feeder/fixsim", modulePath + "/eventing/fx", true},
		{modulePath + "/eventing/manifest", modulePath + "/config", true},
		{modulePath + "/cmd/kawase", modulePath + "/functions/rates", true},
		{modulePath + "/eventing", modulePath + "/cmd/kawase", false},
	}
	for _, c := range cases {
		f, ff := layer(c.from)
		to, tf := layer(c.to)
		if got := allowed(f, ff, to, tf); got != c.ok {
			t.Errorf("%s -> %s: allowed = %v, want %v", c.from, c.to, got, c.ok)
		}
	}
}
