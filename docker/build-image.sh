#!/usr/bin/env bash
# Build the jobworker image (`make image` runs this). Environment:
#   IMAGE             tag to build                       (default jobworker:dev)
#   BASE_IMAGE        base to build on                    (default python:3.11-slim-bookworm)
#   LOCAL_BASE_IMAGE  fallback base built from Debian     (default jobworker-base:bookworm)
#   EXTRA_CA_BUNDLE   PEM file of extra CAs for pip in the build (TLS-intercepting proxies); optional
# When BASE_IMAGE is neither present nor pullable (air-gapped host), the image is built on
# LOCAL_BASE_IMAGE instead, which docker/build-base.sh makes from Debian packages if it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
image="${IMAGE:-jobworker:dev}"
base="${BASE_IMAGE:-python:3.11-slim-bookworm}"
local_base="${LOCAL_BASE_IMAGE:-jobworker-base:bookworm}"
extra_ca="${EXTRA_CA_BUNDLE:-}"

die() { echo "build-image.sh: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running, may you use it?)"

if docker image inspect "$base" >/dev/null 2>&1; then
    :
elif pull_err="$(timeout 600 docker pull -q "$base" 2>&1 >/dev/null)"; then
    :
else
    echo "build-image.sh: cannot pull $base (${pull_err##*$'\n'})"
    if docker image inspect "$local_base" >/dev/null 2>&1; then
        echo "build-image.sh: using the local base image $local_base (built earlier from Debian packages)"
    else
        echo "build-image.sh: building the local base image $local_base from Debian packages instead"
        "$here/build-base.sh" "$local_base"
    fi
    base="$local_base"
fi

# A small staged context: the repository root holds .venv, .git and certs/, none of which belong
# in a build (and certs must never end up in an image layer by accident).
ctx="$root/docker/.build/context"
rm -rf "$ctx"
mkdir -p "$ctx/docker/.build"
(
    cd "$root"
    files=(pyproject.toml jobworker pki docker/Dockerfile docker/pki-init.sh)
    [[ -f README.md ]] && files+=(README.md)
    tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude='.*_cache' "${files[@]}"
) | tar -x -C "$ctx"
if [[ -n "$extra_ca" ]]; then
    [[ -r "$extra_ca" ]] || die "EXTRA_CA_BUNDLE=$extra_ca is not a readable file"
    cp "$extra_ca" "$ctx/docker/.build/extra-ca.crt"
fi

echo "build-image.sh: building $image on $base"
# Host network: the build only fetches from PyPI/Debian, and this way it needs no NAT on the bridge.
docker build --network host --force-rm --build-arg "BASE_IMAGE=$base" -t "$image" \
    -f "$ctx/docker/Dockerfile" "$ctx"
echo "build-image.sh: built $image"
