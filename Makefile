# Ding. `make test` installs what the tests need and runs them all.
GO        ?= go
PROTOC_GEN_GO_VERSION := v1.36.12

.PHONY: test vet unit fuzz proto bench build tools

test: vet unit

vet:
	$(GO) vet ./...

# The whole suite with the race detector: most packages are concurrent.
unit:
	$(GO) test -race -count=1 -timeout 8m ./...

# A short run of every fuzz target (the seeds also run in `make test`).
fuzz:
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeMessage$$' -fuzztime 20s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeMessageWithChoices$$' -fuzztime 10s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime 20s
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzDecodeRollup$$' -fuzztime 10s
	$(GO) test ./channels/socket/wire -run '^$$' -fuzz FuzzDecode -fuzztime 30s

build:
	$(GO) build -o bin/ ./cmd/...

# Regenerate the protocol's Go code from channels/socket/pb/ding.proto.
proto:
	@command -v protoc >/dev/null || (apt-get update -qq && apt-get install -y -qq protobuf-compiler)
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative channels/socket/pb/ding.proto

# Whole-system scenarios; see bench/RESULTS.md for the latest figures.
bench: build
	./bin/dingbench all
