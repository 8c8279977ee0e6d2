#!/bin/sh
# demo.sh: the compose demo's helper (see docker-compose.yml).
#   demo setup                 CA, target host keys and certificates, KRL
#   demo target NAME           install NAME's files and run sshd
#   demo sign PUBKEY PRINCIPAL print a user certificate (gateway stopped)
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
	principal=${3:?usage: demo sign "PUBLIC KEY LINE" PRINCIPAL}
	tmp=$(mktemp -d)
	printf '%s\n' "$key" >"$tmp/key.pub"
	bastion ca sign --data-dir "$data" -I "$principal" -n "$principal" --out - "$tmp/key.pub"
	chown -R 65532:65532 "$data"
	rm -rf "$tmp"
	;;
*)
	echo "usage: demo setup | demo target NAME | demo sign PUBKEY PRINCIPAL" >&2
	exit 2
	;;
esac
