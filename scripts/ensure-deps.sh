#!/usr/bin/env bash
# Make sure PostgreSQL and NATS (with JetStream) run on loopback. Starts them
# when installed but stopped; installs them from Debian's packages when
# missing. Idempotent: does nothing when both already answer.
set -euo pipefail

PG_PORT="${PG_PORT:-5432}"
NATS_PORT="${NATS_PORT:-4222}"

say() { echo "ensure-deps: $*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
    return 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Development machines use trust authentication on loopback, as the test
# harness and the development defaults connect as `postgres` without a
# password. A cluster that was installed before (Debian's default is
# scram-sha-256 on loopback) gets the same change, not only a fresh one.
# Prints "changed" when it edited the file.
trust_loopback() {
    local hba="/etc/postgresql/$1/main/pg_hba.conf"
    [ -f "$hba" ] || return 0
    if as_root grep -Eq '^host\s+all\s+all\s+(127\.0\.0\.1/32|::1/128)\s+(scram-sha-256|md5|password)' "$hba"; then
        say "allowing password-less connections from loopback (trust) in $hba"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
        echo changed
    fi
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        if listening "$PG_PORT"; then return 0; fi   # someone else's server: leave it alone
        say "installing PostgreSQL from Debian packages"
        apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -1)"
    local changed
    changed="$(trust_loopback "$version")"
    if listening "$PG_PORT"; then
        if [ -n "$changed" ]; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        fi
        return 0
    fi
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port "$PG_PORT" || { say "PostgreSQL did not come up on port $PG_PORT"; exit 1; }
}

ensure_nats() {
    if listening "$NATS_PORT"; then return 0; fi
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
        say "installing nats-server from Debian packages"
        apt_install nats-server
    fi
    local bin
    bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
    as_root mkdir -p /var/lib/nats-server
    say "starting nats-server with JetStream"
    as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- \
        -a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port "$NATS_PORT" || { say "NATS did not come up on port $NATS_PORT"; exit 1; }
}

ensure_postgres
ensure_nats
say "PostgreSQL on 127.0.0.1:$PG_PORT and NATS on 127.0.0.1:$NATS_PORT are up"
