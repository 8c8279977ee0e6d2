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

# Every fuzz target (found by .ci/fuzz), 30s each; seed corpora run in
# `make test`, and CI fuzzes each for a few seconds after the tests.
fuzz:
	FUZZ_BUDGET=100000 FUZZ_MAX=30 .ci/fuzz

bench:
	go test -run x -bench . -benchtime 2s ./ca/ ./audit/ ./gateway/
	bench/jump.sh

docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t bastion:$(VERSION) .

dev:
	go run ./cmd/bastion dev
