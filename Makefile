# Developer shortcuts. CI runs .ci/run, which runs the README's test command.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build fmt vet lint test fuzz bench docker dev

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bastion ./cmd/bastion

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	go vet ./...

lint:
	golangci-lint run ./...

test:
	go test -race -timeout 30m ./...

# Short runs of every fuzz target (seed corpora run in `make test`).
fuzz:
	go test -run x -fuzz FuzzParseKRL -fuzztime 30s ./ca/
	go test -run x -fuzz FuzzValidateUserPrincipal -fuzztime 15s ./ca/
	go test -run x -fuzz FuzzDecodeEvent -fuzztime 30s ./audit/
	go test -run x -fuzz FuzzMap -fuzztime 30s ./internal/oidc/
	go test -run x -fuzz FuzzParseKexInit -fuzztime 15s ./internal/scan/
	go test -run x -fuzz FuzzReadServerHello -fuzztime 15s ./internal/scan/
	go test -run x -fuzz FuzzParse -fuzztime 15s ./internal/config/
	go test -run x -fuzz FuzzParse -fuzztime 15s ./internal/auditquery/
	go test -run x -fuzz FuzzCommandKind -fuzztime 15s ./gateway/

bench:
	go test -run x -bench . -benchtime 2s ./ca/ ./audit/ ./gateway/
	bench/jump.sh

docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t bastion:$(VERSION) .

dev:
	go run ./cmd/bastion dev
