# kawase — the two commands are `make run` and `make test`; everything they need is installed here.
GO      ?= go
BIN     := bin/kawase
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# OS packages the system and its tests use: PostgreSQL (the system of record, and pgbench for make bench),
# kcat (an independent Kafka client the binding is tested against) and Chromium (the rate board's
# headless browser test).
APT_PKGS := postgresql kcat chromium
TEST_TIMEOUT ?= 45m

.PHONY: run test bench lint proto deploy install deps build clean

## run: build and run the whole system on this machine (Ctrl-C stops every part)
run: deps build
	exec ./$(BIN) dev

## test: every test, against real PostgreSQL, the embedded broker over TCP and real FIX sessions
test: deps
	KAWASE_REQUIRE_TOOLS=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## bench: benchmarks and load scenarios; writes bench/results.md and bench/results.json
bench: deps
	$(GO) run ./bench -out bench

## lint: go vet plus the one-way import rule (proto <- eventing <- functions/*, feeder)
lint:
	$(GO) vet ./...
	$(GO) test -count=1 -run 'TestImportsFlowOneWay' ./cmd/kawase

## proto: regenerate gRPC code from proto/ with pinned generators
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
proto:
	@command -v protoc >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO_GRPC)
	@files=$$(find proto -name '*.proto'); if [ -z "$$files" ]; then echo "no .proto files"; exit 0; fi; \
	PATH=$(CURDIR)/bin:$$PATH protoc -I proto --go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative $$files

## deploy: apply config/ to the current Kubernetes cluster with ko (KO_DOCKER_REPO must be set)
deploy:
	ko apply -f config/

## install: kawase and kn-kawase (the kn plugin) into $GOBIN
install:
	$(GO) install ./cmd/kawase
	@gobin=$$($(GO) env GOBIN); gobin=$${gobin:-$$($(GO) env GOPATH)/bin}; \
		ln -sf "$$gobin/kawase" "$$gobin/kn-kawase" && echo "installed $$gobin/kawase and $$gobin/kn-kawase"

build:
	$(GO) build -o $(BIN) ./cmd/kawase

## deps: install the OS packages above when missing (Debian/Ubuntu; as root or with sudo)
deps:
	@missing=""; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then missing="postgresql"; fi; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages:$$missing"; \
		$(SUDO) mkdir -p /etc/postgresql-common; \
		echo "create_main_cluster = false" | $(SUDO) tee /etc/postgresql-common/createcluster.conf >/dev/null; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf bin
