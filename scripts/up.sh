#!/usr/bin/env bash
# Bring the whole Mailfleet system up on this machine: Postgres and NATS
# (started or installed when needed), then every service built in release
# mode and started in the background. Logs in var/log, pids in var/run.
# Stop everything with scripts/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services in start order; storage first, since everything talks to it.
SERVICES=(storage pop3-gateway imap-gateway delivery-queue smtp-ingress)

scripts/ensure-deps.sh
echo "up: building release binaries (the first build takes several minutes)" >&2
cargo build --release --locked --bins

mkdir -p var/log var/run
for svc in "${SERVICES[@]}"; do
    pidfile="var/run/$svc.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "up: $svc already running (pid $(cat "$pidfile"))" >&2
        continue
    fi
    config=()
    [ -f "deploy/config/$svc.toml" ] && config=(--config "deploy/config/$svc.toml")
    nohup "target/release/$svc" "${config[@]}" >"var/log/$svc.log" 2>&1 &
    echo $! >"$pidfile"
    echo "up: started $svc (pid $!, log var/log/$svc.log)" >&2
    if [ "$svc" = storage ]; then
        # Everything else talks to storage: wait until it serves.
        for _ in $(seq 1 120); do
            (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && break
            kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "up: storage exited; see var/log/storage.log" >&2; tail -20 var/log/storage.log >&2; exit 1; }
            sleep 0.5
        done
    fi
done

cat >&2 <<MSG
up: Mailfleet is running.
    storage gRPC 127.0.0.1:50051, admin 127.0.0.1:50052
    IMAP 127.0.0.1:1143 (STARTTLS), IMAPS 127.0.0.1:9993
    SMTP MX 127.0.0.1:2525, submission 127.0.0.1:5587 (STARTTLS), 127.0.0.1:4465 (TLS)
    manage it with:  target/release/mailctl --help
    stop it with:    scripts/down.sh
MSG
