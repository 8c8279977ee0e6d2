#!/bin/sh
# Measure bastion as an SSH jump host side by side with OpenSSH's sshd on
# loopback: bulk throughput, connection set-up and memory per idle session.
# Flags go to the Go program (bench/jumpbench), for example:
#   bench/jump.sh -sessions 200          # a quick run
#   bench/jump.sh -skip memory -repeat 5
#   bench/jump.sh -h
# Needs go, OpenSSH (ssh, sshd, ssh-keygen) and coreutils; as root it logs in
# to the loopback sshds as the account bastiontest, creating it if missing.
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/bastion-bench-build-XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/bastion" ./cmd/bastion
go build -o "$work/jumpbench" ./bench/jumpbench
go build -o "$work/barejump" ./bench/barejump
# Sessions need file descriptors: raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$work/jumpbench" -bastion "$work/bastion" -barejump "$work/barejump" "$@"
