#!/bin/sh
# demo.sh: the compose demo's helper (see docker-compose.yml).
#   demo setup                 CA, target host keys and certificates, KRL
#   demo target NAME           install NAME's files and run sshd
#   demo sign PUBKEY PRINCIPAL [GROUPS]
#                              print a user certificate (gateway stopped;
#                              GROUPS: comma-separated, for admin_groups)
#   demo etcd-certs N...       the cluster demo's etcd mTLS files (cluster/)
#   demo cluster-setup         setup, then etcd-certs for etcd-1..3
set -eu
data=/var/lib/bastion
shared=/shared

case "${1:-}" in
setup)
	if [ ! -e "$data/ca/user_ca" ]; then
		bastion ca init --data-dir "$data"
	fi
	for t in target1 target2; do
		mkdir -p "$shared/$t"
		if [ ! -e "$shared/$t/ssh_host_ed25519_key" ]; then
			ssh-keygen -q -t ed25519 -N '' -C "$t" -f "$shared/$t/ssh_host_ed25519_key"
		fi
		bastion ca sign --data-dir "$data" --host -I "$t" -n "$t" -V +30d \
			--out "$shared/$t/ssh_host_ed25519_key-cert.pub" "$shared/$t/ssh_host_ed25519_key.pub"
	done
	bastion ca export --data-dir "$data" --user >"$shared/bastion_user_ca.pub"
	bastion ca krl --data-dir "$data" --out "$shared/bastion_revoked.krl"
	# For the client: trust every host certificate from the host CA.
	bastion ca export --data-dir "$data" --host --hosts '*' >/out/known_hosts
	# The gateway runs as distroless's nonroot user.
	chown -R 65532:65532 "$data"
	;;
target)
	name=${2:?usage: demo target NAME}
	install -m 0600 "$shared/$name/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
	install -m 0644 "$shared/$name/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
	install -m 0644 "$shared/$name/ssh_host_ed25519_key-cert.pub" /etc/ssh/ssh_host_ed25519_key-cert.pub
	install -m 0644 "$shared/bastion_user_ca.pub" /etc/ssh/bastion_user_ca.pub
	install -m 0644 "$shared/bastion_revoked.krl" /etc/ssh/bastion_revoked.krl
	/usr/sbin/sshd -t
	exec /usr/sbin/sshd -D -e
	;;
sign)
	key=${2:?usage: demo sign "PUBLIC KEY LINE" PRINCIPAL}
	principal=${3:?usage: demo sign "PUBLIC KEY LINE" PRINCIPAL [GROUPS]}
	groups=${4:-}
	tmp=$(mktemp -d)
	printf '%s\n' "$key" >"$tmp/key.pub"
	if [ -n "$groups" ]; then
		bastion ca sign --data-dir "$data" -I "$principal" -n "$principal" --groups "$groups" --out - "$tmp/key.pub"
	else
		bastion ca sign --data-dir "$data" -I "$principal" -n "$principal" --out - "$tmp/key.pub"
	fi
	chown -R 65532:65532 "$data"
	rm -rf "$tmp"
	;;
cluster-setup)
	sh "$0" setup
	exec sh "$0" etcd-certs etcd-1 etcd-2 etcd-3
	;;
etcd-certs)
	# A private CA for etcd, a server certificate per member named in the
	# arguments, and bastion's client certificate; made once.
	shift
	dir=$shared/etcd
	mkdir -p "$dir"
	cd "$dir"
	if [ ! -e ca.pem ]; then
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
			-subj /CN=bastion-demo-etcd-ca -keyout ca-key.pem -out ca.pem
	fi
	sign() { # NAME SAN EXT
		[ -e "$1.pem" ] && return 0
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr"
		printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$2" "$3" >"$1.ext"
		openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 -extfile "$1.ext" -out "$1.pem"
		rm -f "$1.csr" "$1.ext"
	}
	for m in "$@"; do
		sign "$m" "DNS:$m,DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
	done
	sign client DNS:bastion clientAuth
	# The gateways run as distroless's nonroot user; etcd as root.
	chown 65532:65532 client.pem client-key.pem
	chmod 0600 client-key.pem ca-key.pem
	;;
*)
	echo "usage: demo setup | demo target NAME | demo sign PUBKEY PRINCIPAL [GROUPS] | demo etcd-certs MEMBER... | demo cluster-setup" >&2
	exit 2
	;;
esac
