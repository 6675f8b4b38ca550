#!/usr/bin/env bash
# Builds every image the compose deployment needs without a container
# registry (README, "Deploying without a registry"):
#
#   mailfleet-offline/debian:bookworm   Debian made with debootstrap from
#                                       Debian's packages, `docker import`ed
#   mailfleet:latest                    the Mailfleet binaries built on this
#                                       machine, copied onto that base (no
#                                       network in this build)
#   mailfleet-offline/postgres:15       Debian's postgresql-15 on the base
#   mailfleet-offline/nats:2.9          Debian's nats-server on the base
#   mailfleet-offline/haproxy:2.6       Debian's haproxy on the base
#
# deploy/compose.offline.yml swaps the public image names in
# docker-compose.yml for these, so the same docker-compose.yml runs:
#   docker compose -f docker-compose.yml -f deploy/compose.offline.yml up -d
#
# Usage: scripts/images.sh [--bin-dir DIR] [--tag IMAGE]
#   --tag IMAGE    the Mailfleet image's name (default mailfleet:latest;
#                  docker-compose.yml takes MAILFLEET_IMAGE)
#   --bin-dir DIR  take the Mailfleet binaries from DIR as they are (the
#                  compose test passes target/debug, which `cargo test`
#                  just built); without it `cargo build --release --locked`
#                  builds them and target/release is used.
# Environment: MAILFLEET_DEBIAN_MIRROR (default http://deb.debian.org/debian;
# a local mirror for an air-gapped network), MAILFLEET_IMAGE_WORKDIR
# (scratch space, default /var/tmp/mailfleet-images).
#
# An image is rebuilt only when its inputs changed: each carries the hash of
# its inputs in the label org.mailfleet.inputs (the base: this recipe and the
# mirror; the others: their Dockerfile and files, and the base's image id).
# Building the base needs root (debootstrap); sudo is used when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
mailfleet_tag=mailfleet:latest
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --tag) mailfleet_tag="$2"; shift 2 ;;
        *) echo "images: unknown argument $1" >&2; exit 2 ;;
    esac
done

MIRROR="${MAILFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORKDIR="${MAILFLEET_IMAGE_WORKDIR:-/var/tmp/mailfleet-images}"
SUITE=bookworm
BASE=mailfleet-offline/debian:$SUITE
LABEL=org.mailfleet.inputs
# What every image gets from the base: TLS trust anchors (the relay's
# verified TLS) and nc (the gateways' and the queue's healthchecks).
BASE_PACKAGES=ca-certificates,netcat-openbsd
# The service binaries, and the OTLP stand-in for the collector.
BINARIES=(storage mailctl smtp-ingress delivery-queue imap-gateway pop3-gateway otlp-sink)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
log() { echo "images: $*" >&2; }
hash_of() { sha256sum | cut -c1-32; }
label_of() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# The base: debootstrap (minbase) from Debian's mirror, with the security
# and point-release updates, no package caches, and a policy-rc.d that keeps
# maintainer scripts from starting daemons inside the image builds.
build_base() {
    local inputs
    inputs="$( { sed -n '/^build_base()/,/^}/p' "$0"; echo "$MIRROR $SUITE $BASE_PACKAGES"; } | hash_of)"
    if [ "$(label_of "$BASE")" = "$inputs" ]; then
        log "$BASE is up to date"
        return
    fi
    log "building $BASE with debootstrap from $MIRROR (about a minute)"
    local root="$WORKDIR/rootfs.$$"
    $SUDO rm -rf "$root"
    $SUDO mkdir -p "$WORKDIR"
    $SUDO debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" \
        >"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        exit 1
    }
    $SUDO tee "$root/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MAILFLEET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$root/usr/sbin/policy-rc.d" >/dev/null
    $SUDO chmod 755 "$root/usr/sbin/policy-rc.d"
    $SUDO chroot "$root" apt-get clean
    $SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
    $SUDO tar -C "$root" -c . | docker import \
        --change "LABEL $LABEL=$inputs" \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$BASE" >/dev/null
    $SUDO rm -rf "$root" "$root.log"
}

# docker build of deploy/offline/<name>.Dockerfile on the base, with CONTEXT
# as build context, unless an image with the same inputs exists. The
# apt-get steps use the host's network (--network host): the mirror the
# base came from.
build_image() {
    local tag="$1" dockerfile="$2" context="$3" inputs
    inputs="$( { docker image inspect -f '{{.Id}}' "$BASE"; cat "$dockerfile"; \
        (cd "$context" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); } | hash_of)"
    if [ "$(label_of "$tag")" = "$inputs" ]; then
        log "$tag is up to date"
        return
    fi
    log "building $tag"
    # The classic builder (Engine 20.10 without buildx): its deprecation
    # notice is left out of the output.
    DOCKER_BUILDKIT=0 docker build --quiet --network host \
        --build-arg "BASE=$BASE" --label "$LABEL=$inputs" \
        -f "$dockerfile" -t "$tag" "$context" 2>&1 >/dev/null \
        | grep -v -e DEPRECATED -e 'legacy builder' -e BuildKit -e '^ *environment-variable' -e '^$' >&2 || true
    [ "$(label_of "$tag")" = "$inputs" ] || { log "building $tag failed"; exit 1; }
}

mailfleet_binaries() {
    if [ -z "$bin_dir" ]; then
        log "cargo build --release --locked --bins"
        cargo build --release --locked --bins >&2
        bin_dir=target/release
    fi
    local ctx="$WORKDIR/mailfleet-context.$$"
    rm -rf "$ctx"
    mkdir -p "$ctx/bin"
    for b in "${BINARIES[@]}"; do
        [ -x "$bin_dir/$b" ] || { log "$bin_dir/$b is missing"; exit 1; }
        # Hard links: no copy of a few hundred MB when the work dir is on
        # the same file system as target/.
        ln "$bin_dir/$b" "$ctx/bin/$b" 2>/dev/null || cp "$bin_dir/$b" "$ctx/bin/$b"
    done
    echo "$ctx"
}

command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || {
    log "debootstrap is missing (apt-get install debootstrap)"
    exit 1
}
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$WORKDIR" 2>/dev/null || $SUDO mkdir -p "$WORKDIR"
[ -w "$WORKDIR" ] || $SUDO chown "$(id -u):$(id -g)" "$WORKDIR"

start=$SECONDS
build_base
build_image mailfleet-offline/postgres:15 deploy/offline/postgres.Dockerfile deploy/offline/postgres
mkdir -p "$WORKDIR/empty"
build_image mailfleet-offline/nats:2.9 deploy/offline/nats.Dockerfile "$WORKDIR/empty"
build_image mailfleet-offline/haproxy:2.6 deploy/offline/haproxy.Dockerfile "$WORKDIR/empty"
context="$(mailfleet_binaries)"
build_image "$mailfleet_tag" deploy/offline/mailfleet.Dockerfile "$context"
rm -rf "$context"
# Earlier builds that lost their name to these (and no container uses).
docker image prune -f --filter "label=$LABEL" >/dev/null
log "images ready in $((SECONDS - start)) s"
