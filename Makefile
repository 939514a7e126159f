# Ding. `make test` installs what the tests need and runs them all.
GO        ?= go
PROTOC_GEN_GO_VERSION := v1.36.12

.PHONY: test vet unit fuzz proto bench build tools redis readme-tools chaos soak sdk-test sdk-proto node web web-test chromium

test: tools redis readme-tools chromium vet unit sdk-test web-test

# curl and jq (Debian's packages) for the README's tour (internal/readme),
# whose "Integrate in 5 minutes" section uses them. Nothing is done when
# both are there.
readme-tools:
	@{ command -v curl && command -v jq; } >/dev/null || { \
	  set -e; sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing curl and jq from Debian"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends curl jq >/dev/null; }

# redis-server (Debian's package) for the cluster tests, which start their
# own on loopback ports; the package's own service is stopped so that it
# holds no port. Nothing is done when redis-server is already there.
redis:
	@command -v redis-server >/dev/null || { \
	  set -e; sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing redis-server from Debian"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
	  ($$sudo systemctl stop redis-server 2>/dev/null || $$sudo service redis-server stop 2>/dev/null || true); \
	  redis-server --version; }

# promtool (from Debian's prometheus package) checks /metrics, the alert
# rules and the dashboard's queries in internal/node's tests. Only the
# binary is unpacked, into bin/: installing the package would also start a
# Prometheus server. Nothing is done when promtool is already there.
tools:
	@command -v promtool >/dev/null || [ -x bin/promtool ] || { \
	  set -e; sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); tmp=$$(mktemp -d); \
	  echo "installing bin/promtool from Debian's prometheus package"; \
	  $$sudo apt-get update -qq; \
	  (cd $$tmp && apt-get download -qq -o APT::Sandbox::User=root prometheus); \
	  dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/pkg; \
	  mkdir -p bin; cp $$tmp/pkg/usr/bin/promtool bin/promtool; rm -rf $$tmp; \
	  bin/promtool --version 2>&1 | head -1; }

vet:
	$(GO) vet ./...

# The whole suite with the race detector: most packages are concurrent.
# The timeout is per package: cmd/dingd, the longest (real dingd processes,
# clusters among them), takes 370-390 s on 2 cores; 10 minutes leaves it
# room on a slower machine, while the suite's wall time stays about 8-9.
unit:
	$(GO) test -race -count=1 -timeout 10m ./...

# A short run of every fuzz target (the seeds also run in `make test`).
fuzz:
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeMessage$$' -fuzztime 20s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeMessageWithChoices$$' -fuzztime 10s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime 20s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeRollup$$' -fuzztime 10s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeRcptState$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeDingRecord$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeLedgerEvent$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeSecretState$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeChat$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeAnnouncementCounts$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeFanoutJob$$' -fuzztime 5s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeRelayRecord$$' -fuzztime 10s
	$(GO) test ./channels/socket/wire -run '^$$' -fuzz FuzzDecode -fuzztime 30s
	$(GO) test ./channels/session -run '^$$' -fuzz FuzzDeliver -fuzztime 10s
	$(GO) test ./channels/socket/client -run '^$$' -fuzz FuzzDecodeDeliver -fuzztime 20s
	$(GO) test ./channels/socket -run '^$$' -fuzz FuzzWSInput -fuzztime 20s

build:
	$(GO) build -buildvcs=auto -o bin/ ./cmd/... # auto: the VCS revision in --version when git is there

# The soak (cmd/dingd/soak_test.go): mixed traffic with kill -9 every
# minute for the first two thirds of SOAK_DURATION (10m by default), then
# one calm incarnation whose resources must level off. Not in `make test`.
SOAK_DURATION ?= 10m
soak: tools
	$(GO) test -count=1 -tags soak -run TestSoak -timeout 2h -v ./cmd/dingd -soak.duration $(SOAK_DURATION)

# The Redis-failure tests of cluster mode, many times over (once each in
# `make test`): a Redis Cluster master killed, Redis losing its state.
CHAOS_COUNT ?= 10
chaos: tools redis
	$(GO) test -race -count=$(CHAOS_COUNT) -run 'RedisMasterKill|RecoversWhenRedisLosesItsState' -timeout 30m ./cmd/dingd

# Regenerate the protocol's Go code from channels/socket/pb/ding.proto.
proto:
	@command -v protoc >/dev/null || (apt-get update -qq && apt-get install -y -qq protobuf-compiler)
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative channels/socket/pb/ding.proto

# The TypeScript SDK (channels/web/sdk): npm ci from its lockfile, then
# its type check and tests (node --test): unit tests, and integration
# tests against a dingd built from this tree on loopback. Needs Node 20+.
SDK := channels/web/sdk
sdk-test: node
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error && npm test

# Node.js and npm (Debian's packages) for the SDK, when missing; the SDK
# needs Node 20 or later (Debian 13's; on an older system install a newer
# Node first).
node:
	@command -v npm >/dev/null || { \
	  set -e; sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing nodejs and npm from Debian"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "the SDK needs Node.js 20 or later; this is $$(node --version)"; exit 1; }

# The web app (channels/web/app, Preact and the SDK bundled by esbuild):
# npm ci for it and for the SDK it imports by path, its type check, then
# the build into channels/web/app/dist, which dingd embeds (channels/web).
# dist is committed, so building dingd needs no Node: run this after
# changing the app or the SDK, and commit dist with the change.
# The admin console (channels/web/console, Preact and Chart.js) is built
# the same way into channels/web/console/dist.
APP := channels/web/app
CONSOLE := channels/web/console
web: node
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error
	cd $(APP) && npm ci --no-audit --no-fund --loglevel=error && npm run build
	cd $(CONSOLE) && npm ci --no-audit --no-fund --loglevel=error && npm run build

# The web app's unit tests (its state, fed the SDK's events; node --test)
# and its type check. Its browser tests are Go tests (cmd/dingd/web_test.go).
web-test: node
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error
	cd $(APP) && npm ci --no-audit --no-fund --loglevel=error && npm test
	cd $(CONSOLE) && npm ci --no-audit --no-fund --loglevel=error && npm test

# Chromium (Debian's package) for the browser tests (cmd/dingd/web_test.go,
# driven by chromedp), when missing.
chromium:
	@command -v chromium >/dev/null || { \
	  set -e; sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing chromium from Debian"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  chromium --version; }

# Regenerate the SDK's protobuf code (src/gen) from ding.proto.
sdk-proto: node
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error && npm run generate

# Whole-system scenarios; see bench/RESULTS.md for the latest figures.
bench: build
	./bin/dingbench all
