#!/usr/bin/env bash
# Build the jobworker image (`make image` runs this). Environment:
#   IMAGE             tag to build                       (default jobworker:dev)
#   BASE_IMAGE        base to build on                    (default python:3.11-slim-bookworm)
#   LOCAL_BASE_IMAGE  fallback base built from Debian     (default jobworker-base:bookworm)
# First docker/build-wheels.sh downloads the dependencies' wheels with this host's pip into
# docker/wheels, so pip inside the build installs offline (no CA bundle, no PyPI access needed there).
# When BASE_IMAGE is neither present nor pullable (air-gapped host), the image is built on
# LOCAL_BASE_IMAGE instead, which docker/build-base.sh makes from Debian packages if it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
image="${IMAGE:-jobworker:dev}"
base="${BASE_IMAGE:-python:3.11-slim-bookworm}"
local_base="${LOCAL_BASE_IMAGE:-jobworker-base:bookworm}"

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

"$here/build-wheels.sh"

echo "build-image.sh: building $image on $base"
# The context is the repository root; .dockerignore keeps .venv, .git and ./certs out of it. Host
# network: only apt on python:3.11-slim fetches anything, and this way it needs no NAT on the bridge.
docker build --network host --force-rm --build-arg "BASE_IMAGE=$base" -t "$image" \
    -f "$root/docker/Dockerfile" "$root"
echo "build-image.sh: built $image"
