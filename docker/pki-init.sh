#!/bin/sh
# Mint the certificates a local jobworker needs, once: the compose `pki` service runs this as
# jw-pki-init. Idempotent: files that already exist are kept, so `docker compose up` can run it
# every time. Writes into $JW_CERTS_DIR (default /certs):
#   ca.crt/key, server.crt/key (SANs localhost, 127.0.0.1, server and $JW_SERVER_SANS),
#   admin, writer and reader client certificates with those roles, and crl.pem, the CA's (at first
#   empty) revocation list that jw-server reads with --revoked (add to it with `jw-pki revoke NAME`).
# Keys are 0600 and owned by root in the container; set JW_UID/JW_GID (e.g. `JW_UID=$(id -u)
# JW_GID=$(id -g) docker compose up`, which `make up` does) to hand the directory to that host user.
set -eu

dir="${JW_CERTS_DIR:-/certs}"
mkdir -p "$dir"

exists_any() { [ -e "$dir/$1.crt" ] || [ -e "$dir/$1.key" ]; }
have_pair() { [ -s "$dir/$1.crt" ] && [ -s "$dir/$1.key" ]; }

new_ca=0
if ! have_pair ca; then
    # A half-written CA cannot sign anything: start over, and re-issue everything signed by it.
    if exists_any ca; then
        jw-pki init --dir "$dir" --force
    else
        jw-pki init --dir "$dir"
    fi
    new_ca=1
    echo "jw-pki-init: new CA in $dir"
fi

# issue NAME ARGS...: issue NAME unless a complete pair signed by the current CA is already there.
issue() {
    name="$1"
    shift
    if [ "$new_ca" = 0 ] && have_pair "$name"; then
        return 0
    fi
    if exists_any "$name"; then
        "$@" --force
    else
        "$@"
    fi
    echo "jw-pki-init: issued $name"
}

# JW_SERVER_SANS is a space-separated list: split on purpose.
sans=""
for san in localhost 127.0.0.1 server ${JW_SERVER_SANS:-}; do
    sans="$sans --san $san"
done
# shellcheck disable=SC2086  # $sans holds several words on purpose
issue server jw-pki issue-server --dir "$dir" --name server $sans
for role in admin writer reader; do
    issue "$role" jw-pki issue-client --dir "$dir" --name "$role" --role "$role"
done

# A list signed by an earlier CA would be refused by the server: start a new one with a new CA.
if [ "$new_ca" = 1 ] || [ ! -s "$dir/crl.pem" ]; then
    rm -f "$dir/crl.pem"
    jw-pki revoke --dir "$dir" >/dev/null
    echo "jw-pki-init: empty revocation list $dir/crl.pem"
fi

uid="${JW_UID:-0}"
gid="${JW_GID:-$uid}"
if [ "$uid" != 0 ] || [ "$gid" != 0 ]; then
    chown -R "$uid:$gid" "$dir"
fi
echo "jw-pki-init: certificates ready in $dir"
