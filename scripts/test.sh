#!/usr/bin/env bash
# The whole test suite: starts (or installs) Postgres and NATS when needed,
# then runs every crate's unit and integration tests against them. protoc
# comes from the protoc-bin-vendored crate, so nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-deps.sh

# Tools the tests run, from Debian's packages when missing. Each test that
# needs one fails (never skips) without it, so a failed install stops here.
#   curl, python3: real POP3/IMAP/SMTP clients (imaplib, poplib, smtplib).
#   docker-compose: validates docker-compose.yml (no Docker engine needed);
#   haproxy: `haproxy -c` checks deploy/haproxy.cfg (crates/runtime/tests/deploy.rs).
#   nats-server: tests/crash.rs runs a 3-node cluster of its own (Debian
#   installs it in /usr/sbin; ensure-deps.sh skips it when a NATS already
#   listens).
#   debootstrap, docker (Debian's docker.io): scripts/compose_test.py builds
#   the images with scripts/images.sh and runs the compose deployment; the
#   Docker Engine must be running.
missing=()
for tool in curl python3 docker-compose haproxy; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test: installing ${missing[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    # RUNLEVEL=1: Debian's maintainer scripts install haproxy without
    # starting it as a daemon; only its config checker is used.
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}" >/dev/null || {
        echo "test: could not install ${missing[*]}; the tests that run them would fail" >&2
        exit 1
    }
fi

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
cargo test --workspace --locked "$@"

# The compose deployment as containers (scripts/compose_test.py, README
# "What the compose test proves"): images built from the binaries the
# tests above just built, then up, mail, scaled, killed, down and up.
scripts/compose_test.py --bin-dir target/debug

# A short run of every fuzz target (SMTP, IMAP, POP3 command parsers, MIME,
# PROXY header): it proves they still build against the parsers in crates/
# and that the seeds and a few seconds of mutations find nothing. Longer
# runs: scripts/fuzz.sh <seconds> [target...] (README, "Fuzzing").
scripts/fuzz.sh "${MAILFLEET_FUZZ_SECONDS:-10}"
