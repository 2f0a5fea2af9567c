#!/usr/bin/env bash
# SQLite against PostgreSQL in one table: converger's ingest, end-to-end webhook
# delivery, worker-only drain, paced latency and SQL statements per message.
#
# Usage: bench/run-compare.sh        (about 8 minutes with the defaults)
#
# Per backend (fresh SQLite file in a temp dir / `converger_bench` dropped and
# re-created on $PGHOST:$PGPORT), with the rate limits off:
#   api     API only: converger with CONVERGER_DELIVERY_ENABLED=false, `loadgen` closed
#           loop with CONCURRENCY in flight over CONVERSATIONS conversations of one
#           websocket channel (no delivery rows): activities created per second.
#   ingest  same server, `loadgen` open loop at INGEST_RATE/s: REST p99 from each
#           request's intended send time.
#   e2e     converger with delivery on, one webhook channel whose sink (`delivery`,
#           127.0.0.1:$SINK_PORT) answers 200 at once; closed loop with CONCURRENCY in
#           flight over CONVERSATIONS conversations: activities created (201s) and
#           deliveries received by the sink, both per second of the measured window.
#   paced   same, open loop at PACED_RATE/s: REST 201 -> sink p50/p99, REST p99.
#   drain   preload COUNT activities with delivery off, restart with delivery on and
#           time the sink receiving all of them (worker only): deliveries/s, and the
#           PostgreSQL CPU per delivery.
# Then, once (RUNS contains `stmts`):
#   stmts   a throwaway PostgreSQL 15 cluster (initdb in a temp dir, port STMT_PGPORT,
#           pg_stat_statements with track_utility=on): STMT_COUNT activities end to end
#           (closed loop, CONCURRENCY in flight, all delivered), then SQL statements
#           (sum of pg_stat_statements.calls in converger's database, reset after the
#           set-up) and committed transactions (pg_stat_database.xact_commit) per
#           message, with the top statements.
# Each run prints its CPU split (converger / postgres / tool / other, CPU seconds over
# the whole run: set-up, warm-up, measured window and drain). "postgres" counts the
# postmaster, its auxiliary processes and the bench database's backends; backends of
# other databases on the same cluster count as "other".
#
# TLS: the PostgreSQL URL is postgres://$PGUSER@$PGHOST:$PGPORT/converger_bench, plus
# `?$PGSSLMODE_PARAM` when set (e.g. PGSSLMODE_PARAM=sslmode=disable). Without it the
# client's default applies (sqlx: `prefer`, i.e. TLS whenever the server offers it).
# The script reports what the server's connections actually used (pg_stat_ssl).
#
# Knobs (environment):
#   DURATION=20 WARMUP=3 DRAIN=30     CONCURRENCY=32 CONVERSATIONS=100
#   PACED_RATE=300 INGEST_RATE=1000   COUNT=20000 (drain backlog)  STMT_COUNT=2000
#   PORT=4400 SINK_PORT=4501 STMT_PGPORT=5499
#   BACKENDS="sqlite postgres"  RUNS="api ingest e2e paced drain stmts"
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGSSLMODE_PARAM=   PG_BIN=/usr/lib/postgresql/15/bin
#   CONVERGER_BIN  server binary (default target/release/converger, built with
#                  `cargo build --release` when missing or older than HEAD's commit)
#   SKIP_BUILD=1   use the binaries as they are
#   SVIX_*         reference figures for the last columns (see below)
#
# Only 127.0.0.1 is used. Every step is bounded by `timeout`; servers and the
# throwaway cluster are stopped on exit (trap). Raw results stay in $WORK.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
DRAIN="${DRAIN:-30}"
CONCURRENCY="${CONCURRENCY:-32}"
CONVERSATIONS="${CONVERSATIONS:-100}"
PACED_RATE="${PACED_RATE:-300}"
INGEST_RATE="${INGEST_RATE:-1000}"
COUNT="${COUNT:-20000}"
STMT_COUNT="${STMT_COUNT:-2000}"
PORT="${PORT:-4400}"
SINK_PORT="${SINK_PORT:-4501}"
STMT_PGPORT="${STMT_PGPORT:-5499}"
BACKENDS="${BACKENDS:-sqlite postgres}"
RUNS="${RUNS:-api ingest e2e paced drain stmts}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
PGSSLMODE_PARAM="${PGSSLMODE_PARAM:-}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PGDB=converger_bench

# svix-server 1.100.0 on this machine, PostgreSQL (see BENCHMARKS.md).
SVIX_E2E="${SVIX_E2E:-330}"                 # end to end, msg/s
SVIX_API="${SVIX_API:-661}"                 # API only, msg/s
SVIX_DRAIN="${SVIX_DRAIN:-1055}"            # drain, deliveries/s
SVIX_DRAIN_PG_MS="${SVIX_DRAIN_PG_MS:-0.66}" # PostgreSQL CPU ms per delivery, drain
SVIX_P50="${SVIX_P50:-5.6}"                 # create -> receipt p50 ms at 300/s
SVIX_P99="${SVIX_P99:-39}"                  # create -> receipt p99 ms at 300/s
SVIX_STMTS="${SVIX_STMTS:-7}"               # SQL statements per message

CONVERGER="${CONVERGER_BIN:-$ROOT/target/release/converger}"
LOADGEN="$ROOT/target/bench/release/loadgen"
DELIVERY="$ROOT/target/bench/release/delivery"
WORK="$(mktemp -d /tmp/converger-compare.XXXXXX)"
chmod 755 "$WORK"
METRICS="$WORK/metrics.tsv"   # backend  key  value
CPU="$WORK/cpu.tsv"           # run  wall  converger  postgres  tool  other  busy%
RESULTS="$WORK/results.jsonl"
DRAIN_PID=""
STMT_DATA=""
: >"$METRICS"
: >"$CPU"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

STMT_DB=converger_stmt
# CPU seconds used so far by PostgreSQL processes, not counting the backends of other
# databases (tests or other work sharing the cluster): the postmaster, its auxiliary
# processes and the backends of $PGDB / $STMT_DB.
postgres_cpu() {
    local total=0 pid title rest db host
    for pid in $(pgrep -x postgres || true); do
        title="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
        rest="${title#postgres: }"
        rest="$(sed -E 's#^[0-9]+/[^ ]+: ##' <<<"$rest")"
        read -r _ db host _ <<<"$rest"
        if [[ "$title" == "postgres: "* && ( "$host" == *"("*")" || "$host" == "[local]" ) ]] &&
            [[ "$db" != "$PGDB" && "$db" != "$STMT_DB" ]]; then
            continue
        fi
        total="$(awk -v t="$total" -v tck="$CLK_TCK" '{ printf "%.2f", t + ($14 + $15) / tck }' \
            "/proc/$pid/stat" 2>/dev/null || echo "$total")"
    done
    echo "$total"
}

cleanup() {
    [[ -n "$DRAIN_PID" ]] && kill "$DRAIN_PID" 2>/dev/null || true
    stop_server
    if [[ -n "$STMT_DATA" ]]; then
        timeout 60 "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$STMT_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prefix that runs a command as the postgres OS user when this script runs as root
# (initdb refuses root).
AS_PG=()
[[ "$(id -u)" == 0 ]] && AS_PG=(runuser -u postgres --)

metric() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$METRICS"; }
has_run() { [[ " $RUNS " == *" $1 "* ]]; }

# CPU split of one run, printed (cpu_report) and kept in $CPU.
cpu_row() {
    local label="$1" line
    line="$(cpu_report "$2" "$3" "$4" "${5:-0}")"
    echo "$line"
    sed -E 's/^cpu s over ([0-9.]+) s: converger ([-0-9.]+), postgres ([-0-9.]+), tool ([-0-9.]+), other ([-0-9.]+); machine busy ([0-9]+)%.*/\1 \2 \3 \4 \5 \6/' \
        <<<"$line" | awk -v l="$label" '{ printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l, $1, $2, $3, $4, $5, $6 }' >>"$CPU"
}

server_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "converger died during $1" >&2; tail -50 "$SERVER_LOG" >&2; exit 1; }
}

build() {
    [[ "${SKIP_BUILD:-0}" == 1 ]] && return 0
    local head_time bin_time=0
    head_time="$(git -C "$ROOT" log -1 --format=%ct)"
    [[ -x "$CONVERGER" ]] && bin_time="$(stat -c %Y "$CONVERGER")"
    if [[ -z "${CONVERGER_BIN:-}" && "$bin_time" -lt "$head_time" ]]; then
        log "building converger (release)"
        (cd "$ROOT" && timeout 3600 cargo build --release)
    fi
    log "building bench tools (release, CARGO_TARGET_DIR=$ROOT/target/bench)"
    CARGO_TARGET_DIR="$ROOT/target/bench" timeout 1800 cargo build --release \
        --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
}

# What TLS the server's PostgreSQL connections use: "ssl=t:N" / "ssl=f:N".
pg_tls_seen() {
    psql -h "$1" -p "$2" -U "$PGUSER" -d postgres -AtqX -c \
        "SELECT string_agg('ssl=' || s.ssl || ':' || n, ' ') FROM (SELECT s.ssl, count(*) AS n
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name = 'converger' AND a.datname = '$3' GROUP BY s.ssl) s" 2>/dev/null || true
}

# --- runs ------------------------------------------------------------------------

api_run() {
    local b="$1" label="$1-api" before
    log "$label: API only, closed loop, $CONCURRENCY in flight, $CONVERSATIONS conversations (websocket channel, delivery off)"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + 120)) "$LOADGEN" --url "http://127.0.0.1:$PORT" \
        --conversations "$CONVERSATIONS" --rate 0 --concurrency "$CONCURRENCY" --threads 2 \
        --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "loadgen $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    grep -v '^{' "$WORK/$label.out"
    cpu_row "$label" "$before" "$(cpu_snapshot)" "$WORK/$label.time"
    server_alive "$label"
    grep '^{' "$WORK/$label.out" | tee -a "$RESULTS" >"$WORK/$label.json"
    metric "$b" api "$(jq -r '.throughput | round' "$WORK/$label.json")"
    metric "$b" api_p99 "$(jq -r '.p99_ms' "$WORK/$label.json")"
    metric "$b" api_errors "$(jq -r '.errors' "$WORK/$label.json")"
}

ingest_run() {
    local b="$1" label="$1-ingest$INGEST_RATE" before
    log "$label: ingest only, open loop at $INGEST_RATE/s, <= 64 in flight"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + 120)) "$LOADGEN" --url "http://127.0.0.1:$PORT" \
        --conversations "$CONVERSATIONS" --rate "$INGEST_RATE" --concurrency 64 --threads 2 \
        --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "loadgen $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    grep -v '^{' "$WORK/$label.out"
    cpu_row "$label" "$before" "$(cpu_snapshot)" "$WORK/$label.time"
    server_alive "$label"
    grep '^{' "$WORK/$label.out" | tee -a "$RESULTS" >"$WORK/$label.json"
    metric "$b" ingest_rate "$(jq -r '.throughput | round' "$WORK/$label.json")"
    metric "$b" ingest_p50 "$(jq -r '.p50_ms' "$WORK/$label.json")"
    metric "$b" ingest_p99 "$(jq -r '.p99_ms' "$WORK/$label.json")"
    metric "$b" ingest_errors "$(jq -r '.errors + .unsent' "$WORK/$label.json")"
}

# `delivery --mode live`: $2 = label suffix, $3 = rate (0 = closed loop), $4 = in flight.
live_run() {
    local b="$1" label="$1-$2" before
    log "$label: end to end, $([[ "$3" == 0 ]] && echo "closed loop, $4 in flight" || echo "open loop at $3/s"), $CONVERSATIONS conversations, sink delay 0 ms"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((WARMUP + DURATION + DRAIN + 180)) "$DELIVERY" --url "http://127.0.0.1:$PORT" \
        --sink "127.0.0.1:$SINK_PORT" --threads 2 --mode live --rate "$3" --concurrency "$4" \
        --conversations "$CONVERSATIONS" --sink-delay-ms 0 --duration "$DURATION" \
        --warmup "$WARMUP" --drain "$DRAIN" --label "$label" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "delivery $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    grep -v '^{' "$WORK/$label.out"
    cpu_row "$label" "$before" "$(cpu_snapshot)" "$WORK/$label.time"
    server_alive "$label"
    grep '^{' "$WORK/$label.out" | tee -a "$RESULTS" >"$WORK/$label.json"
}

e2e_run() {
    local b="$1"
    live_run "$b" e2e 0 "$CONCURRENCY"
    local j="$WORK/$b-e2e.json"
    metric "$b" e2e_in "$(jq -r '.created_per_s_in_window | round' "$j")"
    metric "$b" e2e_out "$(jq -r '.sink.arrivals_per_s_in_window | round' "$j")"
    metric "$b" e2e_rest_p99 "$(jq -r '.post.rest_p99_ms' "$j")"
    metric "$b" e2e_p50 "$(jq -r '.sink.from_201.p50_ms' "$j")"
    metric "$b" e2e_p99 "$(jq -r '.sink.from_201.p99_ms' "$j")"
    metric "$b" e2e_undelivered "$(jq -r '.undelivered_after_drain' "$j")"
}

paced_run() {
    local b="$1"
    live_run "$b" "paced$PACED_RATE" "$PACED_RATE" 64
    local j="$WORK/$b-paced$PACED_RATE.json"
    metric "$b" paced_in "$(jq -r '.created_per_s_in_window | round' "$j")"
    metric "$b" paced_out "$(jq -r '.sink.arrivals_per_s_in_window | round' "$j")"
    metric "$b" paced_p50 "$(jq -r '.sink.from_201.p50_ms' "$j")"
    metric "$b" paced_p99 "$(jq -r '.sink.from_201.p99_ms' "$j")"
    metric "$b" paced_commit_p50 "$(jq -r '.sink.from_commit.p50_ms' "$j")"
    metric "$b" paced_commit_p99 "$(jq -r '.sink.from_commit.p99_ms' "$j")"
    metric "$b" paced_rest_p50 "$(jq -r '.post.rest_p50_ms' "$j")"
    metric "$b" paced_rest_p99 "$(jq -r '.post.rest_p99_ms' "$j")"
    metric "$b" paced_undelivered "$(jq -r '.undelivered_after_drain + .post.unsent' "$j")"
}

drain_run() {
    local b="$1" label="$1-drain" before after
    log "$label: preload $COUNT activities over $CONVERSATIONS conversations with delivery off"
    stop_server
    CONVERGER_DELIVERY_ENABLED=false start_server "$b"
    timeout 900 "$DELIVERY" --url "http://127.0.0.1:$PORT" --sink "127.0.0.1:$SINK_PORT" \
        --threads 2 --mode preload --count "$COUNT" --concurrency "$CONCURRENCY" \
        --conversations "$CONVERSATIONS" --label "$label" >"$WORK/$label-preload.out" 2>&1 || {
        cat "$WORK/$label-preload.out" >&2; exit 1; }
    grep -v '^{' "$WORK/$label-preload.out"
    stop_server
    log "$label: draining with delivery on"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((DRAIN * 10 + 60)) "$DELIVERY" --sink "127.0.0.1:$SINK_PORT" --threads 2 \
        --mode drain --count "$COUNT" --drain $((DRAIN * 10)) --label "$label" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" &
    DRAIN_PID=$!
    sleep 0.5
    start_server "$b"
    wait "$DRAIN_PID" || { echo "drain failed" >&2; cat "$WORK/$label.err" >&2; exit 1; }
    DRAIN_PID=""
    after="$(cpu_snapshot)"
    grep -v '^{' "$WORK/$label.out"
    # `before` was taken with no server running, so all of the new server's CPU,
    # start-up included, is counted.
    cpu_row "$label" "$before" "$after" "$WORK/$label.time"
    grep '^{' "$WORK/$label.out" | tee -a "$RESULTS" >"$WORK/$label.json"
    metric "$b" drain "$(jq -r '.sink.arrivals_per_s_first_to_last | round' "$WORK/$label.json")"
    metric "$b" drain_delivered "$(jq -r '.sink.arrivals_total' "$WORK/$label.json")"
    metric "$b" drain_pg_ms "$(awk -F'\t' -v l="$label" -v n="$COUNT" '$1 == l { printf "%.3f", 1000 * $4 / n }' "$CPU")"
    metric "$b" drain_cvg_ms "$(awk -F'\t' -v l="$label" -v n="$COUNT" '$1 == l { printf "%.3f", 1000 * $3 / n }' "$CPU")"
}

bench_backend() {
    local b="$1" tls
    use_backend "$b"
    if [[ "$b" == postgres && -n "$PGSSLMODE_PARAM" ]]; then
        CONVERGER_DATABASE_URL+="?$PGSSLMODE_PARAM"
    fi
    [[ "$b" == postgres ]] && echo "PostgreSQL URL: $CONVERGER_DATABASE_URL"
    if has_run api || has_run ingest; then
        log "$b: converger on 127.0.0.1:$PORT, delivery off"
        CONVERGER_DELIVERY_ENABLED=false start_server "$b"
        create_tenant
        has_run api && api_run "$b"
        has_run ingest && ingest_run "$b"
        if [[ "$b" == postgres ]]; then
            tls="$(pg_tls_seen "$PGHOST" "$PGPORT" "$PGDB")"
            echo "converger's PostgreSQL connections: ${tls:-none seen}"
            metric "$b" tls "${tls:-?}"
        fi
        stop_server
    fi
    if has_run e2e || has_run paced || has_run drain; then
        log "$b: converger on 127.0.0.1:$PORT, delivery on"
        start_server "$b"
        [[ -n "${LOADGEN_API_KEY:-}" ]] || create_tenant
        has_run e2e && e2e_run "$b"
        has_run paced && paced_run "$b"
        if [[ "$b" == postgres ]] && ! grep -q $'^postgres\ttls\t' "$METRICS"; then
            tls="$(pg_tls_seen "$PGHOST" "$PGPORT" "$PGDB")"
            echo "converger's PostgreSQL connections: ${tls:-none seen}"
            metric "$b" tls "${tls:-?}"
        fi
        has_run drain && drain_run "$b"
        stop_server
    fi
    report_log "$b"
}

# Statements and transactions per message on a throwaway cluster with
# pg_stat_statements.
stmts_run() {
    local dir="$WORK/pgstmt" label="postgres-stmts" db="$STMT_DB" before after
    local psql_o=(psql -h 127.0.0.1 -p "$STMT_PGPORT" -U postgres -d postgres -AtqX -v ON_ERROR_STOP=1)
    log "$label: throwaway PostgreSQL cluster on 127.0.0.1:$STMT_PGPORT (pg_stat_statements)"
    port_free "$STMT_PGPORT"
    mkdir -p "$dir"
    [[ "$(id -u)" == 0 ]] && chown postgres: "$dir"
    timeout 120 "${AS_PG[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres \
        --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    STMT_DATA="$dir/data"
    cat >>"$dir/data/postgresql.conf" <<EOF
port = $STMT_PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_utility = on
pg_stat_statements.max = 5000
EOF
    timeout 60 "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    "${psql_o[@]}" -c "CREATE EXTENSION pg_stat_statements" -c "CREATE DATABASE $db"
    export CONVERGER_DATABASE_URL="postgres://postgres@127.0.0.1:$STMT_PGPORT/$db"
    [[ -n "$PGSSLMODE_PARAM" ]] && CONVERGER_DATABASE_URL+="?$PGSSLMODE_PARAM"
    export CONVERGER_JWT_SECRET="bench-jwt-secret-0123456789abcdefghijklm"
    start_server stmts
    create_tenant
    # After the set-up (channel, conversations): let every backend flush its pending
    # statistics (idle backends do within 10 s), then reset the statement counters and
    # read the commit counter.
    local reset="sleep 11; psql -h 127.0.0.1 -p $STMT_PGPORT -U postgres -d postgres -AtqX \
        -c 'SELECT pg_stat_statements_reset()' \
        -c \"SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '$db'\" \
        >$WORK/stmts-baseline.txt"
    before="$(cpu_snapshot)"
    /usr/bin/time -f '%U %S' -o "$WORK/$label.time" \
        timeout $((STMT_COUNT / 20 + DRAIN + 120)) "$DELIVERY" --url "http://127.0.0.1:$PORT" \
        --sink "127.0.0.1:$SINK_PORT" --threads 2 --mode count --count "$STMT_COUNT" \
        --concurrency "$CONCURRENCY" --conversations "$CONVERSATIONS" --drain "$DRAIN" \
        --after-setup "$reset" --label "$label" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "delivery $label failed:" >&2; cat "$WORK/$label.err" "$WORK/$label.out" >&2; exit 1; }
    after="$(cpu_snapshot)"
    grep -v '^{' "$WORK/$label.out"
    cpu_row "$label" "$before" "$after" "$WORK/$label.time"
    server_alive "$label"
    grep '^{' "$WORK/$label.out" | tee -a "$RESULTS" >"$WORK/$label.json"
    local n
    n="$(jq -r '.post.created' "$WORK/$label.json")"
    # Statements first (the server is still connected), then stop the server: its
    # backends flush their transaction counts as they exit.
    "${psql_o[@]}" -F $'\t' >"$WORK/stmts.tsv" -c "
        SELECT calls, round(total_exec_time::numeric, 1), regexp_replace(query, '\s+', ' ', 'g')
          FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db')
         ORDER BY calls DESC"
    stop_server
    sleep 1
    local base_c base_r end_c end_r
    IFS='|' read -r base_c base_r <"$WORK/stmts-baseline.txt"
    IFS='|' read -r end_c end_r < <("${psql_o[@]}" -c \
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '$db'")
    echo "deliveries in the database: $(psql -h 127.0.0.1 -p "$STMT_PGPORT" -U postgres -d "$db" -AtqX \
        -c "SELECT string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM deliveries GROUP BY status) s")"
    awk -F'\t' -v n="$n" -v xc=$((end_c - base_c)) -v xr=$((end_r - base_r)) '
        { total += $1; if ($3 ~ /^(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)/) tx += $1 }
        END { printf "%d messages: %d statements = %.2f per message (%.2f without BEGIN/COMMIT/ROLLBACK/SAVEPOINT); %d commits = %.2f per message, %d rollbacks\n",
                n, total, total / n, (total - tx) / n, xc, xc / n, xr }' "$WORK/stmts.tsv" | tee "$WORK/stmts-summary.txt"
    metric postgres stmts "$(awk -F'\t' -v n="$n" '{ t += $1 } END { printf "%.2f", t / n }' "$WORK/stmts.tsv")"
    metric postgres stmts_sql "$(awk -F'\t' -v n="$n" '$3 !~ /^(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)/ { t += $1 } END { printf "%.2f", t / n }' "$WORK/stmts.tsv")"
    metric postgres xacts "$(awk -v n="$n" -v x=$((end_c - base_c)) 'BEGIN { printf "%.2f", x / n }')"
    metric postgres stmts_n "$n"
    echo "top statements by calls per message:"
    awk -F'\t' -v n="$n" 'NR <= 20 { printf "  %6.2f  %7.1f ms  %s\n", $1 / n, $2, substr($3, 1, 120) }' "$WORK/stmts.tsv" \
        | tee "$WORK/stmts-top.txt"
    timeout 60 "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    STMT_DATA=""
}

# --- main --------------------------------------------------------------------------

build
[[ -x "$CONVERGER" && -x "$LOADGEN" && -x "$DELIVERY" ]] || { echo "missing binaries; build first" >&2; exit 1; }
port_free "$PORT"
port_free "$SINK_PORT"

# The sink listens on loopback, which the egress policy closes by default.
export RUST_LOG=warn CONVERGER_LISTEN="127.0.0.1:$PORT" \
    CONVERGER_RATE_LIMIT_PER_IP=0 CONVERGER_RATE_LIMIT_PER_TENANT=0 CONVERGER_MAX_CONNECTIONS_PER_IP=0 \
    CONVERGER_EGRESS_ALLOW="127.0.0.0/8"

echo "converger: $CONVERGER, built $(stat -c %y "$CONVERGER" | cut -d. -f1); HEAD $(git -C "$ROOT" rev-parse --short HEAD) of $(git -C "$ROOT" log -1 --format=%ci)"
[[ "$(stat -c %Y "$CONVERGER")" -lt "$(git -C "$ROOT" log -1 --format=%ct)" ]] && echo "note: the binary is older than HEAD"
for backend in $BACKENDS; do
    unset LOADGEN_API_KEY
    bench_backend "$backend"
done
has_run stmts && stmts_run

# --- table -------------------------------------------------------------------------

log "results"
sslmode="${PGSSLMODE_PARAM:-sslmode unset (client default: prefer)}"
tls="$(awk -F'\t' '$1 == "postgres" && $2 == "tls" { print $3 }' "$METRICS")"
awk -F'\t' -v svix_e2e="$SVIX_E2E" -v svix_api="$SVIX_API" -v svix_drain="$SVIX_DRAIN" \
    -v svix_pg="$SVIX_DRAIN_PG_MS" -v svix_p50="$SVIX_P50" -v svix_p99="$SVIX_P99" \
    -v svix_stmts="$SVIX_STMTS" -v c="$CONCURRENCY" -v conv="$CONVERSATIONS" \
    -v paced="$PACED_RATE" -v ingest="$INGEST_RATE" -v count="$COUNT" -v scount="$STMT_COUNT" '
    { v[$1, $2] = $3 }
    function get(b, k) { return ((b, k) in v) ? v[b, k] : "-" }
    function ratio(k, ref) {
        if (ref == "" || !(("postgres", k) in v) || v["postgres", k] == "" || ref + 0 == 0) return "-"
        return sprintf("%.2f", v["postgres", k] / ref)
    }
    function row(name, k, ref) {
        printf "%s\t%s\t%s\t%s\t%s\n", name, get("sqlite", k), get("postgres", k),
            (ref == "" ? "-" : ref), ratio(k, ref)
    }
    END {
        printf "run\tsqlite\tpostgres\tsvix 1.100.0 (pg)\tpostgres/svix\n"
        row("end to end, closed " c " in flight: ingested msg/s", "e2e_in", svix_e2e)
        row("end to end, closed " c " in flight: delivered msg/s", "e2e_out", svix_e2e)
        row("  REST p99 ms", "e2e_rest_p99", "")
        row("  201->sink p50 ms", "e2e_p50", "")
        row("  201->sink p99 ms", "e2e_p99", "")
        row("API only, closed " c " in flight: msg/s", "api", svix_api)
        row("  REST p99 ms", "api_p99", "")
        row("drain " count ": deliveries/s", "drain", svix_drain)
        row("  postgres CPU ms/delivery", "drain_pg_ms", svix_pg)
        row("  converger CPU ms/delivery", "drain_cvg_ms", "")
        row("paced " paced "/s: 201->sink p50 ms", "paced_p50", svix_p50)
        row("paced " paced "/s: 201->sink p99 ms", "paced_p99", svix_p99)
        row("  inserted_at->sink p50 ms", "paced_commit_p50", "")
        row("  inserted_at->sink p99 ms", "paced_commit_p99", "")
        row("  REST p99 ms", "paced_rest_p99", "")
        row("  delivered msg/s (of " paced ")", "paced_out", "")
        row("ingest only " ingest "/s: REST p99 ms", "ingest_p99", "")
        row("  REST p50 ms", "ingest_p50", "")
        row("SQL statements/msg, e2e (" scount ")", "stmts", svix_stmts)
        row("  without BEGIN/COMMIT", "stmts_sql", "")
        row("  transactions (commits)/msg", "xacts", "")
    }' "$METRICS" | column -t -s $'\t'
echo
echo "PostgreSQL: ${sslmode}; converger's connections during the runs: ${tls:-not checked}"
echo "statements: throwaway PostgreSQL 15 cluster, pg_stat_statements (track_utility=on), no TLS unless PGSSLMODE_PARAM asks"
echo
echo "CPU seconds per run (whole run: set-up, warm-up, measured window, drain)"
{
    printf 'run\twall s\tconverger\tpostgres\ttool\tother\tbusy %%\n'
    cat "$CPU"
} | column -t -s $'\t'
[[ -s "$WORK/stmts-top.txt" ]] && { echo; echo "top statements by calls per message (calls/msg, total exec time, text):"; cat "$WORK/stmts-top.txt"; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); raw: $WORK"
