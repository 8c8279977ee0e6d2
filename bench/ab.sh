#!/bin/sh
# A/B two bastion binaries in one run: bench/ab.sh ROUNDS BIN_A BIN_B [jumpbench flags]
# runs bench/jumpbench's bulk transfers (tunnel and record mode by default)
# with A, then B, ROUNDS times, so that both see the same machine load, and
# prints each run's throughput and bastion's CPU per GiB. For example:
#   go build -pgo=off -o /tmp/a ./cmd/bastion && go build -o /tmp/b ./cmd/bastion
#   bench/ab.sh 3 /tmp/a /tmp/b -bytes 268435456
set -eu
cd "$(dirname "$0")/.."
rounds=$1 a=$2 b=$3
shift 3
work=$(mktemp -d "${TMPDIR:-/tmp}/bastion-ab-XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/jumpbench" ./bench/jumpbench
for i in $(seq "$rounds"); do
	for v in A B; do
		bin=$a
		[ "$v" = B ] && bin=$b
		"$work/jumpbench" -bastion "$bin" -hosts tunnel,record -skip setup,storage,memory -repeat 1 "$@" 2>/dev/null |
			awk -v v="$v" -v i="$i" '/^bulk|jump host CPU per GiB|calls per GiB/ { sub(/^ +/, ""); print v, i ": " $0 }'
	done
done
