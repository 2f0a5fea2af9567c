# Shared helpers of bench/run-delivery.sh and bench/run-ws.sh (sourced, not run).
# Expects ROOT, WORK, PORT and CONVERGER set; defines SERVER_PID/SERVER_LOG.

CLK_TCK="$(getconf CLK_TCK)"
SERVER_PID=""
SERVER_LOG=""

log() { printf '\n### %s\n' "$*" >&2; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

# CPU seconds (user + system) a process has used so far.
proc_cpu() {
    awk -v tck="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# CPU seconds used so far by all processes named postgres.
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

# CPU snapshot: "<server cpu> <postgres cpu> <machine busy> <machine total>".
cpu_snapshot() {
    local server=0
    [[ -n "$SERVER_PID" ]] && server="$(proc_cpu "$SERVER_PID")"
    echo "$server $(postgres_cpu) $(machine_cpu)"
}

# Prints the CPU split between two snapshots; $3 = file written by /usr/bin/time -f
# '%U %S' for the tool; $4 = server CPU seconds to add (a server that was restarted).
cpu_report() {
    local before="$1" after="$2" timefile="$3" extra="${4:-0}"
    read -r s0 p0 b0 t0 <<<"$before"
    read -r s1 p1 b1 t1 <<<"$after"
    awk -v s0="$s0" -v s1="$s1" -v p0="$p0" -v p1="$p1" -v b0="$b0" -v b1="$b1" \
        -v t0="$t0" -v t1="$t1" -v ncpu="$(nproc)" -v extra="$extra" \
        '{ lg = $(NF-1) + $NF }
         END { busy = b1 - b0; wall = (t1 - t0) / ncpu; srv = s1 - s0 + extra
               printf "cpu s over %.0f s: converger %.1f, postgres %.1f, tool %.1f, other %.1f; machine busy %.0f%%\n",
                 wall, srv, p1 - p0, lg, busy - srv - (p1 - p0) - lg, 100 * busy / (t1 - t0) }' \
        "$timefile"
}

# Starts `converger serve` with the current CONVERGER_* environment and waits (<= 15 s)
# for /ready. $1 = log name.
start_server() {
    SERVER_LOG="$WORK/$1-server.log"
    "$CONVERGER" serve >>"$SERVER_LOG" 2>&1 &
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

# Counts warnings and errors the server logged.
report_log() {
    local file="$WORK/$1-server.log" warn err
    warn="$(grep -c -w 'WARN' "$file" || true)"
    err="$(grep -c -w 'ERROR' "$file" || true)"
    echo "server log ($1): $warn WARN, $err ERROR lines ($file)"
    grep -w -m 5 -e 'ERROR' -e 'WARN' "$file" || true
}

# Exports CONVERGER_DATABASE_URL (and the JWT secret) for backend $1; re-creates the
# PostgreSQL bench database.
use_backend() {
    case "$1" in
    sqlite)
        rm -f "$WORK/bench.db"*
        export CONVERGER_DATABASE_URL="sqlite://$WORK/bench.db"
        unset CONVERGER_JWT_SECRET
        ;;
    postgres)
        psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qX -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $PGDB" -c "CREATE DATABASE $PGDB" >/dev/null
        export CONVERGER_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDB"
        export CONVERGER_JWT_SECRET="bench-jwt-secret-0123456789abcdefghijklm"
        ;;
    *)
        echo "unknown backend $1 (sqlite, postgres)" >&2
        exit 2
        ;;
    esac
}

# Creates a tenant and exports its key as LOADGEN_API_KEY.
create_tenant() {
    LOADGEN_API_KEY="$("$CONVERGER" tenant create bench 2>/dev/null | awk '/^api key/ { print $3 }')"
    [[ -n "$LOADGEN_API_KEY" ]] || { echo "could not create the bench tenant" >&2; exit 1; }
    export LOADGEN_API_KEY
}

build_all() {
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building converger (release)"
        (cd "$ROOT" && cargo build --release)
        log "building bench tools (release, CARGO_TARGET_DIR=$ROOT/target/bench)"
        CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release \
            --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
    fi
}

port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "port $1 on 127.0.0.1 is taken" >&2
        exit 1
    fi
}
