//! Turns what a run collected into figures and invariant checks, as one JSON value,
//! and prints it for people.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Collected;
use crate::load::Outcome;
use crate::verify::{self, quantile};

/// Thresholds and labels from the command line.
pub struct Targets {
    pub label: String,
    pub rate: f64,
    pub restart_delay: f64,
    /// One node: seconds from `/ready` after the restart to every backlogged
    /// conversation delivered to again.
    pub after_restart: f64,
    /// Several nodes: the same, from the kill.
    pub after_kill: f64,
    pub ready_within: f64,
    pub cut: f64,
}

/// A conversation whose next arrival after a kill took longer than this counts as
/// stalled (held by the killed node).
const STALL: Duration = Duration::from_secs(2);
/// Activities acknowledged up to this long after the killed node was ready again count
/// as waiting at the kill: long enough for two activities per conversation at the run's
/// rate, at least a second. (With one node nothing is acknowledged while it is down.)
fn waiting_window(conversations: usize, rate: f64) -> Duration {
    Duration::from_secs_f64((2.0 * conversations as f64 / rate).max(1.0))
}

fn r2(x: f64) -> f64 {
    if x.is_finite() {
        (x * 100.0).round() / 100.0
    } else {
        x
    }
}

fn s(d: Duration) -> f64 {
    if d == Duration::MAX {
        f64::INFINITY
    } else {
        r2(d.as_secs_f64())
    }
}

/// Seconds as JSON; a wait that never ended is `null`.
fn js(x: f64) -> Value {
    if x.is_finite() {
        json!(r2(x))
    } else {
        Value::Null
    }
}

fn since(t0: Instant, at: Instant) -> f64 {
    r2(at.saturating_duration_since(t0).as_secs_f64())
}

fn counts<'a>(labels: impl Iterator<Item = String> + 'a) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in labels {
        *out.entry(l).or_default() += 1;
    }
    out
}

/// The report and whether every invariant held.
pub fn build(c: &Collected, t: &Targets) -> (Value, bool) {
    let mut checks: Vec<(String, Value, bool)> = Vec::new();
    let mut check = |name: &str, value: Value, ok: bool| checks.push((name.to_owned(), value, ok));

    // REST load.
    let load = &c.load;
    let statuses = counts(load.responses.iter().map(|r| r.outcome.label()));
    let server_errors = load
        .responses
        .iter()
        .filter(|r| r.outcome.server_error())
        .count();
    let replays = load
        .responses
        .iter()
        .filter(|r| r.outcome == Outcome::Status(200, None))
        .count();
    let retried = load.responses.len() - load.acks.len() - load.rejected.len();
    let load_secs = load
        .responses
        .iter()
        .map(|r| r.sent)
        .max()
        .map_or(0.0, |last| since(c.t0, last));
    check(
        "rest_server_errors",
        json!(server_errors),
        server_errors == 0,
    );
    check(
        "rest_unacknowledged",
        json!(load.abandoned.len() + load.rejected.len()),
        load.abandoned.is_empty() && load.rejected.is_empty(),
    );

    // The store.
    let mut stored_by_id = HashMap::<&str, i64>::new();
    let mut seq_gaps = 0;
    for conversation in &c.stored {
        let seqs: Vec<i64> = conversation.iter().map(|a| a.seq).collect();
        seq_gaps += verify::seq_gaps(&seqs);
        for a in conversation {
            stored_by_id.insert(&a.id, a.seq);
        }
    }
    let stored_total: usize = c.stored.iter().map(Vec::len).sum();
    let lost = load
        .acks
        .iter()
        .filter(|a| !stored_by_id.contains_key(a.id.as_str()))
        .count();
    let seq_mismatch = load
        .acks
        .iter()
        .filter(|a| stored_by_id.get(a.id.as_str()).is_some_and(|s| *s != a.seq))
        .count();
    let duplicate_keys = verify::duplicate_keys(
        c.stored
            .iter()
            .flatten()
            .filter_map(|a| a.idempotency_key.as_deref()),
    );
    let acked_keys: HashSet<&str> = load.acks.iter().map(|a| a.key.as_str()).collect();
    let stored_unacked = c
        .stored
        .iter()
        .flatten()
        .filter(|a| {
            a.idempotency_key
                .as_deref()
                .is_none_or(|k| !acked_keys.contains(k))
        })
        .count();
    check("lost", json!(lost), lost == 0);
    check("acked_seq_mismatch", json!(seq_mismatch), seq_mismatch == 0);
    check("duplicate_keys", json!(duplicate_keys), duplicate_keys == 0);
    check("seq_gaps", json!(seq_gaps), seq_gaps == 0);

    // Sockets.
    let mut socket_missing = 0u64;
    let mut socket_duplicates = 0u64;
    let mut socket_phantoms = 0u64;
    let mut incomplete = 0u64;
    let mut refusals = BTreeMap::<String, u64>::new();
    let (mut joins, mut connect_failures, mut phx_errors, mut jumps, mut backwards) =
        (0, 0, 0, 0, 0);
    for socket in &c.sockets {
        let expected: HashSet<i64> = c.stored[socket.conversation]
            .iter()
            .map(|a| a.seq)
            .collect();
        let missing = expected
            .iter()
            .filter(|seq| !socket.received.contains_key(seq))
            .count() as u64;
        socket_missing += missing;
        incomplete += u64::from(missing > 0);
        socket_duplicates += socket
            .received
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum::<u64>();
        socket_phantoms += socket
            .received
            .keys()
            .filter(|seq| !expected.contains(seq))
            .count() as u64;
        joins += socket.joins;
        connect_failures += socket.connect_failures;
        phx_errors += socket.phx_errors;
        jumps += socket.jumps;
        backwards += socket.backwards;
        for (reason, n) in &socket.refusals {
            *refusals.entry(reason.clone()).or_default() += n;
        }
    }
    check("socket_missing", json!(socket_missing), socket_missing == 0);
    check(
        "socket_unknown_seqs",
        json!(socket_phantoms),
        socket_phantoms == 0,
    );

    // Deliveries.
    let conversation_index: HashMap<&str, usize> = c
        .conversations
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let arrived: HashSet<&str> = c.arrivals.iter().map(|a| a.activity.as_str()).collect();
    let sink_missing = c
        .stored
        .iter()
        .flatten()
        .filter(|a| !arrived.contains(a.id.as_str()))
        .count();
    let webhook_ids: HashSet<&str> = c.arrivals.iter().map(|a| a.webhook_id.as_str()).collect();
    let webhook_duplicates = c.arrivals.len() - webhook_ids.len();
    let mut ids_per_activity = HashMap::<&str, HashSet<&str>>::new();
    for a in &c.arrivals {
        ids_per_activity
            .entry(&a.activity)
            .or_default()
            .insert(&a.webhook_id);
    }
    let several_ids = ids_per_activity
        .values()
        .filter(|ids| ids.len() > 1)
        .count();
    let order_violations =
        verify::order_violations(c.arrivals.iter().map(|a| (a.conversation.as_str(), a.seq)));
    check("deliveries_missing", json!(sink_missing), sink_missing == 0);
    check(
        "deliveries_pending_after_drain",
        json!(c.pending_after_drain),
        c.pending_after_drain == 0,
    );
    check(
        "deliveries_failed_after_drain",
        json!(c.failed_after_drain),
        c.failed_after_drain == 0,
    );
    check(
        "delivery_order_violations",
        json!(order_violations),
        order_violations == 0,
    );
    check(
        "activities_under_several_webhook_ids",
        json!(several_ids),
        several_ids == 0,
    );

    // Takeover after each kill.
    let acked: Vec<(usize, &str, Instant)> = load
        .acks
        .iter()
        .map(|a| (a.conversation, a.id.as_str(), a.at))
        .collect();
    let arrivals: Vec<(usize, &str, Instant)> = c
        .arrivals
        .iter()
        .filter_map(|a| {
            conversation_index
                .get(a.conversation.as_str())
                .map(|i| (*i, a.activity.as_str(), a.at))
        })
        .collect();
    let one_node = c.nodes == 1;
    let target = if one_node {
        t.after_restart
    } else {
        t.after_kill
    };
    let mut kills = Vec::new();
    let (mut resumed, mut after_ready, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let mut over_target = 0;
    let window = waiting_window(c.conversations.len(), t.rate);
    for k in &c.kills {
        let r = verify::resumption(k.at, k.ready + window, &acked, &arrivals, STALL);
        // With nothing waiting at the kill, the sink receiving again is the measure.
        let resumed_after = r.all_resumed.or(r.first_arrival);
        let all = resumed_after.map(s);
        let from_ready = resumed_after.map(|d| {
            if d == Duration::MAX {
                f64::INFINITY
            } else {
                r2((k.at + d).saturating_duration_since(k.ready).as_secs_f64())
            }
        });
        let measured = if one_node { from_ready } else { all };
        if measured.is_some_and(|m| m > target) {
            over_target += 1;
        }
        if let Some(a) = all {
            resumed.push(a);
        }
        if let Some(f) = from_ready {
            after_ready.push(f);
        }
        down.push(s(k.ready - k.at));
        kills.push(json!({
            "at_s": since(c.t0, k.at),
            "restarted_after_s": s(k.restarted - k.at),
            "ready_after_s": s(k.ready - k.at),
            "backlogged_conversations": r.backlogged,
            "stalled_conversations": r.stalled,
            "first_arrival_after_s": r.first_arrival.map(s),
            "resumed_after_s": all.map_or(Value::Null, js),
            "resumed_after_ready_s": from_ready.map_or(Value::Null, js),
        }));
    }
    check(
        if one_node {
            "takeover_over_target_after_restart"
        } else {
            "takeover_over_target_after_kill"
        },
        json!(over_target),
        over_target == 0,
    );
    let p = |v: &[f64], q: f64| quantile(v, q).map_or(Value::Null, js);

    // Cuts.
    let mut cuts = Vec::new();
    for cut in &c.cuts {
        let during = |sent: Instant| sent >= cut.start && sent < cut.end;
        let survivor_rest = counts(
            load.responses
                .iter()
                .filter(|r| r.node != c.victim && during(r.sent))
                .map(|r| r.outcome.label()),
        );
        let acked_during: Vec<_> = load.acks.iter().filter(|a| during(a.at)).collect();
        let lost_during = acked_during
            .iter()
            .filter(|a| !stored_by_id.contains_key(a.id.as_str()))
            .count();
        let victim_rest: Vec<_> = load
            .responses
            .iter()
            .filter(|r| r.node == c.victim && during(r.sent))
            .collect();
        let rest_statuses = counts(victim_rest.iter().map(|r| r.outcome.label()));
        let mut rest_latency: Vec<f64> = victim_rest
            .iter()
            .map(|r| r.latency.as_secs_f64() * 1000.0)
            .collect();
        rest_latency.sort_by(f64::total_cmp);
        let rest_server_errors = victim_rest
            .iter()
            .filter(|r| r.outcome.server_error())
            .count();
        let probes: Vec<_> = cut
            .probes
            .iter()
            .filter(|p| p.node == c.victim && during(p.sent))
            .collect();
        let ready_statuses = counts(probes.iter().map(|p| p.outcome.label()));
        let first_503 = probes
            .iter()
            .filter(|p| p.outcome == Outcome::Status(503, None))
            .map(|p| {
                (p.sent + p.latency)
                    .saturating_duration_since(cut.start)
                    .as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let ready_max_ms = probes
            .iter()
            .map(|p| p.latency.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        let survivors_not_ready = cut
            .probes
            .iter()
            .filter(|p| p.node != c.victim && during(p.sent))
            .filter(|p| p.outcome != Outcome::Status(200, None))
            .count();
        let back = cut
            .probes
            .iter()
            .filter(|p| p.node == c.victim && p.sent >= cut.end)
            .filter(|p| p.outcome == Outcome::Status(200, None))
            .map(|p| {
                (p.sent + p.latency)
                    .saturating_duration_since(cut.end)
                    .as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let name = |what: &str| format!("cut_{}_{what}", cut.mode);
        check(
            &name("rest_server_errors"),
            json!(rest_server_errors),
            rest_server_errors == 0,
        );
        check(
            &name("ready_503_after_s"),
            js(first_503),
            first_503 <= t.ready_within,
        );
        check(
            &name("ready_slowest_ms"),
            json!(r2(ready_max_ms)),
            ready_max_ms <= t.ready_within * 1000.0,
        );
        check(
            &name("survivor_not_ready"),
            json!(survivors_not_ready),
            survivors_not_ready == 0,
        );
        check(&name("ready_again_after_s"), js(back), back.is_finite());
        cuts.push(json!({
            "mode": cut.mode,
            "at_s": since(c.t0, cut.start),
            "length_s": s(cut.end - cut.start),
            "acknowledged_during": acked_during.len(),
            "lost_of_those": lost_during,
            "survivor_rest": survivor_rest,
            "victim_rest": rest_statuses,
            "victim_rest_ms": {
                "n": rest_latency.len(),
                "p50": quantile(&rest_latency, 0.5).map(r2),
                "p99": quantile(&rest_latency, 0.99).map(r2),
                "max": rest_latency.last().copied().map(r2),
            },
            "victim_ready": ready_statuses,
            "victim_ready_503_after_s": js(first_503),
            "victim_ready_slowest_ms": r2(ready_max_ms),
            "victim_ready_again_after_s": js(back),
            "survivor_ready_not_200": survivors_not_ready,
        }));
    }

    check("drained", json!(s(c.drain)), c.drained);
    let passed = checks.iter().all(|(_, _, ok)| *ok);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(n, _, _)| n.as_str())
        .collect();
    let report = json!({
        "label": t.label,
        "seed": c.seed,
        "nodes": c.nodes,
        "passed": passed,
        "failed": failed,
        "checks": checks.iter().map(|(n, v, ok)| json!({"name": n, "value": v, "ok": ok})).collect::<Vec<_>>(),
        "load": {
            "rate": t.rate,
            "seconds": load_secs,
            "conversations": c.conversations.len(),
            "scheduled": load.scheduled,
            "acknowledged": load.acks.len(),
            "replays_200": replays,
            "retried_requests": retried,
            "abandoned": load.abandoned.len(),
            "rejected": load.rejected.iter().map(|(k, o)| format!("{k}: {}", o.label())).collect::<Vec<_>>(),
            "late": load.late,
            "statuses": statuses,
            "server_errors": server_errors,
        },
        "store": {
            "stored": stored_total,
            "lost": lost,
            "acked_seq_mismatch": seq_mismatch,
            "duplicate_keys": duplicate_keys,
            "seq_gaps": seq_gaps,
            "stored_without_ack": stored_unacked,
        },
        "sockets": {
            "sockets": c.sockets.len(),
            "joins": joins,
            "rejoins": joins.saturating_sub(c.sockets.len() as u64),
            "connect_failures": connect_failures,
            "phx_errors": phx_errors,
            "refusals": refusals,
            "missing": socket_missing,
            "incomplete_sockets": incomplete,
            "duplicates": socket_duplicates,
            "unknown_seqs": socket_phantoms,
            "seq_jumps": jumps,
            "seq_backwards": backwards,
        },
        "deliveries": {
            "arrivals": c.arrivals.len(),
            "activities_delivered": arrived.len(),
            "missing": sink_missing,
            "duplicate_webhook_ids": webhook_duplicates,
            "activities_under_several_webhook_ids": several_ids,
            "order_violations": order_violations,
            "pending_after_drain": c.pending_after_drain,
            "failed_after_drain": c.failed_after_drain,
            "malformed": c.malformed_webhooks,
            "drain_s": s(c.drain),
        },
        "takeover": {
            "kills": c.kills.len(),
            "restart_delay_s": t.restart_delay,
            "measured_from": if one_node { "ready after restart" } else { "kill" },
            "waiting_window_s": s(window),
            "target_s": target,
            "over_target": over_target,
            "ready_after_kill_s": {"p50": p(&down, 0.5), "max": p(&down, 1.0)},
            "resumed_after_kill_s": {"p50": p(&resumed, 0.5), "max": p(&resumed, 1.0)},
            "resumed_after_ready_s": {"p50": p(&after_ready, 0.5), "max": p(&after_ready, 1.0)},
            "per_kill": kills,
        },
        "cut_s": t.cut,
        "cuts": cuts,
        "proxy_connections": c.proxy_connections,
    });
    (report, passed)
}

/// The report for people.
pub fn print_human(r: &Value) {
    let n = |v: &Value| v.to_string();
    println!(
        "== chaos {}: {} node(s), {} kills, seed {}",
        r["label"].as_str().unwrap_or(""),
        r["nodes"],
        r["takeover"]["kills"],
        r["seed"]
    );
    let l = &r["load"];
    println!(
        "load        {}/s over {} conversations for {} s: {} activities, {} acknowledged ({} retried requests, {} replays), {} abandoned, rejected {}",
        l["rate"],
        l["conversations"],
        l["seconds"],
        l["scheduled"],
        l["acknowledged"],
        l["retried_requests"],
        l["replays_200"],
        l["abandoned"],
        n(&l["rejected"])
    );
    println!("responses   {}", n(&l["statuses"]));
    let st = &r["store"];
    println!(
        "store       {} stored; lost {}, duplicate keys {}, seq gaps {}, acked seq mismatch {}, stored without ack {}",
        st["stored"],
        st["lost"],
        st["duplicate_keys"],
        st["seq_gaps"],
        st["acked_seq_mismatch"],
        st["stored_without_ack"]
    );
    let so = &r["sockets"];
    println!(
        "sockets     {} sockets, {} rejoins ({} phx_error, {} failed connects, refusals {}); missing {} on {} sockets, duplicates {}, unknown {}",
        so["sockets"],
        so["rejoins"],
        so["phx_errors"],
        so["connect_failures"],
        n(&so["refusals"]),
        so["missing"],
        so["incomplete_sockets"],
        so["duplicates"],
        so["unknown_seqs"]
    );
    let d = &r["deliveries"];
    println!(
        "deliveries  {} of {} activities at the sink ({} requests, {} duplicate webhook-ids); missing {}, out of order {}; after a {} s drain: pending {}, failed {}",
        d["activities_delivered"],
        st["stored"],
        d["arrivals"],
        d["duplicate_webhook_ids"],
        d["missing"],
        d["order_violations"],
        d["drain_s"],
        d["pending_after_drain"],
        d["failed_after_drain"]
    );
    let t = &r["takeover"];
    println!(
        "takeover    node ready after kill p50 {} / max {} s; deliveries resumed after kill p50 {} / max {} s, after ready p50 {} / max {} s; target {} s from the {}: {} over",
        t["ready_after_kill_s"]["p50"],
        t["ready_after_kill_s"]["max"],
        t["resumed_after_kill_s"]["p50"],
        t["resumed_after_kill_s"]["max"],
        t["resumed_after_ready_s"]["p50"],
        t["resumed_after_ready_s"]["max"],
        t["target_s"],
        t["measured_from"].as_str().unwrap_or(""),
        t["over_target"]
    );
    for k in t["per_kill"].as_array().into_iter().flatten() {
        println!(
            "  kill at {:>6} s: ready +{} s; {} conversations waiting ({} stalled > 2 s); first arrival +{} s, all resumed +{} s ({} s after ready)",
            k["at_s"],
            k["ready_after_s"],
            k["backlogged_conversations"],
            k["stalled_conversations"],
            k["first_arrival_after_s"],
            k["resumed_after_s"],
            k["resumed_after_ready_s"]
        );
    }
    for c in r["cuts"].as_array().into_iter().flatten() {
        println!(
            "cut {}    {} s at {} s: {} acknowledged meanwhile ({} lost); REST on the cut node {} (ms p50 {} / p99 {} / max {}), on the other {}; /ready {}, first 503 after {} s, slowest {} ms, 200 again {} s after; survivor /ready not 200: {}",
            c["mode"].as_str().unwrap_or(""),
            c["length_s"],
            c["at_s"],
            c["acknowledged_during"],
            c["lost_of_those"],
            n(&c["victim_rest"]),
            c["victim_rest_ms"]["p50"],
            c["victim_rest_ms"]["p99"],
            c["victim_rest_ms"]["max"],
            n(&c["survivor_rest"]),
            n(&c["victim_ready"]),
            c["victim_ready_503_after_s"],
            c["victim_ready_slowest_ms"],
            c["victim_ready_again_after_s"],
            c["survivor_ready_not_200"]
        );
    }
    if r["passed"].as_bool() == Some(true) {
        println!("verdict     PASS: every invariant held");
    } else {
        println!("verdict     FAIL: {}", n(&r["failed"]));
    }
}
