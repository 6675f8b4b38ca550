#!/usr/bin/env bash
# The whole test suite: starts (or installs) Postgres and NATS when needed,
# then runs every crate's unit and integration tests against them. protoc
# comes from the protoc-bin-vendored crate, so nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-deps.sh

# Python clients used by the end-to-end tests (imaplib, poplib, smtplib are
# in the standard library); curl is used as a real POP3/IMAP client.
if ! command -v curl >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    echo "test: installing curl and python3" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl python3 >/dev/null
fi

# docker-compose (Debian's package; no Docker engine needed) validates
# docker-compose.yml in crates/runtime/tests/deploy.rs.
command -v docker-compose >/dev/null 2>&1 || { echo "test: installing docker-compose" >&2; $([ "$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null' || echo "test: docker-compose unavailable; the compose check will skip" >&2; }

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
cargo test --workspace --locked "$@"

# A short run of every fuzz target (SMTP, IMAP, POP3 command parsers, MIME,
# PROXY header): it proves they still build against the parsers in crates/
# and that the seeds and a few seconds of mutations find nothing. Longer
# runs: scripts/fuzz.sh <seconds> [target...] (README, "Fuzzing").
scripts/fuzz.sh "${MAILFLEET_FUZZ_SECONDS:-10}"
