#!/usr/bin/env bash
# What the replicated queue costs: the benchmark's SMTP scenario (messages
# sent, each watched over IMAP IDLE until it is in its mailbox) against the
# bench instance of Mailfleet (bench/mailfleet.sh) with its queue on
#
#   single   one nats-server, streams with one replica (scripts/up.sh's setup)
#   cluster  three nats-servers in one cluster, every stream and the state
#            bucket with three replicas (the compose deployment's setup: a
#            250 means two servers have the job)
#
# one after the other, BENCH_NATS_ROUNDS times (single, cluster, single,
# cluster, …), so that the machine's drift over minutes falls on both.
# Both use plain loopback NATS without TLS, as the main benchmark does: the
# figure is the cost of replication, not of encryption.
#
#   bench/nats_cost.sh        (~10 min with the defaults)
#
# Knobs [defaults]: BENCH_NATS_ROUNDS [2] BENCH_SMTP_MESSAGES [2000]
# BENCH_SMTP_CONCURRENCY [10] BENCH_SMTP_WARMUP [200] BENCH_SMTP_PASSES [3]
# BENCH_SEED [1]. The three servers listen on 127.0.0.1:34222-34224 (routes
# 36222-36224, monitoring 38222-38224), JetStream under
# var/bench/nats-cluster/. Results: var/bench/results/nats-<time>/ (one
# JSON per run, table.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${BENCH_NATS_ROUNDS:-2}
MESSAGES=${BENCH_SMTP_MESSAGES:-2000}
CONCURRENCY=${BENCH_SMTP_CONCURRENCY:-10}
WARMUP=${BENCH_SMTP_WARMUP:-200}
PASSES=${BENCH_SMTP_PASSES:-3}
SEED=${BENCH_SEED:-1}
OUT=${BENCH_OUT:-var/bench/results/nats-$(date -u +%Y%m%dT%H%M%SZ)}
CLUSTER_DIR=$ROOT/var/bench/nats-cluster
NODES=(1 2 3)
CLUSTER_URL=nats://127.0.0.1:34222,nats://127.0.0.1:34223,nats://127.0.0.1:34224

say() { echo "nats-cost: $*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

scripts/ensure-deps.sh
say "building release binaries"
cargo build --release --locked --bins
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)

cluster_up() {
    rm -rf "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR"
    local n routes
    for n in "${NODES[@]}"; do
        routes=$(for m in "${NODES[@]}"; do [ "$m" = "$n" ] || printf 'nats-route://127.0.0.1:3622%s, ' "$((m + 1))"; done)
        cat >"$CLUSTER_DIR/n$n.conf" <<EOF
server_name: bench-nats-$n
listen: 127.0.0.1:3422$((n + 1))
http: 127.0.0.1:3822$((n + 1))
jetstream { store_dir: "$CLUSTER_DIR/n$n" }
cluster { name: mailfleet-bench, listen: 127.0.0.1:3622$((n + 1)), routes: [${routes%, }] }
EOF
        nohup "$NATS_SERVER" -c "$CLUSTER_DIR/n$n.conf" >"$CLUSTER_DIR/n$n.log" 2>&1 &
        echo $! >"$CLUSTER_DIR/n$n.pid"
    done
    # Ready once every server knows the JetStream meta leader (before that
    # the JetStream API does not answer).
    for _ in $(seq 1 120); do
        local ok=0
        for n in "${NODES[@]}"; do
            curl -fsS "http://127.0.0.1:3822$((n + 1))/jsz" 2>/dev/null | grep -q '"leader": *"bench-nats-' \
                && ok=$((ok + 1))
        done
        [ "$ok" = 3 ] && return 0
        sleep 0.5
    done
    tail -5 "$CLUSTER_DIR"/n*.log >&2
    say "the cluster did not come up"
    exit 1
}

cluster_down() {
    local n pid
    for n in "${NODES[@]}"; do
        [ -f "$CLUSTER_DIR/n$n.pid" ] || continue
        pid=$(cat "$CLUSTER_DIR/n$n.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$CLUSTER_DIR/n$n.pid"
    done
}

cleanup() {
    bench/mailfleet.sh down >&2 || true
    cluster_down
}
trap cleanup EXIT

# One measured run of MODE; its JSON goes to $OUT/MODE-ROUND.json.
run() {
    local mode=$1 round=$2
    if [ "$mode" = cluster ]; then
        cluster_up
        export MF_NATS_URL=$CLUSTER_URL MF_QUEUE_REPLICAS=3
        MF_NATS_PIDS=$(cat "$CLUSTER_DIR"/n*.pid | paste -sd, -)
        export MF_NATS_PIDS
    else
        unset MF_NATS_URL MF_QUEUE_REPLICAS MF_NATS_PIDS
    fi
    bench/mailfleet.sh reset >&2
    bench/mailfleet.sh up >&2
    sync
    sleep 5
    local pids lg
    pids=$(bench/mailfleet.sh pids | paste -sd, -)
    lg=(target/release/loadgen --host 127.0.0.1 --smtp-port 32525 --imap-port 31143 --pop3-port 31110
        --password bench-password --seed "$SEED" --users 50)
    say "$mode, round $round: warm-up of $WARMUP messages"
    "${lg[@]}" --label smtp-warmup --max-seconds 300 smtp --messages "$WARMUP" --concurrency "$CONCURRENCY" \
        >"$OUT/$mode-$round-warmup.json"
    say "$mode, round $round: $PASSES x $MESSAGES messages from $CONCURRENCY connections"
    "${lg[@]}" --label smtp --cpu-pids "$pids" --max-seconds 900 \
        smtp --messages "$MESSAGES" --concurrency "$CONCURRENCY" --passes "$PASSES" >"$OUT/$mode-$round.json"
    bench/mailfleet.sh reset >&2
    [ "$mode" = cluster ] && cluster_down
    return 0
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in single cluster; do
        run "$mode" "$round"
    done
done

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/table.txt"
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
figures = [
    ("delivered_msg_per_s", "SMTP end to end, delivered msg/s"),
    ("accepted_msg_per_s", "SMTP accepted msg/s"),
    ("accept_p50_ms", "accept p50 (MAIL FROM to 250 after the dot), ms"),
    ("visible_p50_ms", "250 to visible over IMAP IDLE p50, ms"),
    ("cpu_seconds_per_1000_msg", "CPU s per 1,000 messages (whole stack, NATS included)"),
]
def load(mode, r):
    with open(f"{out}/{mode}-{r}.json") as f:
        doc = json.load(f)
    res = next(x for x in doc["results"] if x["name"] == "smtp")
    return {k: (v.get("value") if isinstance(v, dict) else v) for k, v in res["figures"].items()}, res["complete"]
runs = {m: [load(m, r) for r in range(1, rounds + 1)] for m in ("single", "cluster")}
print("| figure | one server, R1 | three servers, R3 | R3 / R1 |")
print("|---|---|---|---|")
for key, label in figures:
    cells, ratios = [], []
    for m in ("single", "cluster"):
        vals = [f.get(key) for f, _ in runs[m]]
        cells.append(" / ".join("-" if v is None else f"{v:,.1f}" for v in vals))
    for (s, _), (c, _) in zip(runs["single"], runs["cluster"]):
        sv, cv = s.get(key), c.get(key)
        ratios.append("-" if not sv or cv is None else f"{cv / sv:.2f}")
    print(f"| {label} | {cells[0]} | {cells[1]} | {' / '.join(ratios)} |")
incomplete = [f"{m} round {i + 1}" for m in runs for i, (_, ok) in enumerate(runs[m]) if not ok]
if incomplete:
    print("incomplete runs: " + ", ".join(incomplete))
EOF
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); results: $OUT" | tee -a "$OUT/table.txt"
