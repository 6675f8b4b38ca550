#!/usr/bin/env bash
# Bring the whole Mailfleet system up on this machine: Postgres (started or
# installed when needed), the fleet's certificates, a NATS server of its own
# secured like production, then every service built in release mode and
# started in the background. Logs in var/log, pids in var/run. Stop
# everything with scripts/down.sh.
#
# MAILFLEET_BIN_DIR: take the binaries from this directory as they are
# instead of building target/release (e.g. a debug build made elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

# Services in start order; storage first, since everything talks to it.
SERVICES=(storage pop3-gateway imap-gateway delivery-queue smtp-ingress)
# The development NATS (deploy/nats/dev.conf): not the shared server on
# 4222 that scripts/ensure-deps.sh keeps for the test suite, which has no
# users; this one requires every client to prove its identity.
NATS_URL=nats://127.0.0.1:4223
NATS_MONITOR_PORT=8223
PKI="$ROOT/var/pki"

scripts/ensure-deps.sh
if [ -n "${MAILFLEET_BIN_DIR:-}" ]; then
    BIN="$(cd "$MAILFLEET_BIN_DIR" && pwd)"
    echo "up: using the binaries in $BIN" >&2
else
    BIN="$ROOT/target/release"
    echo "up: building release binaries (the first build takes several minutes)" >&2
    cargo build --release --locked --bins
fi

mkdir -p var/log var/run var/nats

running() { [ -f "var/run/$1.pid" ] && kill -0 "$(cat "var/run/$1.pid")" 2>/dev/null; }
# GET on a loopback port answers 200 (bash only: curl may be missing).
http_ok() {
    local answer
    answer="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3 && head -1 <&3) 2>/dev/null)" || return 1
    [[ "$answer" == HTTP/1.?" 200"* ]]
}

# The fleet PKI: a CA and a certificate per identity. Existing files are
# kept, so certificates stay the same from one start to the next.
"$BIN/mailctl" pki init "$PKI" >/dev/null
echo "up: fleet certificates in var/pki" >&2

# NATS: JetStream, TLS with the `nats` certificate, every client a user by
# its certificate (auth.conf). dev.conf reads its file paths from these.
if running nats; then
    echo "up: nats already running (pid $(cat var/run/nats.pid))" >&2
else
    nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
    MAILFLEET_DEV_NATS_STORE="$ROOT/var/nats" \
    MAILFLEET_DEV_NATS_CERT="$PKI/nats.crt" \
    MAILFLEET_DEV_NATS_KEY="$PKI/nats.key" \
    MAILFLEET_DEV_NATS_CA="$PKI/ca.crt" \
        nohup "$nats_bin" -c deploy/nats/dev.conf >var/log/nats.log 2>&1 &
    echo $! >var/run/nats.pid
    echo "up: started nats (pid $!, log var/log/nats.log)" >&2
fi
for _ in $(seq 1 120); do
    # /healthz: 200 once it serves clients and JetStream is up.
    http_ok "$NATS_MONITOR_PORT" /healthz && break
    running nats || { echo "up: nats exited; see var/log/nats.log" >&2; tail -20 var/log/nats.log >&2; exit 1; }
    sleep 0.5
done
http_ok "$NATS_MONITOR_PORT" /healthz || { echo "up: nats not healthy; see var/log/nats.log" >&2; exit 1; }

# Each service's environment: its own identity from var/pki, for storage
# (mutual TLS, MAILFLEET_<PREFIX>_IDENTITY__*) and for the development NATS
# (MAILFLEET_<PREFIX>_NATS_TLS__*). pop3-gateway uses no NATS.
service_env() {
    local prefix name="$1"
    case "$name" in
        storage) prefix=STORAGE ;;
        smtp-ingress) prefix=SMTP ;;
        delivery-queue) prefix=QUEUE ;;
        imap-gateway) prefix=IMAP ;;
        pop3-gateway) prefix=POP3 ;;
        *) return 0 ;;
    esac
    echo "MAILFLEET_${prefix}_IDENTITY__CA_FILE=$PKI/ca.crt"
    echo "MAILFLEET_${prefix}_IDENTITY__CERT_FILE=$PKI/$name.crt"
    echo "MAILFLEET_${prefix}_IDENTITY__KEY_FILE=$PKI/$name.key"
    [ "$name" = pop3-gateway ] && return 0
    echo "MAILFLEET_${prefix}_NATS_URL=$NATS_URL"
    echo "MAILFLEET_${prefix}_NATS_TLS__CA_FILE=$PKI/ca.crt"
    echo "MAILFLEET_${prefix}_NATS_TLS__CERT_FILE=$PKI/$name.crt"
    echo "MAILFLEET_${prefix}_NATS_TLS__KEY_FILE=$PKI/$name.key"
}

for svc in "${SERVICES[@]}"; do
    pidfile="var/run/$svc.pid"
    if running "$svc"; then
        echo "up: $svc already running (pid $(cat "$pidfile"))" >&2
        continue
    fi
    config=()
    [ -f "deploy/config/$svc.toml" ] && config=(--config "deploy/config/$svc.toml")
    mapfile -t envs < <(service_env "$svc")
    nohup env "${envs[@]}" "$BIN/$svc" "${config[@]}" >"var/log/$svc.log" 2>&1 &
    echo $! >"$pidfile"
    echo "up: started $svc (pid $!, log var/log/$svc.log)" >&2
    if [ "$svc" = storage ]; then
        # Everything else talks to storage: wait until it serves.
        for _ in $(seq 1 120); do
            (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && break
            running storage || { echo "up: storage exited; see var/log/storage.log" >&2; tail -20 var/log/storage.log >&2; exit 1; }
            sleep 0.5
        done
    fi
done

cat >&2 <<MSG
up: Mailfleet is running.
    storage gRPC 127.0.0.1:50051, admin 127.0.0.1:50052 (both mutual TLS: fleet certificates in var/pki)
    IMAP 127.0.0.1:1143 (STARTTLS), IMAPS 127.0.0.1:9993
    SMTP MX 127.0.0.1:2525, submission 127.0.0.1:5587 (STARTTLS), 127.0.0.1:4465 (TLS)
    POP3 127.0.0.1:1110 (STLS), POP3S 127.0.0.1:9995
    NATS $NATS_URL (TLS, a fleet certificate required; monitoring 127.0.0.1:$NATS_MONITOR_PORT)
    manage it with:  $BIN/mailctl --help   (as the fleet's mailctl: --pki var/pki, the default)
    the queue:       $BIN/mailctl queue --nats-url $NATS_URL \\
                         --nats-ca-file $PKI/ca.crt \\
                         --nats-cert-file $PKI/mailctl.crt --nats-key-file $PKI/mailctl.key list
    stop it with:    scripts/down.sh
MSG
