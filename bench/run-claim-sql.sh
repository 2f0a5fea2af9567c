#!/usr/bin/env bash
# The delivery queue's claim statement in isolation, on PostgreSQL: the statement of
# src/store/queue.rs (heads only, `head`) against the one it replaced (every due row
# checked against the rows ahead of it, `anti-join`), on the same data.
#
# Usage: bench/run-claim-sql.sh          (about 1 min; needs psql and pgbench)
#
# Per shape, on a fresh database `converger_claim` migrated by `converger migrate`:
# CONVERSATIONS conversations x PER pending deliveries on one webhook channel, all due
# a minute ago (the fill of BENCHMARKS.md "Admin list pages", parameterised), head
# flags as the migration's backfill sets them, ANALYZE; then EXPLAIN ANALYZE of
# each claim (LIMIT 64, rolled back) and pgbench of the claim (rolled back, 50 runs) and
# of next_delivery_due (20 runs). Shape `heads later`: each pair's first delivery is
# scheduled a minute ahead (a receiver in back-off), the 19,990 behind it are due.
#
# Knobs (environment): SHAPES="500x40 10x2000 10x2000later"
#   CONVERGER=target/release/converger   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHAPES="${SHAPES:-500x40 10x2000 10x2000later}"
CONVERGER="${CONVERGER:-$ROOT/target/release/converger}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
DB=converger_claim
PSQL=(psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -qX -v ON_ERROR_STOP=1)
WORK="$(mktemp -d /tmp/converger-claim.XXXXXX)"

[[ -x "$CONVERGER" ]] || { echo "no converger at $CONVERGER; cargo build --release first" >&2; exit 1; }
trap '"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT

# The due rows a claim may take: with and without the head flag.
DUE="d.status = 'pending' AND d.next_attempt_at <= now() AND (d.locked_until IS NULL OR d.locked_until < now())"
ANTI="NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.conversation_id = d.conversation_id AND e.channel_id = d.channel_id AND e.status = 'pending' AND e.seq < d.seq)"
claim() { # $1: extra condition
    echo "UPDATE deliveries SET locked_until = now() + interval '90 s', updated_at = now() WHERE id IN (SELECT d.id FROM deliveries d WHERE $DUE AND $1 ORDER BY d.next_attempt_at, d.id LIMIT 64 FOR UPDATE SKIP LOCKED) RETURNING id"
}
printf 'BEGIN;\n%s;\nROLLBACK;\n' "$(claim "$ANTI")" >"$WORK/claim-anti-join.sql"
printf 'BEGIN;\n%s;\nROLLBACK;\n' "$(claim "d.head")" >"$WORK/claim-head.sql"
echo "SELECT MIN(CASE WHEN d.locked_until IS NOT NULL AND d.locked_until > d.next_attempt_at THEN d.locked_until ELSE d.next_attempt_at END) FROM deliveries d WHERE d.status = 'pending' AND $ANTI;" >"$WORK/due-anti-join.sql"
echo "SELECT MIN(at) FROM (SELECT CASE WHEN locked_until IS NOT NULL AND locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END AS at FROM deliveries WHERE status = 'pending' AND head ORDER BY next_attempt_at, id) AS heads;" >"$WORK/due-head.sql"

fill() { # $1 conversations, $2 per conversation
    "${PSQL[@]}" -d "$DB" -v convs="$1" -v per="$2" <<'SQL'
INSERT INTO tenants VALUES ('00000000-0000-7000-8000-000000000001','t','active','h','p',now(),now());
INSERT INTO channels VALUES ('00000000-0000-7000-8000-000000000002','00000000-0000-7000-8000-000000000001','c','webhook','s','{}','active',now(),now());
INSERT INTO conversations SELECT ('00000000-0000-7000-8001-' || lpad(to_hex(g),12,'0'))::uuid, '00000000-0000-7000-8000-000000000001','00000000-0000-7000-8000-000000000002',NULL,'active','{}',:per,now(),now() FROM generate_series(1,:convs) g;
INSERT INTO activities SELECT ('00000000-0000-7000-8002-' || lpad(to_hex(c*100000+s),12,'0'))::uuid, '00000000-0000-7000-8000-000000000001', ('00000000-0000-7000-8001-' || lpad(to_hex(c),12,'0'))::uuid, s,'message','outbound','a','x','[]','{}',NULL,now() FROM generate_series(1,:convs) c, generate_series(1,:per) s;
-- In seq order, as appends write them, with the head flag the migration's backfill
-- would set (the first of each pair). Setting it by UPDATE instead would move the heads
-- to the end of the heap, and the anti-join's hash chains would then find them first:
-- the old statement would look much cheaper than it was on data it wrote itself.
INSERT INTO deliveries (id, tenant_id, activity_id, channel_id, conversation_id, seq, status, attempts, next_attempt_at, metadata, inserted_at, updated_at, head)
  SELECT ('00000000-0000-7000-8003-' || lpad(to_hex(c*100000+s),12,'0'))::uuid, '00000000-0000-7000-8000-000000000001', ('00000000-0000-7000-8002-' || lpad(to_hex(c*100000+s),12,'0'))::uuid, '00000000-0000-7000-8000-000000000002', ('00000000-0000-7000-8001-' || lpad(to_hex(c),12,'0'))::uuid, s, 'pending', 0, now() - interval '1 minute', '{}', now(), now(), s = 1
  FROM generate_series(1,:convs) c, generate_series(1,:per) s;
SQL
}

ms() { sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p'; }

printf '%-22s %-10s %12s %14s %12s %12s\n' shape claim "rows scanned" "EXPLAIN ms" "claim ms" "next_due ms"
for shape in $SHAPES; do
    convs="${shape%%x*}"
    rest="${shape#*x}"
    per="${rest%later}"
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
    CONVERGER_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" \
        CONVERGER_JWT_SECRET="bench-jwt-secret-0123456789abcdefghijklm" "$CONVERGER" migrate >/dev/null
    fill "$convs" "$per"
    if [[ "$rest" == *later ]]; then
        "${PSQL[@]}" -d "$DB" -c "UPDATE deliveries SET next_attempt_at = now() + interval '1 minute', attempts = 1 WHERE seq = 1"
    fi
    "${PSQL[@]}" -d "$DB" -c "ANALYZE"
    for kind in anti-join head; do
        plan="$("${PSQL[@]}" -d "$DB" -c "BEGIN" -c "EXPLAIN ANALYZE $(sed -n 2p "$WORK/claim-$kind.sql")" -c "ROLLBACK")"
        echo "$plan" >"$WORK/$shape-$kind.plan"
        scanned="$(echo "$plan" | grep -E 'Scan on deliveries d|Scan using [a-z_]+ on deliveries d' | head -1 | sed -n 's/.*actual time=[^ ]* rows=\([0-9]*\).*/\1/p')"
        explain="$(echo "$plan" | sed -n 's/.*Execution Time: \([0-9.]*\) ms.*/\1/p')"
        claim_ms="$(pgbench -n -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -f "$WORK/claim-$kind.sql" -t 50 "$DB" 2>/dev/null | ms)"
        due_ms="$(pgbench -n -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -f "$WORK/due-$kind.sql" -t 20 "$DB" 2>/dev/null | ms)"
        printf '%-22s %-10s %12s %14s %12s %12s\n' "$convs x $per${rest#"$per"}" "$kind" "${scanned:-?}" "$explain" "$claim_ms" "$due_ms"
    done
done
echo "plans: $WORK/*.plan"
