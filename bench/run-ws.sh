#!/usr/bin/env bash
# WebSocket benchmark: converger's Phoenix Channels endpoint loaded by bench/loadgen's
# `wsbench` tool.
#
# Usage: bench/run-ws.sh        (about 3 min per backend)
#
# Per backend (fresh database, rate limits off, `ulimit -n` raised to the hard limit):
#   (a) for each N in SOCKETS: N sockets, each joined to its own conversation, RATE
#       activities/s posted over REST round-robin over those conversations for
#       WARMUP + DURATION s; latency REST 201 -> socket receive p50/p95/p99;
#   (b) on a freshly started server: IDLE_SOCKETS idle sockets joined over
#       IDLE_CONVERSATIONS conversations; the server's VmRSS before / after, KiB/socket.
#       Beyond ~28k sockets pass SOURCES=127.0.0.1,127.0.0.2,... (ephemeral ports are per
#       source address); the per-process fd limit here (20,000) comes first.
#
# Knobs (environment):
#   SOCKETS="1000 5000" RATE=1000 DURATION=20 WARMUP=3
#   IDLE_SOCKETS=19500 IDLE_CONVERSATIONS=1000 HOLD=20 SOURCES=127.0.0.1
#   PORT=4400 BACKENDS="sqlite postgres" RUNS="latency idle" SKIP_BUILD=1
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
#
# Only 127.0.0.x is used; every step is bounded by `timeout`; the server is stopped on
# exit (trap). Results: $WORK/results.jsonl and tables at the end.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOCKETS="${SOCKETS:-1000 5000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
IDLE_SOCKETS="${IDLE_SOCKETS:-19500}"
IDLE_CONVERSATIONS="${IDLE_CONVERSATIONS:-1000}"
HOLD="${HOLD:-20}"
SOURCES="${SOURCES:-127.0.0.1}"
PORT="${PORT:-4400}"
BACKENDS="${BACKENDS:-sqlite postgres}"
RUNS="${RUNS:-latency idle}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
PGDB=converger_bench

CONVERGER="$ROOT/target/release/converger"
TOOL="$ROOT/target/bench/release/wsbench"
WORK="$(mktemp -d /tmp/converger-ws.XXXXXX)"
RESULTS="$WORK/results.jsonl"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap stop_server EXIT
trap 'exit 130' INT TERM

build_all
[[ -x "$CONVERGER" && -x "$TOOL" ]] || { echo "missing binaries; build first" >&2; exit 1; }
port_free "$PORT"

# As many descriptors as this shell may have; the server and the tool inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "ulimit -n: $(ulimit -n)"

export RUST_LOG=warn CONVERGER_LISTEN="127.0.0.1:$PORT" CONVERGER_RATE_LIMIT_PER_IP=0 \
    CONVERGER_MAX_CONNECTIONS_PER_IP=0 \
    CONVERGER_RATE_LIMIT_PER_TENANT=0 CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE=0

# One wsbench run: $1 label, then wsbench arguments.
ws_run() {
    local label="$1" before after
    shift
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + HOLD + 400)) "$TOOL" --url "http://127.0.0.1:$PORT" \
        --threads 2 --source "$SOURCES" --server-pid "$SERVER_PID" --label "$label" "$@" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "wsbench $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    after="$(cpu_snapshot)"
    grep -v '^{' "$WORK/$label.out"
    cpu_report "$before" "$after" "$WORK/$label.time" | tee "$WORK/$label.cpu"
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "converger died during $label" >&2; tail -50 "$SERVER_LOG" >&2; exit 1; }
    grep '^{' "$WORK/$label.out" >>"$RESULTS"
}

for backend in $BACKENDS; do
    use_backend "$backend"
    log "$backend: starting converger on 127.0.0.1:$PORT"
    start_server "$backend"
    create_tenant
    for run in $RUNS; do
        case "$run" in
        latency)
            for n in $SOCKETS; do
                log "$backend: $n sockets on $n conversations, ${RATE}/s, ${DURATION}s measured"
                ws_run "$backend-ws$n-${RATE}" --sockets "$n" --conversations "$n" --rate "$RATE" \
                    --duration "$DURATION" --warmup "$WARMUP"
            done
            ;;
        idle)
            log "$backend: $IDLE_SOCKETS idle sockets over $IDLE_CONVERSATIONS conversations (fresh server)"
            stop_server
            start_server "$backend"
            ws_run "$backend-idle$IDLE_SOCKETS" --sockets "$IDLE_SOCKETS" \
                --conversations "$IDLE_CONVERSATIONS" --rate 0 --hold "$HOLD"
            ;;
        *) echo "unknown run $run (latency idle)" >&2; exit 2 ;;
        esac
    done
    stop_server
    report_log "$backend"
done

log "results (latency ms, REST 201 -> socket receive unless noted)"
{
    printf 'run\tjoined\tposted\terr\tunsent\trecv/s\tmissing\tdup\tbefore201\tp50\tp95\tp99\tmax\tp99(commit)\n'
    jq -r 'select(.ws) | [.label, .joined, .post.created, (.post.errors | add // 0), .post.unsent,
            .ws.arrivals_per_s_in_window, .ws.missing, .ws.duplicates, .ws.before_201,
            .ws.from_201.p50_ms, .ws.from_201.p95_ms, .ws.from_201.p99_ms, .ws.from_201.max_ms,
            .ws.from_commit.p99_ms] | @tsv' "$RESULTS"
} | column -t -s $'\t'
echo
{
    printf 'run\tjoined\tfailed\tdropped\tRSS before KiB\tRSS joined\tRSS after hold\tKiB/socket\tfds\n'
    jq -r 'select(.server_rss_kib) | [.label, .joined, .connect_failed, .dropped_while_running,
            .server_rss_kib.before, .server_rss_kib.joined, .server_rss_kib.after_hold,
            .kib_per_socket_after_hold, .server_fds.joined] | @tsv' "$RESULTS"
} | column -t -s $'\t'
echo "machine: $(nproc) cores; raw results: $RESULTS; logs: $WORK"
