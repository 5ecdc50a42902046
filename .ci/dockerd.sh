#!/usr/bin/env bash
# CI-only: start / stop a Docker engine on a machine where none runs.
#   .ci/dockerd.sh start LOGFILE PIDFILE   start dockerd in the background, wait until `docker info` works
#   .ci/dockerd.sh stop PIDFILE            stop that dockerd (and the containerd it manages) by PID
# dockerd uses .ci/runc-capfilter as its default runtime, because --privileged otherwise fails here
# ("unable to apply caps": CAP_SYS_RESOURCE is outside this machine's bounding set).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wait_s="${DOCKERD_WAIT_SECONDS:-60}"

start() {
    local logfile="$1" pidfile="$2"
    if docker info >/dev/null 2>&1; then
        echo "dockerd.sh: a Docker engine already answers; not starting another" >&2
        return 0
    fi
    chmod +x "$here/runc-capfilter"
    # Published ports bind to loopback only (--ip): nothing here is meant to be reachable from outside.
    setsid dockerd \
        --ip 127.0.0.1 \
        --add-runtime "capfilter=$here/runc-capfilter" \
        --default-runtime capfilter \
        --pidfile /var/run/docker.pid \
        >"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    local deadline=$((SECONDS + wait_s))
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "dockerd.sh: dockerd exited; last lines of $logfile:" >&2
            tail -n 30 "$logfile" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "dockerd.sh: docker info did not answer within ${wait_s}s; last lines of $logfile:" >&2
            tail -n 30 "$logfile" >&2
            return 1
        fi
        sleep 0.5
    done
    # dockerd starts its own containerd; remember it so stop can end it even if dockerd is killed.
    if [[ -s /var/run/docker/containerd/containerd.pid ]]; then
        cp /var/run/docker/containerd/containerd.pid "$pidfile.containerd"
    fi
    echo "dockerd.sh: dockerd (pid $(cat "$pidfile")) is up; log in $logfile"
}

stop() {
    local pidfile="$1" pid
    [[ -s "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    # Containers first, so their shims do not outlive the daemon.
    local running
    running="$(docker ps -q 2>/dev/null || true)"
    if [[ -n "$running" ]]; then
        # shellcheck disable=SC2086
        timeout 60 docker rm -f $running >/dev/null 2>&1 || true
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "dockerd.sh: dockerd $pid did not stop in 30s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [[ -s "$pidfile.containerd" ]]; then
        local cpid
        cpid="$(cat "$pidfile.containerd")"
        deadline=$((SECONDS + 15))
        while kill -0 "$cpid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        kill -KILL "$cpid" 2>/dev/null || true
        rm -f "$pidfile.containerd"
    fi
    rm -f "$pidfile"
    echo "dockerd.sh: dockerd $pid stopped"
}

case "${1:-}" in
    start) start "${2:?logfile}" "${3:?pidfile}" ;;
    stop) stop "${2:?pidfile}" ;;
    *) echo "usage: $0 start LOGFILE PIDFILE | stop PIDFILE" >&2; exit 2 ;;
esac
