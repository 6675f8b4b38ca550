#!/usr/bin/env bash
# The benchmark: the same load (crates/loadgen) against Mailfleet and, in the
# same run on the same machine, against Postfix + Dovecot from Debian
# (bench/reference), then one table of both with the ratio
# Mailfleet/reference for every figure, and the issue's targets checked.
# Every scenario is bounded in count and time; all traffic is loopback.
#
#   scripts/bench.sh                 # both systems, default sizes (~20 min)
#   BENCH_ONLY=mailfleet scripts/bench.sh   # one side only (no ratios)
#
# Both stacks are started fresh, side by side, and every scenario runs
# against one and then the other before the next scenario begins: a shared
# machine's speed drifts over minutes, and a ratio should compare two runs
# made under the same conditions, not ten minutes apart. The stack that is
# not being measured sits idle.
#
# Knobs (defaults in brackets): BENCH_SMTP_MESSAGES [2000]
# BENCH_SMTP_CONCURRENCY [10] BENCH_SMTP_WARMUP [200] (messages sent before
# the measured SMTP runs) BENCH_SMTP_PASSES [3] (the SMTP scenario is run
# that many times; each rate and latency is the median of the passes')
# BENCH_PASSES [5] (the same for the full fetch and the POP3 scenarios)
# BENCH_MAILBOX_MESSAGES
# [300] (users 1-10, for the IMAP and POP3 scenarios)
# BENCH_FULL_FETCH_MESSAGES [5000] (10 KB each, one user) BENCH_CLIENTS [10]
# BENCH_IDLE_CONNECTIONS [1000] BENCH_SEED [1].
# Results: var/bench/results/<time>/ (one JSON per scenario and side,
# combined.json, table.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY=${BENCH_ONLY:-both}
SMTP_MESSAGES=${BENCH_SMTP_MESSAGES:-2000}
SMTP_CONCURRENCY=${BENCH_SMTP_CONCURRENCY:-10}
SMTP_WARMUP=${BENCH_SMTP_WARMUP:-200}
SMTP_PASSES=${BENCH_SMTP_PASSES:-3}
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

case "$ONLY" in
    both) SIDES=(mailfleet reference) ;;
    mailfleet | reference) SIDES=("$ONLY") ;;
    *) say "BENCH_ONLY must be mailfleet or reference"; exit 2 ;;
esac

# Per side: its control script, SMTP/IMAP/POP3 ports, the process names
# the idle scenario measures, and how many of its `pids` are its own
# service roots (the rest are the shared engines Mailfleet leans on).
declare -A CONTROL=([mailfleet]=bench/mailfleet.sh [reference]=bench/reference/setup.sh)
declare -A PORTS=([mailfleet]="32525 31143 31110" [reference]="12525 11143 11110")
declare -A IDLE_NAMES=([mailfleet]=imap-gateway [reference]=imap,imap-login)
declare -A OWN_ROOTS=([mailfleet]=5 [reference]=2)

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
# directory (a rename frees nothing) and it is deleted after the last run;
# a run that starts within 360 s of that deletion, or of a release build
# (rustc deletes its temporary files), waits the rest out: it would tax
# whichever side is measured first.
export BENCH_TRASH=${BENCH_TRASH:-$PWD/var/bench/trash}
EMPTIED=var/bench/trash-emptied-at
mkdir -p "$BENCH_TRASH"
cleanup() {
    for side in "${SIDES[@]}"; do "${CONTROL[$side]}" down >&2 || true; done
    if [ -n "$(ls -A "$BENCH_TRASH" 2>/dev/null)" ]; then
        rm -rf -- "$BENCH_TRASH"
        date +%s >"$EMPTIED"
    fi
}
trap cleanup EXIT
# A build that did something deleted thousands of rustc's temporary files
# too (the binaries' time says when it finished).
built=$(stat -c %Y target/release/{storage,smtp-ingress,delivery-queue,imap-gateway,pop3-gateway,loadgen} | sort -n | tail -1)
emptied=$(cat "$EMPTIED" 2>/dev/null || echo 0)
last=$((built > emptied ? built : emptied))
wait_s=$((last + 360 - $(date +%s)))
if [ "$wait_s" -gt 0 ]; then
    say "files were deleted by the thousand less than 6 minutes ago (build or last run); waiting ${wait_s}s for ext4 to let go of the freed inodes"
    sleep "$wait_s"
fi

# lg SIDE ARGS…: loadgen aimed at SIDE.
lg() {
    local side=$1 smtp imap pop3
    shift
    read -r smtp imap pop3 <<<"${PORTS[$side]}"
    "$LOADGEN" --host 127.0.0.1 --smtp-port "$smtp" --imap-port "$imap" --pop3-port "$pop3" \
        --password "$PASSWORD" --seed "$SEED" "$@"
}
# pids SIDE [own]: the side's root PIDs (only its own services with `own`).
pids() {
    local all
    mapfile -t all < <("${CONTROL[$1]}" pids)
    if [ "${2:-}" = own ]; then all=("${all[@]:0:${OWN_ROOTS[$1]}}"); fi
    (IFS=,; echo "${all[*]}")
}

for side in "${SIDES[@]}"; do
    say "== $side: fresh start"
    "${CONTROL[$side]}" reset >&2
    "${CONTROL[$side]}" up >&2
done
# Let the start settle (writeback of what reset and start wrote).
sync
sleep 10

# The idle connections first, against processes that have done nothing
# else yet: the growth of the gateway's (or Dovecot's) own memory per
# connection, not memory an allocator kept from earlier scenarios.
for side in "${SIDES[@]}"; do
    say "$side: $IDLE_CONNECTIONS idle IMAP connections"
    lg "$side" --users "$USERS" --label idle --max-seconds 1800 \
        idle --connections "$IDLE_CONNECTIONS" --process-name "${IDLE_NAMES[$side]}" \
        --process-root "$(pids "$side" own)" >"$OUT/$side-idle.json"
done

# A short run first, not compared: both stacks start processes,
# connections and caches on their first messages.
for side in "${SIDES[@]}"; do
    say "$side: SMTP warm-up, $SMTP_WARMUP messages"
    lg "$side" --users "$USERS" --label smtp-warmup --max-seconds 300 \
        smtp --messages "$SMTP_WARMUP" --concurrency "$SMTP_CONCURRENCY" >"$OUT/$side-smtp-warmup.json"
done
for side in "${SIDES[@]}"; do
    say "$side: SMTP ingest, $SMTP_PASSES x $SMTP_MESSAGES messages from $SMTP_CONCURRENCY connections to $USERS users"
    lg "$side" --users "$USERS" --label smtp --cpu-pids "$(pids "$side")" --max-seconds 900 \
        smtp --messages "$SMTP_MESSAGES" --concurrency "$SMTP_CONCURRENCY" --passes "$SMTP_PASSES" \
        >"$OUT/$side-smtp.json"
done

for side in "${SIDES[@]}"; do
    say "$side: filling mailboxes (users 1-10: $MAILBOX_MESSAGES each; load41: $FULL_FETCH_MESSAGES x 10 KB)"
    lg "$side" --users 10 --label populate --max-seconds 900 \
        populate --messages "$MAILBOX_MESSAGES" --concurrency 4 >"$OUT/$side-populate.json"
    lg "$side" --users 1 --user-format 'load4{}@bench.test' --label populate-bulk --max-seconds 900 \
        populate --messages "$FULL_FETCH_MESSAGES" --concurrency 4 --size-min 10240 --size-max 10240 \
        >"$OUT/$side-populate-bulk.json"
done

for side in "${SIDES[@]}"; do
    say "$side: IMAP, $CLIENTS clients"
    lg "$side" --users 10 --label imap --cpu-pids "$(pids "$side")" --max-seconds 600 \
        imap --concurrency "$CLIENTS" --rounds 5 >"$OUT/$side-imap.json"
done
for side in "${SIDES[@]}"; do
    say "$side: IMAP, one client fetching $FULL_FETCH_MESSAGES messages"
    lg "$side" --users 1 --user-format 'load4{}@bench.test' --label imap-full-fetch --cpu-pids "$(pids "$side")" \
        --max-seconds 600 imap --concurrency 1 --rounds 0 --full-fetch --passes "$PASSES" \
        >"$OUT/$side-imap-full-fetch.json"
done

for side in "${SIDES[@]}"; do
    say "$side: POP3, $CLIENTS clients"
    lg "$side" --users 10 --label pop3 --cpu-pids "$(pids "$side")" --max-seconds 600 \
        pop3 --concurrency "$CLIENTS" --passes "$PASSES" >"$OUT/$side-pop3.json"
done
for side in "${SIDES[@]}"; do
    say "$side: POP3, one client"
    lg "$side" --users 1 --user-format 'load4{}@bench.test' --label pop3-one-client --cpu-pids "$(pids "$side")" \
        --max-seconds 600 pop3 --concurrency 1 --passes "$PASSES" >"$OUT/$side-pop3-one-client.json"
done

if [ "$ONLY" = both ]; then
    "$LOADGEN" report --mailfleet "$OUT"/mailfleet-*.json --reference "$OUT"/reference-*.json \
        --out "$OUT/combined.json" 2>&1 | tee "$OUT/table.txt" >&2
    python3 bench/targets.py "$OUT/combined.json" | tee -a "$OUT/table.txt"
fi
{
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
    echo "results: $OUT"
} | tee -a "$OUT/table.txt"
