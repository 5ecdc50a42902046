#!/bin/sh
# Mint the certificates of the compose fleet (compose.fleet.yaml), once: a CA, node certificates for
# node-a/b/c (role node), etcd member certificates for etcd1-3 (no role), and admin/writer/reader clients.
# Files that exist are kept, so `make fleet-up` can run it every time. JW_UID/JW_GID own the result.
set -eu
dir="${JW_CERTS_DIR:-/certs}"
mkdir -p "$dir"
[ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] || jw-pki init --dir "$dir" --force
have() { [ -s "$dir/$1.crt" ] && [ -s "$dir/$1.key" ]; }
for node in node-a node-b node-c; do
    have "$node" || jw-pki issue-node --dir "$dir" --name "$node" --san localhost --san 127.0.0.1 --force
done
for member in etcd1 etcd2 etcd3; do
    have "$member" || jw-pki issue-etcd --dir "$dir" --name "$member" --san localhost --force
done
for role in admin writer reader; do
    have "$role" || jw-pki issue-client --dir "$dir" --name "$role" --role "$role" --force
done
chown -R "${JW_UID:-0}:${JW_GID:-0}" "$dir"
echo "fleet-pki-init: certificates in $dir"
