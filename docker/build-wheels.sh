#!/usr/bin/env bash
# Fill docker/wheels with wheels of jobworker's dependencies and build backend (`make wheels`; `make
# image` runs it), downloaded by this host's pip: the image build then installs from them with
# `pip install --no-index`, so it needs no network and no CA bundle for PyPI (whatever pip here
# trusts, a TLS-intercepting proxy included, is what counts). jobworker itself is not among them:
# the build makes it from the source in the context, so an edited checkout never meets a stale wheel.
#
# The wheels are for the image, not this host: CPython 3.11 on glibc <= 2.36 (Debian bookworm, what
# both base images are), this machine's architecture. Environment:
#   PIP_PYTHON  python whose pip downloads (default: .venv/bin/python, else python3 if it has pip,
#               else a throwaway venv in docker/.build/pip-venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="$here/wheels"
python_version=3.11
glibc_minor=36

die() { echo "build-wheels.sh: $*" >&2; exit 1; }

pick_python() {
    if [[ -n "${PIP_PYTHON:-}" ]]; then
        echo "$PIP_PYTHON"
    elif [[ -x "$root/.venv/bin/python" ]]; then
        echo "$root/.venv/bin/python"
    elif python3 -m pip --version >/dev/null 2>&1; then
        echo python3
    else
        local venv="$root/docker/.build/pip-venv"
        if [[ ! -x "$venv/bin/python" ]]; then
            command -v python3 >/dev/null || die "no python3 on this host (needed to download wheels)"
            python3 -m venv "$venv" >&2 || die "python3 has no pip and cannot make a venv (apt-get install python3-venv)"
        fi
        echo "$venv/bin/python"
    fi
}
python="$(pick_python)"

# Requirements straight from pyproject.toml: the runtime dependencies and the build backend.
requirements="$("$python" - "$root/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
)" || die "cannot read the requirements from pyproject.toml with $python (needs Python 3.11+)"

arch="$(uname -m)"
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done

staging="$root/docker/.build/wheels.new"
rm -rf "$staging"
mkdir -p "$staging"
mapfile -t reqs <<<"$requirements"
echo "build-wheels.sh: downloading wheels for CPython $python_version ($arch) with $("$python" -m pip --version | cut -d' ' -f1-2)"
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$python_version" --implementation cp --abi "cp${python_version/./}" "${platforms[@]}" \
    --dest "$staging" "${reqs[@]}" \
    || die "pip could not download the wheels (see above); the image build needs them or network of its own"
# Replace the old set only once the new one is complete: a failed download leaves a usable set.
find "$out" -maxdepth 1 -name '*.whl' -delete
mv "$staging"/*.whl "$out"/
rmdir "$staging"
echo "build-wheels.sh: $(find "$out" -maxdepth 1 -name '*.whl' | wc -l) wheels in docker/wheels"
