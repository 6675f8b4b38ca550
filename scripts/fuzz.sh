#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (or the ones named) for a bounded time,
# one after another: the SMTP, IMAP and POP3 command parsers, the MIME
# parser and the PROXY header parser (cargo-fuzz, libFuzzer with
# AddressSanitizer and its leak checker).
#
#   scripts/fuzz.sh                  # 60 s per target
#   scripts/fuzz.sh 3600 mime        # one hour of the MIME parser
#   FUZZ_JOBS=2 scripts/fuzz.sh 600  # two targets at a time
#
# A crash, a leak, an input slower than 10 s or one using over 2 GiB stops
# the run with a non-zero status; the input is left in
# fuzz/artifacts/<target>/ (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run
# --target-dir target/fuzz <target> <file>). The corpus grows in
# target/fuzz-corpus/<target>/, starting from fuzz/seeds/<target>/.
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, for this build only (see
# /work/shared/deps.md, "cargo-fuzz feasibility").
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
jobs="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

if ! cargo fuzz build --target-dir target/fuzz; then
    echo "fuzz: the fuzz targets do not build (does a parser file in crates/ use a crate fuzz/Cargo.toml lacks?)" >&2
    exit 1
fi

run_one() {
    local target="$1" log="target/fuzz-logs/$1.log"
    mkdir -p "target/fuzz-corpus/$target" target/fuzz-logs
    if cargo fuzz run --target-dir target/fuzz "$target" "target/fuzz-corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "fuzz: $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1) (no crash, leak or hang)"
    else
        echo "fuzz: $target FAILED; see $log and fuzz/artifacts/$target/" >&2
        grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -20 >&2
        return 1
    fi
}

status=0
running=0
for target in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        # Whichever finishes first frees its slot.
        wait -n || status=1
        running=$((running - 1))
    fi
    run_one "$target" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
exit "$status"
