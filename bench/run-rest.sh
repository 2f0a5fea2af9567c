#!/usr/bin/env bash
# REST ingest benchmark: converger on SQLite, then on PostgreSQL, each loaded by
# bench/loadgen (a) as fast as possible and (b) at a fixed rate.
#
# Usage: bench/run-rest.sh            (from anywhere; about 2 x (2 x 23 s) of load)
#
# Builds:
#   - converger:  `cargo build --release` in the repository root (target/release);
#   - loadgen:    `CARGO_TARGET_DIR=<root>/target/bench cargo build --release
#                  --manifest-path bench/loadgen/Cargo.toml`. Its own target dir keeps it
#                  from locking target/ while other builds run there.
#
# Knobs (environment):
#   DURATION=20   measured seconds per run       WARMUP=3      warm-up seconds per run
#   RATE=1000     fixed rate of run (b), /s      CONCURRENCY=64  in-flight bound
#   CONVERSATIONS=100                            THREADS=2     loadgen worker threads
#   PORT=4400     server port on 127.0.0.1       SKIP_BUILD=1  use existing binaries
#   BACKENDS="sqlite postgres"                   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
#
# Only 127.0.0.1 is targeted. The server is stopped on exit (trap), whatever happens.
# Results: a human summary per run, one JSON line per run in $WORK/results.jsonl, a
# table at the end; server logs stay in $WORK (printed) for inspection.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
RATE="${RATE:-1000}"
CONCURRENCY="${CONCURRENCY:-64}"
CONVERSATIONS="${CONVERSATIONS:-100}"
THREADS="${THREADS:-2}"
PORT="${PORT:-4400}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
PGDB=converger_bench

CONVERGER="$ROOT/target/release/converger"
LOADGEN_TARGET="$ROOT/target/bench"
LOADGEN="$LOADGEN_TARGET/release/loadgen"
WORK="$(mktemp -d /tmp/converger-bench.XXXXXX)"
RESULTS="$WORK/results.jsonl"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap stop_server EXIT
trap 'exit 130' INT TERM

build_all
[[ -x "$CONVERGER" && -x "$LOADGEN" ]] || { echo "missing binaries; build first" >&2; exit 1; }
port_free "$PORT"

# One loadgen run against the running server; appends its JSON line to $RESULTS.
run_load() {
    local label="$1" rate="$2"
    local before out
    before="$(cpu_snapshot)"
    out="$WORK/$label.out"
    # Bounded: warm-up + duration + request timeout + set-up, with a generous margin.
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + 60)) "$LOADGEN" \
        --url "http://127.0.0.1:$PORT" --conversations "$CONVERSATIONS" \
        --rate "$rate" --concurrency "$CONCURRENCY" --threads "$THREADS" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
        >"$out" 2>"$WORK/$label.err" || {
        echo "loadgen $label failed:" >&2
        cat "$WORK/$label.err" "$out" >&2
        exit 1
    }
    grep -v '^{' "$out"
    # CPU seconds over the whole run (set-up + warm-up + measured). "other" is whatever
    # else ran on the machine: if it is large, the numbers are polluted; run again.
    cpu_report "$before" "$(cpu_snapshot)" "$WORK/$label.time"
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "converger died during $label; log:" >&2
        tail -50 "$SERVER_LOG" >&2 || true
        exit 1
    fi
    grep '^{' "$out" >>"$RESULTS"
}

bench_backend() {
    local name="$1"
    log "$name: starting converger on 127.0.0.1:$PORT"
    start_server "$name"
    create_tenant

    log "$name (a): max throughput, $CONCURRENCY in flight, ${DURATION}s"
    run_load "$name-max" 0
    log "$name (b): fixed ${RATE}/s, ${DURATION}s"
    run_load "$name-fixed$RATE" "$RATE"

    stop_server
    report_log "$name"
}

# Rate limits off: the benchmark measures the server, not the limiter.
export RUST_LOG=warn CONVERGER_LISTEN="127.0.0.1:$PORT" \
    CONVERGER_RATE_LIMIT_PER_IP=0 CONVERGER_RATE_LIMIT_PER_TENANT=0 CONVERGER_MAX_CONNECTIONS_PER_IP=0

for backend in $BACKENDS; do
    use_backend "$backend"
    bench_backend "$backend"
done

log "results (latency ms; throughput = 201s per second of the measured window)"
{
    printf 'run\tsent\t201\terrors\tunsent\tthroughput/s\tp50\tp95\tp99\tmax\n'
    jq -r '[.label, .sent, .created, .errors, .unsent, (.throughput | round),
            .p50_ms, .p95_ms, .p99_ms, .max_ms] | @tsv' "$RESULTS"
} | column -t -s $'\t'
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "raw results: $RESULTS; logs: $WORK"
