#!/usr/bin/env bash
# Stop the services started by scripts/up.sh (SIGTERM, then wait).
set -euo pipefail
cd "$(dirname "$0")/.."
for pidfile in var/run/*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    svc="$(basename "$pidfile" .pid)"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "down: stopped $svc" >&2
    fi
    rm -f "$pidfile"
done
