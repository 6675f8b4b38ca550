#!/usr/bin/env bash
# Stop what scripts/up.sh started (SIGTERM, then wait): the services first,
# then its NATS server, so that nothing the services still publish while
# they finish is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
stop() {
    local pidfile="$1" pid svc
    pid="$(cat "$pidfile")"
    svc="$(basename "$pidfile" .pid)"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "down: stopped $svc" >&2
    fi
    rm -f "$pidfile"
}
for pidfile in var/run/*.pid; do
    [ -e "$pidfile" ] || continue
    [ "$pidfile" = var/run/nats.pid ] && continue
    stop "$pidfile"
done
[ -e var/run/nats.pid ] && stop var/run/nats.pid
exit 0
