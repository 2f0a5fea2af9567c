#!/usr/bin/env bash
# Kill -9 under load: converger nodes are killed at random moments while REST load,
# joined sockets and a webhook channel run; afterwards what was acknowledged, stored,
# streamed and delivered is compared.
#
# Usage: bench/run-chaos.sh          (about 2 min on SQLite, 3 on PostgreSQL)
#
# Per backend, on a fresh database (SQLite file in a temp dir / converger_chaos on
# PostgreSQL, dropped and re-created), rate limits off, loopback open to the egress
# policy (CONVERGER_EGRESS_ALLOW=127.0.0.0/8):
#   SQLite:     one node, SIGKILLed KILLS times, every KILL_MIN..KILL_MAX s, and
#               started again RESTART_DELAY s after each kill;
#   PostgreSQL: two nodes; the second is SIGKILLed and started again the same way while
#               the first survives. The second reaches PostgreSQL through a TCP proxy,
#               which then cuts it for CUT s per entry of CUT_MODES (drop: connections
#               closed, new ones refused; hold: nothing relayed, a partition).
# The load: RATE activities/s round-robin over CONVERSATIONS conversations of a webhook
# channel (and over the nodes), one idempotency key each, retried with the same key on
# connection errors, timeouts, 429 and 5xx; SOCKETS_PER_CONVERSATION WebSocket clients
# per conversation, spread over the nodes, resuming with last_seq; the webhook sink
# answering 200 at once. Then a drain (at most DRAIN s) and the checks: lost, duplicate
# keys, seq gaps, socket completeness, deliveries (missing, duplicate webhook-ids,
# pending or failed, order), takeover after each kill, REST and /ready during the cuts.
# The tool is bench/loadgen's `chaos` (`chaos --help` lists every flag).
#
# Knobs (environment):
#   RATE=200 CONVERSATIONS=50 SOCKETS_PER_CONVERSATION=2 WARMUP=5
#   KILLS=10 KILL_MIN=5 KILL_MAX=8 RESTART_DELAY=1 SEED (default: the clock)
#   CUT=15 CUT_MODES=drop,hold (PostgreSQL; CUT=0: no cut) DRAIN=120
#   TARGET_AFTER_RESTART=5  SQLite: every conversation waiting for a delivery at a kill
#                           is delivered to again within this many s of /ready
#   TARGET_AFTER_KILL=15    PostgreSQL: the same within this many s of the kill
#   READY_WITHIN=2          during a cut, /ready of the cut node answers 503 within it
#   PORT=4700 (nodes on PORT and PORT+1) SINK_PORT=4790 PROXY_PORT=4791
#   BACKENDS="sqlite postgres" SKIP_BUILD=1 PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
#   PGDB_SET       PostgreSQL settings for the run's database only, space-separated
#                  name=value pairs applied with ALTER DATABASE (e.g.
#                  PGDB_SET="idle_in_transaction_session_timeout=2s")
#   CONVERGER_BIN  the server binary (default target/release/converger)
#
# Only 127.0.0.1 is used. Each backend's run is bounded by `timeout`; on exit the tool
# (pid in $WORK/<backend>/chaos.pid) and any node it started (pids in
# $WORK/<backend>/nodes.pids) are ended (trap), each checked by its command line first. Exit status: non-zero
# when an invariant failed on any backend, or a run could not be made.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RATE="${RATE:-200}"
CONVERSATIONS="${CONVERSATIONS:-50}"
SOCKETS_PER_CONVERSATION="${SOCKETS_PER_CONVERSATION:-2}"
WARMUP="${WARMUP:-5}"
KILLS="${KILLS:-10}"
KILL_MIN="${KILL_MIN:-5}"
KILL_MAX="${KILL_MAX:-8}"
RESTART_DELAY="${RESTART_DELAY:-1}"
CUT="${CUT:-15}"
CUT_MODES="${CUT_MODES:-drop,hold}"
DRAIN="${DRAIN:-120}"
TARGET_AFTER_RESTART="${TARGET_AFTER_RESTART:-5}"
TARGET_AFTER_KILL="${TARGET_AFTER_KILL:-15}"
READY_WITHIN="${READY_WITHIN:-2}"
PORT="${PORT:-4700}"
SINK_PORT="${SINK_PORT:-4790}"
PROXY_PORT="${PROXY_PORT:-4791}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
PGDB=converger_chaos

CONVERGER="${CONVERGER_BIN:-$ROOT/target/release/converger}"
TOOL="$ROOT/target/bench/release/chaos"
WORK="$(mktemp -d /tmp/converger-chaos.XXXXXX)"
RESULTS="$WORK/results.jsonl"
TOOL_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# SIGKILLs the nodes listed in $1 that are still `converger serve` processes of
# $CONVERGER (a pid may have been reused since).
kill_listed_nodes() {
    local pid cmdline
    [[ -f "$1" ]] || return 0
    while read -r pid; do
        [[ -r "/proc/$pid/cmdline" ]] || continue
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ "$cmdline" == "$CONVERGER serve "* ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$1"
}

# Sends SIGTERM to the tool whose pid is in $1 if it is still running (it then kills
# its nodes), and waits for it (at most 10 s).
stop_tool() {
    local pid cmdline
    [[ -f "$1" ]] || return 0
    pid="$(cat "$1")"
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == "$TOOL "* ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

cleanup() {
    local f
    for f in "$WORK"/*/chaos.pid; do
        stop_tool "$f"
    done
    for f in "$WORK"/*/nodes.pids; do
        kill_listed_nodes "$f"
    done
    if [[ -n "$TOOL_PID" ]]; then
        wait "$TOOL_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building converger (release)"
    (cd "$ROOT" && cargo build --release --locked)
    log "building bench tools (release, CARGO_TARGET_DIR=$ROOT/target/bench)"
    CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release \
        --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
fi
[[ -x "$CONVERGER" && -x "$TOOL" ]] || { echo "missing binaries; build first" >&2; exit 1; }
for p in "$PORT" "$((PORT + 1))" "$SINK_PORT" "$PROXY_PORT"; do
    port_free "$p"
done

export RUST_LOG=warn \
    CONVERGER_RATE_LIMIT_PER_IP=0 CONVERGER_RATE_LIMIT_PER_TENANT=0 \
    CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE=0 CONVERGER_MAX_CONNECTIONS_PER_IP=0 \
    CONVERGER_EGRESS_ALLOW="127.0.0.0/8" CONVERGER_SHUTDOWN_TIMEOUT_SECS=5
unset CONVERGER_LISTEN

# Seconds the tool may take: set-up, warm-up, kills at their longest, cuts with their
# recovery, the load's last retries, the drain, and a margin.
time_limit() {
    awk -v w="$WARMUP" -v k="$KILLS" -v kmax="$KILL_MAX" -v rd="$RESTART_DELAY" \
        -v cut="$1" -v ncuts="$2" -v drain="$DRAIN" \
        'BEGIN { printf "%d", 120 + w + k * (kmax + rd + 30) + ncuts * (cut + 75) + 70 + drain + 120 }'
}

failed=0
for backend in $BACKENDS; do
    dir="$WORK/$backend"
    mkdir -p "$dir"
    use_backend "$backend"
    unset CONVERGER_SECRET_KEY
    if [[ "$backend" == postgres ]]; then
        # The same key on both nodes, as in production (SQLite keeps one beside its file).
        CONVERGER_SECRET_KEY="$(head -c 32 /dev/urandom | base64)"
        export CONVERGER_SECRET_KEY
        for setting in ${PGDB_SET:-}; do
            psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qX -v ON_ERROR_STOP=1 \
                -c "ALTER DATABASE $PGDB SET ${setting%%=*} = '${setting#*=}'" >/dev/null
            echo "postgres: ALTER DATABASE $PGDB SET ${setting%%=*} = '${setting#*=}'"
        done
    fi
    "$CONVERGER" migrate >"$dir/migrate.log" 2>&1 || { cat "$dir/migrate.log" >&2; exit 1; }
    create_tenant
    args=(--converger "$CONVERGER" --database-url "$CONVERGER_DATABASE_URL"
        --port "$PORT" --sink "127.0.0.1:$SINK_PORT" --rate "$RATE"
        --conversations "$CONVERSATIONS" --sockets-per-conversation "$SOCKETS_PER_CONVERSATION"
        --warmup "$WARMUP" --kills "$KILLS" --kill-min "$KILL_MIN" --kill-max "$KILL_MAX"
        --restart-delay "$RESTART_DELAY" --drain "$DRAIN"
        --target-after-restart "$TARGET_AFTER_RESTART" --target-after-kill "$TARGET_AFTER_KILL"
        --ready-within "$READY_WITHIN" --work "$dir" --label "$backend")
    [[ -n "${SEED:-}" ]] && args+=(--seed "$SEED")
    ncuts=0
    case "$backend" in
    sqlite)
        args+=(--nodes 1 --cut 0)
        ;;
    postgres)
        args+=(--nodes 2 --proxy "127.0.0.1:$PROXY_PORT" --proxy-upstream "$PGHOST:$PGPORT"
            --victim-database-url "postgres://$PGUSER@127.0.0.1:$PROXY_PORT/$PGDB"
            --cut "$CUT" --cut-modes "$CUT_MODES")
        [[ "$CUT" != 0 ]] && ncuts="$(awk -F, '{ print NF }' <<<"$CUT_MODES")"
        ;;
    esac
    limit="$(time_limit "$CUT" "$ncuts")"
    log "$backend: chaos run (at most $limit s); logs in $dir"
    before="$(cpu_snapshot)"
    rc=0
    /usr/bin/time -f '%U %S' -o "$dir/chaos.time" \
        timeout "$limit" "$TOOL" "${args[@]}" >"$dir/report.out" 2> >(tee "$dir/chaos.err" >&2) &
    TOOL_PID=$!
    wait "$TOOL_PID" || rc=$?
    TOOL_PID=""
    after="$(cpu_snapshot)"
    grep -v '^{' "$dir/report.out" || true
    grep '^{' "$dir/report.out" >>"$RESULTS" || true
    # The nodes are the tool's children, reaped by it: their CPU is in the tool column.
    cpu_report "$before" "$after" "$dir/chaos.time" || true
    for f in "$dir"/node*.log; do
        printf '%s: %s panics, %s ERROR, %s WARN lines\n' "$(basename "$f")" \
            "$(grep -c 'panicked' "$f" || true)" "$(grep -c -w 'ERROR' "$f" || true)" \
            "$(grep -c -w 'WARN' "$f" || true)"
    done
    case "$rc" in
    0) ;;
    1) echo "$backend: invariants failed (see above)" >&2; failed=1 ;;
    *) echo "$backend: the run failed (exit $rc); see $dir" >&2; failed=1 ;;
    esac
done

log "results"
if [[ -s "$RESULTS" ]]; then
    {
        printf 'backend\tacked\tlost\tdup keys\tseq gaps\tsocket missing\tsocket dup\tdeliv missing\twebhook dup\tpending/failed\ttakeover p50/max s\tverdict\n'
        jq -r '[.label, .load.acknowledged, .store.lost, .store.duplicate_keys, .store.seq_gaps,
                .sockets.missing, .sockets.duplicates, .deliveries.missing,
                .deliveries.duplicate_webhook_ids,
                "\(.deliveries.pending_after_drain)/\(.deliveries.failed_after_drain)",
                (if .nodes == 1 then .takeover.resumed_after_ready_s else .takeover.resumed_after_kill_s end
                 | "\(.p50)/\(.max)"),
                (if .passed then "PASS" else "FAIL: " + (.failed | join(",")) end)] | @tsv' "$RESULTS"
    } | column -t -s $'\t'
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); raw results: $RESULTS; logs: $WORK"
exit "$failed"
