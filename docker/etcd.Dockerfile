# etcd for `make fleet-up` (compose.fleet.yaml): Debian's etcd-server on top of the jobworker image, which
# is Debian bookworm already, so no other registry is needed.
ARG JW_IMAGE=jobworker:dev
FROM ${JW_IMAGE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server; \
    rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["etcd"]
