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
SERVER_PID=""
SERVER_LOG=""
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '\n### %s\n' "$*" >&2; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        # Graceful shutdown first, then force after 10 s.
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# CPU seconds (user + system) a process has used so far.
proc_cpu() {
    awk -v tck="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# CPU seconds used so far by all processes named postgres (backends that exited
# meanwhile are missed; the server's pooled connections live through a run).
postgres_cpu() {
    local total=0 pid
    for pid in $(pgrep -x postgres || true); do
        total="$(awk -v t="$total" -v tck="$CLK_TCK" '{ printf "%.2f", t + ($14 + $15) / tck }' \
            "/proc/$pid/stat" 2>/dev/null || echo "$total")"
    done
    echo "$total"
}
# Busy and total CPU seconds of the whole machine so far.
machine_cpu() {
    awk -v tck="$CLK_TCK" '/^cpu /{ busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6;
        printf "%.2f %.2f", busy / tck, total / tck }' /proc/stat
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building converger (release)"
    (cd "$ROOT" && cargo build --release)
    log "building loadgen (release, CARGO_TARGET_DIR=$LOADGEN_TARGET)"
    CARGO_TARGET_DIR="$LOADGEN_TARGET" cargo build --release \
        --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
fi
[[ -x "$CONVERGER" && -x "$LOADGEN" ]] || { echo "missing binaries; build first" >&2; exit 1; }

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT on 127.0.0.1 is taken; set PORT=..." >&2
    exit 1
fi

# Starts `converger serve` with the current CONVERGER_* environment and waits (<= 15 s)
# for /ready.
start_server() {
    local name="$1"
    SERVER_LOG="$WORK/$name-server.log"
    "$CONVERGER" serve >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 150); do
        if curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "converger did not become ready; log:" >&2
    cat "$SERVER_LOG" >&2
    exit 1
}

# One loadgen run against the running server; appends its JSON line to $RESULTS.
run_load() {
    local label="$1" rate="$2"
    local cpu_before machine_before cpu_after machine_after pg_before pg_after out
    cpu_before="$(proc_cpu "$SERVER_PID")"
    pg_before="$(postgres_cpu)"
    machine_before="$(machine_cpu)"
    out="$WORK/$label.out"
    # Bounded: warm-up + duration + request timeout + set-up, with a generous margin.
    /usr/bin/time -f 'loadgen cpu %U user %S sys' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + 60)) "$LOADGEN" \
        --url "http://127.0.0.1:$PORT" --conversations "$CONVERSATIONS" \
        --rate "$rate" --concurrency "$CONCURRENCY" --threads "$THREADS" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
        >"$out" 2>"$WORK/$label.err" || {
        echo "loadgen $label failed:" >&2
        cat "$WORK/$label.err" "$out" >&2
        exit 1
    }
    cpu_after="$(proc_cpu "$SERVER_PID")"
    pg_after="$(postgres_cpu)"
    machine_after="$(machine_cpu)"
    grep -v '^{' "$out"
    read -r mb0 mt0 <<<"$machine_before"
    read -r mb1 mt1 <<<"$machine_after"
    # CPU seconds over the whole run (set-up + warm-up + measured). "other" is whatever
    # else ran on the machine: if it is large, the numbers are polluted; run again.
    awk -v s0="$cpu_before" -v s1="$cpu_after" -v p0="$pg_before" -v p1="$pg_after" \
        -v b0="$mb0" -v b1="$mb1" -v t0="$mt0" -v t1="$mt1" -v ncpu="$(nproc)" \
        '{ lg = $3 + $5 }
         END { busy = b1 - b0; wall = (t1 - t0) / ncpu
               printf "cpu s over %.0f s: converger %.1f, postgres %.1f, loadgen %.1f, other %.1f; machine busy %.0f%%\n",
                 wall, s1 - s0, p1 - p0, lg, busy - (s1 - s0) - (p1 - p0) - lg, 100 * busy / (t1 - t0) }' \
        "$WORK/$label.time"
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "converger died during $label; log:" >&2
        tail -50 "$SERVER_LOG" >&2 || true
        exit 1
    fi
    grep '^{' "$out" >>"$RESULTS"
}

# Counts warnings and errors the server logged during a backend's runs.
report_log() {
    local name="$1" file="$WORK/$1-server.log"
    local warn err
    warn="$(grep -c -w 'WARN' "$file" || true)"
    err="$(grep -c -w 'ERROR' "$file" || true)"
    echo "server log ($name): $warn WARN, $err ERROR lines ($file)"
    grep -w -m 5 -e 'ERROR' -e 'WARN' "$file" || true
}

bench_backend() {
    local name="$1"
    log "$name: starting converger on 127.0.0.1:$PORT"
    start_server "$name"
    local key
    key="$("$CONVERGER" tenant create bench 2>/dev/null | awk '/^api key/ { print $3 }')"
    [[ -n "$key" ]] || { echo "could not create the bench tenant" >&2; exit 1; }
    export LOADGEN_API_KEY="$key"

    log "$name (a): max throughput, $CONCURRENCY in flight, ${DURATION}s"
    run_load "$name-max" 0
    log "$name (b): fixed ${RATE}/s, ${DURATION}s"
    run_load "$name-fixed$RATE" "$RATE"

    stop_server
    report_log "$name"
}

export RUST_LOG=warn CONVERGER_LISTEN="127.0.0.1:$PORT"

for backend in $BACKENDS; do
    case "$backend" in
    sqlite)
        export CONVERGER_DATABASE_URL="sqlite://$WORK/bench.db"
        unset CONVERGER_JWT_SECRET
        bench_backend sqlite
        ;;
    postgres)
        psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qX -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $PGDB" -c "CREATE DATABASE $PGDB" >/dev/null
        export CONVERGER_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDB"
        # Any fixed 40-character secret: tokens are not used by this benchmark.
        export CONVERGER_JWT_SECRET="bench-jwt-secret-0123456789abcdefghijklm"
        bench_backend postgres
        ;;
    *)
        echo "unknown backend $backend (sqlite, postgres)" >&2
        exit 2
        ;;
    esac
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
