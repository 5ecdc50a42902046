# etcd for `make fleet-up` (compose.fleet.yaml): Debian's etcd-server on top of the jobworker image, which
# is Debian bookworm already, so no other registry is needed.
ARG JW_IMAGE=jobworker:dev
FROM ${JW_IMAGE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client; \
    rm -rf /var/lib/apt/lists/*
# The jobworker image's health check asks a jw-server; an etcd member answers etcdctl instead (compose).
HEALTHCHECK NONE
ENTRYPOINT ["etcd"]
