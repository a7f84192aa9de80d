SHELL := /bin/bash
# cvpn: `make help` lists the targets. `make test` is what CI runs (as root).
GO      ?= go
BIN     := bin/cvpn
# PKGS is expanded where it is used, so `make deps` works before Go can load the module.
PKGS     = $(shell $(GO) list ./... | grep -v /e2e)
STATICCHECK_VERSION ?= v0.8.2

.PHONY: help build deps test unit e2e fuzz bench-once lint demo bench soak chaos clean

# Debian packages the tests, the demo and the benchmark run: the stock client and server (openvpn),
# iperf3, ip (iproute2), ping (iputils-ping), the stock server's MASQUERADE (iptables), packet
# captures while debugging (tcpdump), unshare, setpriv and mount (util-linux), the CA bundle that
# `go mod download` needs (ca-certificates), the Prometheus server and promtool that the metrics
# tests scrape and lint with (prometheus), the OpenLDAP server the directory tests start
# (slapd) with its command-line tools (ldap-utils), and the headless browser that the portal's
# browser tests drive (chromium) with a font for its pages and screenshots (fonts-dejavu-core).
# The package's tests (deploy/) check the .deb with lintian, render the manual pages with man-db,
# run the zsh completion in zsh, and score and verify the units with systemd-analyze (systemd).
# Each must exist in Debian: `apt-cache policy NAME`.
DEB_PACKAGES := openvpn iperf3 iproute2 iputils-ping iptables tcpdump util-linux ca-certificates prometheus slapd ldap-utils chromium fonts-dejavu-core
DEB_PACKAGES += lintian man-db zsh systemd

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/cvpn
	$(GO) build -o $(BIN) ./cmd/cvpn

deps: ## install the Debian packages the tests, demo and benchmark need, those not installed yet (root)
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -qx 'install ok installed' || echo "$$p"; \
	done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "deps: installing" $$missing; \
	if [ "$$(id -u)" != 0 ]; then echo "deps: not root: run 'make deps' as root, or apt-get install" $$missing; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

test: deps unit e2e fuzz bench-once ## everything CI runs: unit tests (race), end-to-end tests (root), fuzz smoke, benchmarks once

unit: ## unit tests with the race detector
	$(GO) test -race -count=1 $(PKGS)

# E2E_PARALLEL is how many end-to-end tests run at once. They mostly wait (handshakes, timeouts,
# reconnects), so more than the cores (go test's default) is faster; each has its own namespaces.
E2E_PARALLEL ?= 4

e2e: ## end-to-end tests: the stock openvpn client against cvpn in network namespaces (root)
	$(GO) test -count=1 -timeout 15m -parallel $(E2E_PARALLEL) ./e2e

fuzz: ## run every fuzz target briefly (FUZZTIME=50000x inputs each)
	./scripts/fuzz-smoke.sh

bench-once: ## run every Go benchmark once so none rots
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x $(PKGS) >/dev/null

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet -tags chaos ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

bench: deps build ## as root: cvpn vs the stock openvpn server side by side, then 100,000 cvpn sessions (15-25 min: the scale ramp is bounded at 10); ratio and CPU-per-packet tables, JSON, SVG and CPU profiles in bench/results (BENCHFLAGS adds flags)
	$(GO) build -o bin/cvpn-bench ./cmd/cvpn-bench
	bin/cvpn-bench run --cvpn $(BIN) --go $(GO) --out bench/results $(BENCHFLAGS)

# SOAK is how long `make soak` churns (a Go duration, at least 3m).
SOAK ?= 10m

soak: deps ## as root: SOAK (10m) of churn and floods against a race-detector build; fails on a race or growth of RSS, threads, descriptors, goroutines (not in test)
	CVPN_E2E_RACE=1 GOTRACEBACK=all SOAK=$(SOAK) $(GO) test -tags soak -count=1 -timeout 0 -run '^TestSoak$$' -v ./e2e

# CVPN_CHAOS_DURATION (a Go duration, default 3m) is how long `make chaos` draws faults;
# CVPN_CHAOS_SEED replays a schedule that the test logged; CVPN_CHAOS_FAULTS=kind,... draws only those kinds.
chaos: deps ## as root: a three-node cluster with stock clients under random faults (kill -9, partitions, etcd restarts) for 3m; checks no address twice, no lost termination, every session listed (not in test)
	$(GO) test -tags chaos -count=1 -timeout 40m -run '^TestChaos$$' -v ./e2e

demo: deps build ## as root: namespaces, throwaway PKI, cvpn, the stock client, ping and iperf3, then teardown
	$(GO) run ./internal/demo --cvpn $(BIN)

clean: ## remove build output
	rm -rf bin
	rm -rf dist

# Packaging. `make install` builds a static cvpn and installs it with its systemd units, sysctl
# file, manual pages and completions under $(DESTDIR)$(PREFIX); `make deb` stages the same with
# PREFIX=/usr and builds dist/cvpn_$(DEB_VERSION)_amd64.deb (deploy/debian/build.sh).
.PHONY: install deb deb-lint
PREFIX      ?= /usr/local
DEB_VERSION ?= $(shell deploy/debian/version.sh)

install: ## install cvpn, its units, sysctl file, man pages, completions in $(DESTDIR)$(PREFIX) (PREFIX=/usr/local)
	GO=$(GO) deploy/install.sh "$(DESTDIR)" "$(PREFIX)"

deb: ## build dist/cvpn_VERSION_amd64.deb (a static cvpn, the units, sysctl file, man pages, completions)
	GO=$(GO) deploy/debian/build.sh $(DEB_VERSION)

deb-lint: deb ## the package through lintian: fails on an error
	lintian --fail-on error --display-info dist/cvpn_$(DEB_VERSION)_$$($(GO) env GOARCH).deb
