# syntax=docker/dockerfile:1
#
# bastion container image: one static binary on distroless, running as the
# unprivileged "nonroot" user (uid 65532).
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse HEAD) -t bastion .
#   docker run -d -p 22:2222 -p 9222:9222 -v bastion-data:/var/lib/bastion \
#              -v ./bastion.yaml:/etc/bastion/bastion.yaml:ro bastion
#
# The data volume needs a CA before the gateway starts:
#   docker run --rm -v bastion-data:/var/lib/bastion bastion ca init
#
# Health: distroless has no shell or curl for a HEALTHCHECK, and bastion has
# no health subcommand, so there is none here. Probe it from outside:
# GET http://HOST:9222/healthz answers 200 "ok" while the gateway serves
# and takes logins (503 while the audit log cannot be written; /livez stays
# 200) (metrics_listen in bastion.yaml). The Kubernetes manifests and the compose
# demo do exactly that.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules in their own layer: rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/bastion ./cmd/bastion
# The data directory, owned by the runtime user so that a new volume
# (which Docker fills from the image) is writable.
RUN mkdir -m 0700 -p /out/var/lib/bastion

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bastion /bastion
COPY --from=build --chown=65532:65532 /out/var/lib/bastion /var/lib/bastion
USER nonroot:nonroot
ENV BASTION_DATA_DIR=/var/lib/bastion
VOLUME ["/var/lib/bastion"]
# 2222: SSH (logins and jumps; publish it as 22). 9222: /metrics and /healthz.
EXPOSE 2222 9222
ENTRYPOINT ["/bastion"]
CMD ["serve", "--config", "/etc/bastion/bastion.yaml"]
