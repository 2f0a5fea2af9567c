#!/usr/bin/env bash
# Webhook delivery benchmark: converger on SQLite, then PostgreSQL, delivering to a local
# sink run by bench/loadgen's `delivery` tool (127.0.0.1:$SINK_PORT).
#
# Usage: bench/run-delivery.sh       (about 2 x 2.5 min of load)
#
# Per backend, on a fresh database, with the rate limits off:
#   (a) live, sink answers at once:   post RATE/s over CONVERSATIONS conversations;
#   (b) live, sink answers in 200 ms: post SLOW_RATE/s over SLOW_CONVERSATIONS;
#   (c) worker only: with delivery disabled, preload COUNT activities, then restart
#       converger with delivery on and time the sink receiving all of them.
# (a)/(b) report deliveries/s at the sink in the measured window and the latency from
# each activity's REST 201 (and its inserted_at) to the sink, p50/p95/p99.
#
# Knobs (environment):
#   DURATION=20 WARMUP=3 DRAIN=30     RATE=2000 CONVERSATIONS=500
#   SLOW_RATE=1000 SLOW_CONVERSATIONS=1000 SLOW_DELAY_MS=200    COUNT=20000
#   DELIVERY_CONCURRENCY (unset: converger's default, 256)
#   PORT=4400 SINK_PORT=4501 BACKENDS="sqlite postgres" RUNS="live slow drain"
#   SKIP_BUILD=1   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
#   CONVERGER_BIN  the server binary (default target/release/converger), for A/B runs
#
# Only 127.0.0.1 is used. Every step is bounded by `timeout`; the server is stopped on
# exit (trap). Results: $WORK/results.jsonl and a table at the end.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
DRAIN="${DRAIN:-30}"
RATE="${RATE:-2000}"
CONVERSATIONS="${CONVERSATIONS:-500}"
SLOW_RATE="${SLOW_RATE:-1000}"
SLOW_CONVERSATIONS="${SLOW_CONVERSATIONS:-1000}"
SLOW_DELAY_MS="${SLOW_DELAY_MS:-200}"
COUNT="${COUNT:-20000}"
PORT="${PORT:-4400}"
SINK_PORT="${SINK_PORT:-4501}"
BACKENDS="${BACKENDS:-sqlite postgres}"
RUNS="${RUNS:-live slow drain}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
PGDB=converger_bench

CONVERGER="${CONVERGER_BIN:-$ROOT/target/release/converger}"
TOOL="$ROOT/target/bench/release/delivery"
WORK="$(mktemp -d /tmp/converger-delivery.XXXXXX)"
RESULTS="$WORK/results.jsonl"
DRAIN_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    [[ -n "$DRAIN_PID" ]] && kill "$DRAIN_PID" 2>/dev/null || true
    stop_server
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_all
[[ -x "$CONVERGER" && -x "$TOOL" ]] || { echo "missing binaries; build first" >&2; exit 1; }
port_free "$PORT"
port_free "$SINK_PORT"

# The sink listens on loopback, which the egress policy closes by default.
export RUST_LOG=warn CONVERGER_LISTEN="127.0.0.1:$PORT" \
    CONVERGER_RATE_LIMIT_PER_IP=0 CONVERGER_RATE_LIMIT_PER_TENANT=0 CONVERGER_MAX_CONNECTIONS_PER_IP=0 \
    CONVERGER_EGRESS_ALLOW="127.0.0.0/8"
[[ -n "${DELIVERY_CONCURRENCY:-}" ]] && export CONVERGER_DELIVERY_CONCURRENCY="$DELIVERY_CONCURRENCY"
COMMON=(--url "http://127.0.0.1:$PORT" --sink "127.0.0.1:$SINK_PORT" --threads 2)

# One live run: $1 label, $2 rate, $3 conversations, $4 sink delay ms.
live_run() {
    local label="$1" before after
    log "$label: ${2}/s over $3 conversations, sink delay $4 ms, ${DURATION}s measured"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + DRAIN + 180)) "$TOOL" "${COMMON[@]}" --mode live \
        --rate "$2" --conversations "$3" --sink-delay-ms "$4" --duration "$DURATION" \
        --warmup "$WARMUP" --drain "$DRAIN" --label "$label" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "delivery $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    after="$(cpu_snapshot)"
    grep -v '^{' "$WORK/$label.out"
    cpu_report "$before" "$after" "$WORK/$label.time" | tee -a "$WORK/$label.cpu"
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "converger died during $label" >&2; tail -50 "$SERVER_LOG" >&2; exit 1; }
    grep '^{' "$WORK/$label.out" >>"$RESULTS"
}

# Worker-only: preload with delivery off, then drain with delivery on.
drain_run() {
    local name="$1" label="$1-drain" before after
    log "$label: preload $COUNT activities over $CONVERSATIONS conversations with delivery off"
    stop_server
    CONVERGER_DELIVERY_ENABLED=false start_server "$name"
    timeout 900 "$TOOL" "${COMMON[@]}" --mode preload --count "$COUNT" \
        --conversations "$CONVERSATIONS" --label "$label" >"$WORK/$label-preload.out" 2>&1 || {
        cat "$WORK/$label-preload.out" >&2; exit 1; }
    grep -v '^{' "$WORK/$label-preload.out"
    stop_server
    log "$label: draining with delivery on"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((DRAIN * 10 + 60)) "$TOOL" "${COMMON[@]}" --mode drain --count "$COUNT" \
        --drain $((DRAIN * 10)) --label "$label" >"$WORK/$label.out" 2>"$WORK/$label.err" &
    DRAIN_PID=$!
    sleep 0.5
    start_server "$name"
    wait "$DRAIN_PID" || { echo "drain failed" >&2; cat "$WORK/$label.err" >&2; exit 1; }
    DRAIN_PID=""
    after="$(cpu_snapshot)"
    grep -v '^{' "$WORK/$label.out"
    # `before` was taken with no server running (0 s), so all of the new server's CPU,
    # start-up included, is counted.
    cpu_report "$before" "$after" "$WORK/$label.time" | tee "$WORK/$label.cpu"
    grep '^{' "$WORK/$label.out" >>"$RESULTS"
}

for backend in $BACKENDS; do
    use_backend "$backend"
    log "$backend: starting converger on 127.0.0.1:$PORT"
    start_server "$backend"
    create_tenant
    for run in $RUNS; do
        case "$run" in
        live) live_run "$backend-fast" "$RATE" "$CONVERSATIONS" 0 ;;
        slow) live_run "$backend-slow${SLOW_DELAY_MS}ms" "$SLOW_RATE" "$SLOW_CONVERSATIONS" "$SLOW_DELAY_MS" ;;
        drain) drain_run "$backend" ;;
        *) echo "unknown run $run (live slow drain)" >&2; exit 2 ;;
        esac
    done
    stop_server
    report_log "$backend"
done

log "results (latency ms)"
{
    printf 'run\tposted/s\t201\terr\tdeliv/s\tbacklog\tundeliv\tdup\tp50(201)\tp95\tp99\tmax\tp50(commit)\tp99(commit)\n'
    jq -r 'select(.mode == "live") | [.label, .target_rate, .post.created, (.post.errors | add // 0),
            .sink.arrivals_per_s_in_window, .backlog_when_posting_stopped, .undelivered_after_drain,
            .sink.duplicates, .sink.from_201.p50_ms, .sink.from_201.p95_ms, .sink.from_201.p99_ms,
            .sink.from_201.max_ms, .sink.from_commit.p50_ms, .sink.from_commit.p99_ms] | @tsv' "$RESULTS"
} | column -t -s $'\t'
echo
jq -r 'select(.mode == "drain") | "\(.label): \(.sink.arrivals_total) of \(.expected) delivered in \(.sink.first_to_last_arrival_s) s = \(.sink.arrivals_per_s_first_to_last) deliveries/s (worker only)"' "$RESULTS"
echo "machine: $(nproc) cores; raw results: $RESULTS; logs: $WORK"
