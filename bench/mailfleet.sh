#!/usr/bin/env bash
# A Mailfleet instance for benchmarks, beside (not instead of) the one
# scripts/up.sh starts: the release binaries with a database, blob
# directory, JetStream names, event subjects and loopback ports of its own,
# and the same users as the reference stack (bench/reference/setup.sh).
#
#   mailfleet.sh up       start every service, create the users (idempotent)
#   mailfleet.sh down     stop the services (SIGTERM)
#   mailfleet.sh reset    stop, then drop the database, blobs and streams
#   mailfleet.sh pids     root PIDs of the stack: the five services, the
#                         PostgreSQL postmaster and nats-server
#
# Environment (defaults in brackets):
#   MF_DIR [<repo>/var/bench/mailfleet]  state, logs, pids
#   MF_SMTP_PORT [32525] MF_IMAP_PORT [31143] MF_POP3_PORT [31110]
#   MF_STORAGE_PORT [35051] (admin API on the next port)
#   MF_DOMAIN [bench.test] MF_USERS [50] MF_PASSWORD [bench-password]
#   MF_DATABASE [mailfleet_bench] on the PostgreSQL of scripts/ensure-deps.sh
#   MF_BIN [<repo>/target/release]  where the binaries are (another build's,
#                                   to compare two versions on one machine)
#   MF_NATS_URL [nats://127.0.0.1:4222]  comma-separated for a cluster
#   MF_QUEUE_REPLICAS [1]  replicas of the queue streams and state bucket
#   MF_NATS_PIDS [the oldest nats-server]  comma-separated PIDs that `pids`
#                          reports as the stack's NATS (bench/nats_cost.sh)
#   BENCH_TRASH [unset]  reset moves the blobs into this directory (same
#                        filesystem) instead of deleting them; see scripts/bench.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${MF_BIN:-$ROOT/target/release}

MF_DIR=${MF_DIR:-$ROOT/var/bench/mailfleet}
MF_SMTP_PORT=${MF_SMTP_PORT:-32525}
MF_IMAP_PORT=${MF_IMAP_PORT:-31143}
MF_POP3_PORT=${MF_POP3_PORT:-31110}
MF_STORAGE_PORT=${MF_STORAGE_PORT:-35051}
MF_ADMIN_PORT=$((MF_STORAGE_PORT + 1))
MF_DOMAIN=${MF_DOMAIN:-bench.test}
MF_USERS=${MF_USERS:-50}
MF_PASSWORD=${MF_PASSWORD:-bench-password}
MF_DATABASE=${MF_DATABASE:-mailfleet_bench}
PG_URL=${MF_PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS_URL=${MF_NATS_URL:-nats://127.0.0.1:4222}
QUEUE_REPLICAS=${MF_QUEUE_REPLICAS:-1}

# JetStream and event names of this instance only.
STREAM=BENCH_MAIL_QUEUE
RELAY_STREAM=BENCH_MAIL_RELAY
STATE_BUCKET=BENCH_QUEUE_STATE
STORAGE_URL=https://127.0.0.1:$MF_STORAGE_PORT
# Storage speaks mutual TLS only: the instance's own fleet PKI.
PKI=$MF_DIR/pki

SERVICES=(storage delivery-queue smtp-ingress imap-gateway pop3-gateway)

log() { echo "mailfleet-bench: $*" >&2; }
die() { echo "mailfleet-bench: error: $*" >&2; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The environment of one service (every key overrides the built-in default).
# Every load client connects from loopback: the per-client connection cap
# (made for the internet) would stop the idle scenario's thousand.
service_env() {
    local common=(RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT=)
    local prefix
    case "$1" in
        storage) prefix=STORAGE ;; delivery-queue) prefix=QUEUE ;; smtp-ingress) prefix=SMTP ;;
        imap-gateway) prefix=IMAP ;; pop3-gateway) prefix=POP3 ;;
    esac
    common+=(MAILFLEET_${prefix}_IDENTITY__CA_FILE=$PKI/ca.crt
        MAILFLEET_${prefix}_IDENTITY__CERT_FILE=$PKI/$1.crt
        MAILFLEET_${prefix}_IDENTITY__KEY_FILE=$PKI/$1.key)
    case "$1" in
        storage) echo "${common[@]}" \
            MAILFLEET_STORAGE_LISTEN=127.0.0.1:$MF_STORAGE_PORT \
            MAILFLEET_STORAGE_ADMIN_LISTEN=127.0.0.1:$MF_ADMIN_PORT \
            MAILFLEET_STORAGE_DATABASE_URL=$PG_URL/$MF_DATABASE \
            MAILFLEET_STORAGE_BLOB_DIR=$MF_DIR/blobs \
            MAILFLEET_STORAGE_NATS_URL=$NATS_URL \
            MAILFLEET_STORAGE_EVENTS_PREFIX=bench.events ;;
        delivery-queue) echo "${common[@]}" \
            MAILFLEET_QUEUE_STORAGE_URL=$STORAGE_URL \
            MAILFLEET_QUEUE_NATS_URL=$NATS_URL \
            MAILFLEET_QUEUE_STREAM=$STREAM MAILFLEET_QUEUE_SUBJECT=bench.queue.jobs \
            MAILFLEET_QUEUE_CONSUMER=bench-delivery \
            MAILFLEET_QUEUE_RELAY_STREAM=$RELAY_STREAM MAILFLEET_QUEUE_RELAY_SUBJECT=bench.relay.jobs \
            MAILFLEET_QUEUE_STATE_BUCKET=$STATE_BUCKET \
            MAILFLEET_QUEUE_STREAM_REPLICAS=$QUEUE_REPLICAS ;;
        smtp-ingress) echo "${common[@]}" \
            MAILFLEET_SMTP_HOSTNAME=mx.$MF_DOMAIN \
            MAILFLEET_SMTP_MX_LISTEN=127.0.0.1:$MF_SMTP_PORT \
            MAILFLEET_SMTP_SUBMISSION_LISTEN=127.0.0.1:$((MF_SMTP_PORT + 1)) \
            MAILFLEET_SMTP_SUBMISSIONS_LISTEN=127.0.0.1:$((MF_SMTP_PORT + 2)) \
            MAILFLEET_SMTP_STORAGE_URL=$STORAGE_URL MAILFLEET_SMTP_NATS_URL=$NATS_URL \
            MAILFLEET_SMTP_QUEUE__STREAM=$STREAM MAILFLEET_SMTP_QUEUE__SUBJECT=bench.queue.jobs \
            MAILFLEET_SMTP_QUEUE__REPLICAS=$QUEUE_REPLICAS \
            MAILFLEET_SMTP_TLS__SELF_SIGNED_DIR=$MF_DIR/tls \
            MAILFLEET_SMTP_INBOUND_AUTH__ENABLED=false ;;
        imap-gateway) echo "${common[@]}" \
            MAILFLEET_IMAP_LISTEN=127.0.0.1:$MF_IMAP_PORT \
            MAILFLEET_IMAP_TLS_LISTEN=127.0.0.1:$((MF_IMAP_PORT + 1)) \
            MAILFLEET_IMAP_STORAGE_URL=$STORAGE_URL MAILFLEET_IMAP_NATS_URL=$NATS_URL \
            MAILFLEET_IMAP_EVENTS_PREFIX=bench.events \
            MAILFLEET_IMAP_TLS__SELF_SIGNED_DIR=$MF_DIR/tls \
            MAILFLEET_IMAP_MAX_CONNECTIONS_PER_IP=0 ;;
        pop3-gateway) echo "${common[@]}" \
            MAILFLEET_POP3_LISTEN=127.0.0.1:$MF_POP3_PORT \
            MAILFLEET_POP3_TLS_LISTEN=127.0.0.1:$((MF_POP3_PORT + 1)) \
            MAILFLEET_POP3_STORAGE_URL=$STORAGE_URL MAILFLEET_POP3_NATS_URL=$NATS_URL \
            MAILFLEET_POP3_TLS__SELF_SIGNED_DIR=$MF_DIR/tls ;;
    esac
}

port_of() {
    case "$1" in
        storage) echo "$MF_STORAGE_PORT" ;;
        delivery-queue) echo "" ;;
        smtp-ingress) echo "$MF_SMTP_PORT" ;;
        imap-gateway) echo "$MF_IMAP_PORT" ;;
        pop3-gateway) echo "$MF_POP3_PORT" ;;
    esac
}

running() { [ -f "$MF_DIR/run/$1.pid" ] && kill -0 "$(cat "$MF_DIR/run/$1.pid")" 2>/dev/null; }

up() {
    for b in "${SERVICES[@]}" mailctl; do
        [ -x "$BIN/$b" ] || die "$BIN/$b missing: cargo build --release --bins"
    done
    mkdir -p "$MF_DIR/run" "$MF_DIR/log" "$MF_DIR/blobs"
    "$BIN/mailctl" pki init "$PKI" >/dev/null
    # Idle IMAP connections by the thousand need file descriptors.
    ulimit -n "$(ulimit -Hn)"
    for svc in "${SERVICES[@]}"; do
        if running "$svc"; then continue; fi
        # shellcheck disable=SC2046
        env $(service_env "$svc") nohup "$BIN/$svc" >>"$MF_DIR/log/$svc.log" 2>&1 &
        echo $! >"$MF_DIR/run/$svc.pid"
        local port
        port=$(port_of "$svc")
        if [ -n "$port" ]; then
            for _ in $(seq 1 120); do
                listening "$port" && break
                running "$svc" || { tail -20 "$MF_DIR/log/$svc.log" >&2; die "$svc exited"; }
                sleep 0.25
            done
            listening "$port" || die "$svc does not listen on $port"
        fi
    done
    # The users (mailctl refuses duplicates; that is fine on a second up).
    local ctl=("$BIN/mailctl" --pki "$PKI" --admin-url "https://127.0.0.1:$MF_ADMIN_PORT")
    "${ctl[@]}" domain add "$MF_DOMAIN" >/dev/null 2>&1 || true
    local have
    have=$("${ctl[@]}" account list 2>/dev/null | grep -c "@$MF_DOMAIN" || true)
    if [ "$have" -lt "$MF_USERS" ]; then
        log "creating $MF_USERS users load1..load$MF_USERS@$MF_DOMAIN"
        for i in $(seq 1 "$MF_USERS"); do
            "${ctl[@]}" account add "load$i@$MF_DOMAIN" --password "$MF_PASSWORD" >/dev/null 2>&1 || true
        done
    fi
    log "up: SMTP $MF_SMTP_PORT, IMAP $MF_IMAP_PORT, POP3 $MF_POP3_PORT, storage $MF_STORAGE_PORT"
}

down() {
    local svc pid
    # Front-ends first, storage last.
    for svc in pop3-gateway imap-gateway smtp-ingress delivery-queue storage; do
        running "$svc" || { rm -f "$MF_DIR/run/$svc.pid"; continue; }
        pid=$(cat "$MF_DIR/run/$svc.pid")
        kill -TERM "$pid"
        for _ in $(seq 1 160); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        rm -f "$MF_DIR/run/$svc.pid"
    done
}

reset() {
    down
    psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$MF_DATABASE\" WITH (FORCE)" >/dev/null
    if [ -n "${BENCH_TRASH:-}" ] && [ -d "$MF_DIR/blobs" ]; then
        # Renames free no inodes: see scripts/bench.sh.
        mkdir -p "$BENCH_TRASH"
        mv "$MF_DIR/blobs" "$BENCH_TRASH/mailfleet-blobs.$(date +%s%N)"
    fi
    rm -rf "$MF_DIR/blobs"
    # Any server of a cluster deletes a stream for all of them.
    python3 "$HERE/nats_delete_streams.py" "${NATS_URL%%,*}" "$STREAM" "$RELAY_STREAM" "KV_$STATE_BUCKET"
    log "reset: database, blobs and streams removed"
}

pids() {
    local svc
    for svc in "${SERVICES[@]}"; do
        running "$svc" && cat "$MF_DIR/run/$svc.pid"
    done
    # The shared engines Mailfleet leans on belong to its cost too.
    head -1 "$(ls -d /var/lib/postgresql/*/main | sort -V | tail -1)/postmaster.pid"
    if [ -n "${MF_NATS_PIDS:-}" ]; then
        tr , '\n' <<<"$MF_NATS_PIDS"
    else
        pgrep -o -x nats-server
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    reset) reset ;;
    pids) pids ;;
    *) die "usage: $0 up|down|reset|pids" ;;
esac
