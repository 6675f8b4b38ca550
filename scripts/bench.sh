#!/usr/bin/env bash
# The benchmark: the same load (crates/loadgen) against Mailfleet and, in the
# same run on the same machine, against Postfix + Dovecot from Debian
# (bench/reference), then one table of both with the ratio
# Mailfleet/reference for every figure, and the issue's targets checked.
# Every scenario is bounded in count and time; all traffic is loopback.
#
#   scripts/bench.sh                 # both systems, default sizes (~15 min)
#   BENCH_ONLY=mailfleet scripts/bench.sh   # one side only (no ratios)
#
# Knobs (defaults in brackets): BENCH_SMTP_MESSAGES [2000]
# BENCH_SMTP_CONCURRENCY [10] BENCH_SMTP_WARMUP [200] (messages sent before
# the measured SMTP run) BENCH_PASSES [5] (the full fetch and the POP3
# scenarios are repeated, their rates are the median pass)
# BENCH_MAILBOX_MESSAGES [300] (users 1-10, for
# the IMAP and POP3 scenarios) BENCH_FULL_FETCH_MESSAGES [5000] (10 KB each,
# one user) BENCH_CLIENTS [10] BENCH_IDLE_CONNECTIONS [1000] BENCH_SEED [1].
# Results: var/bench/results/<time>/ (one JSON per scenario and side,
# combined.json, table.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY=${BENCH_ONLY:-both}
SMTP_MESSAGES=${BENCH_SMTP_MESSAGES:-2000}
SMTP_CONCURRENCY=${BENCH_SMTP_CONCURRENCY:-10}
SMTP_WARMUP=${BENCH_SMTP_WARMUP:-200}
PASSES=${BENCH_PASSES:-5}
MAILBOX_MESSAGES=${BENCH_MAILBOX_MESSAGES:-300}
FULL_FETCH_MESSAGES=${BENCH_FULL_FETCH_MESSAGES:-5000}
CLIENTS=${BENCH_CLIENTS:-10}
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-1000}
SEED=${BENCH_SEED:-1}
USERS=50
PASSWORD=bench-password
OUT=${BENCH_OUT:-var/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
LOADGEN=target/release/loadgen

say() { echo "bench: $*" >&2; }

scripts/ensure-deps.sh
say "building release binaries"
cargo build --release --locked --bins
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

# Both stacks create a file per message. ext4 without a journal (as here)
# will not reuse an inode freed less than 60 s ago, or 360 s while its
# inode-table block is dirty, and checks every such inode it passes over
# when it allocates: right after a reset that deleted thousands of files,
# every new file costs a scan. So resets move old mail into a trash
# directory (a rename frees nothing) and it is deleted after the last run.
export BENCH_TRASH=${BENCH_TRASH:-$PWD/var/bench/trash}
mkdir -p "$BENCH_TRASH"
trap 'rm -rf -- "$BENCH_TRASH"' EXIT

# run_side NAME CONTROL SMTP IMAP POP3 IDLE_PROCESS_NAMES
run_side() {
    local side=$1 control=$2 smtp=$3 imap=$4 pop3=$5 names=$6
    say "== $side: fresh start"
    "$control" reset >&2
    "$control" up >&2
    # Let the start settle (writeback of what reset and start wrote).
    sync
    sleep 10
    local pids
    pids=$("$control" pids | paste -sd, -)
    local lg=("$LOADGEN" --host 127.0.0.1 --smtp-port "$smtp" --imap-port "$imap" --pop3-port "$pop3"
        --password "$PASSWORD" --seed "$SEED")
    local o="$OUT/$side"

    # A short run first, not compared: both stacks start processes,
    # connections and caches on their first messages.
    say "$side: SMTP warm-up, $SMTP_WARMUP messages"
    "${lg[@]}" --users "$USERS" --label smtp-warmup --max-seconds 300 \
        smtp --messages "$SMTP_WARMUP" --concurrency "$SMTP_CONCURRENCY" >"$o-smtp-warmup.json"
    say "$side: SMTP ingest, $SMTP_MESSAGES messages from $SMTP_CONCURRENCY connections to $USERS users"
    "${lg[@]}" --users "$USERS" --label smtp --cpu-pids "$pids" --max-seconds 600 \
        smtp --messages "$SMTP_MESSAGES" --concurrency "$SMTP_CONCURRENCY" >"$o-smtp.json"

    say "$side: filling mailboxes (users 1-10: $MAILBOX_MESSAGES each; load41: $FULL_FETCH_MESSAGES x 10 KB)"
    "${lg[@]}" --users 10 --label populate --max-seconds 900 \
        populate --messages "$MAILBOX_MESSAGES" --concurrency 4 >"$o-populate.json"
    "${lg[@]}" --users 1 --user-format 'load4{}@bench.test' --label populate-bulk --max-seconds 900 \
        populate --messages "$FULL_FETCH_MESSAGES" --concurrency 4 --size-min 10240 --size-max 10240 >"$o-populate-bulk.json"

    say "$side: IMAP, $CLIENTS clients"
    "${lg[@]}" --users 10 --label imap --cpu-pids "$pids" --max-seconds 600 \
        imap --concurrency "$CLIENTS" --rounds 5 >"$o-imap.json"
    say "$side: IMAP, one client fetching $FULL_FETCH_MESSAGES messages"
    "${lg[@]}" --users 1 --user-format 'load4{}@bench.test' --label imap-full-fetch --cpu-pids "$pids" \
        --max-seconds 600 imap --concurrency 1 --rounds 0 --full-fetch --passes "$PASSES" >"$o-imap-full-fetch.json"

    say "$side: POP3, $CLIENTS clients"
    "${lg[@]}" --users 10 --label pop3 --cpu-pids "$pids" --max-seconds 600 \
        pop3 --concurrency "$CLIENTS" --passes "$PASSES" >"$o-pop3.json"
    say "$side: POP3, one client"
    "${lg[@]}" --users 1 --user-format 'load4{}@bench.test' --label pop3-one-client --cpu-pids "$pids" \
        --max-seconds 600 pop3 --concurrency 1 --passes "$PASSES" >"$o-pop3-one-client.json"

    say "$side: $IDLE_CONNECTIONS idle IMAP connections"
    # The gateway's (or Dovecot's) own processes: the services' roots only,
    # not the shared engines listed after them.
    local all roots
    mapfile -t all < <("$control" pids)
    if [ "$side" = mailfleet ]; then roots=$(IFS=,; echo "${all[*]:0:5}"); else roots=$(IFS=,; echo "${all[*]:0:2}"); fi
    "${lg[@]}" --users "$USERS" --label idle --max-seconds 1800 \
        idle --connections "$IDLE_CONNECTIONS" --process-name "$names" --process-root "$roots" >"$o-idle.json"

    "$control" down >&2
}

if [ "$ONLY" != reference ]; then
    run_side mailfleet bench/mailfleet.sh 32525 31143 31110 imap-gateway
fi
if [ "$ONLY" != mailfleet ]; then
    run_side reference bench/reference/setup.sh 12525 11143 11110 imap,imap-login
fi

if [ "$ONLY" = both ]; then
    "$LOADGEN" report --mailfleet "$OUT"/mailfleet-*.json --reference "$OUT"/reference-*.json \
        --out "$OUT/combined.json" 2>&1 | tee "$OUT/table.txt" >&2
    python3 bench/targets.py "$OUT/combined.json" | tee -a "$OUT/table.txt"
fi
{
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
    echo "results: $OUT"
} | tee -a "$OUT/table.txt"
