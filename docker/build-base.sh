#!/usr/bin/env bash
# Build a local base image equivalent to python:3.11-slim-bookworm from Debian packages, for hosts that
# cannot pull from a container registry but can reach a Debian mirror. Needs root and debootstrap.
#   docker/build-base.sh [TAG]          (default TAG: jobworker-base:bookworm)
# The mirror is the one this host's apt uses (/etc/apt/sources.list*), else deb.debian.org;
# DEBIAN_MIRROR overrides it. The result has /usr/bin/python3 (3.11) with venv and pip.
set -euo pipefail

tag="${1:-jobworker-base:bookworm}"
suite=bookworm
# procps, iproute2 and libseccomp2 are what the final image needs anyway: baking them in spares
# an apt step there.
include="python3,python3-venv,python3-pip,ca-certificates,procps,iproute2,libseccomp2"

die() { echo "build-base.sh: $*" >&2; exit 1; }

configured_mirror() {
    local f
    # deb822 sources: the first URIs: of a stanza whose Suites: lists plain "$suite".
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (uri != "" && ok) print uri }
        ' "$f" | head -n 1
    done
    # one-line sources: "deb [opts] URI bookworm main ..."
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        awk -v suite="$suite" '
            $1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                          if ($(i + 1) == suite) { print $i; exit } }
        ' "$f"
    done
}

[[ "$(id -u)" == 0 ]] || die "needs root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker is not installed"

mirror="${DEBIAN_MIRROR:-$(configured_mirror | head -n 1)}"
mirror="${mirror:-http://deb.debian.org/debian}"

workdir="$(mktemp -d /var/tmp/jobworker-base.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT
rootfs="$workdir/rootfs"

echo "build-base.sh: debootstrap $suite from $mirror (about a minute)"
start=$SECONDS
debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" \
    >"$workdir/debootstrap.log" 2>&1 || {
    tail -n 30 "$workdir/debootstrap.log" >&2
    die "debootstrap failed"
}
# Keep the image small: no package caches or lists (a later apt-get update fetches fresh lists).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
[[ -e "$rootfs/usr/bin/python3" ]] || die "no /usr/bin/python3 in the new root"

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    --message "debootstrap $suite minbase + python3 from $mirror" \
    - "$tag" >/dev/null
echo "build-base.sh: built $tag in $((SECONDS - start))s"
