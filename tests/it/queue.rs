//! The delivery queue's head-of-line flag (docs/design.md#delivery): of each
//! (conversation, channel) only the pending delivery with the smallest `seq` is
//! claimable, so a backlog in one pair costs a claim nothing, and every way a delivery
//! enters or leaves `pending` keeps exactly that row marked. These tests drive the
//! store directly on a server whose workers are off, so they decide every outcome.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use converger::delivery::{DeliveryWaker, replay_failed, run_head_repair};
use converger::domain::{ChannelId, ConversationId, Delivery, DeliveryId, NodeId, Timestamp};
use converger::store::{AppendOutcome, AttemptLog, AttemptResult, Completion, Store, test_support};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::node::Node;
use crate::common::sink::Sink;
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, s};

both_backends!(
    a_backlog_in_one_pair_does_not_block_the_others,
    a_retried_earlier_delivery_becomes_the_head_again,
    the_repair_fixes_heads_written_by_hand,
    a_starting_node_marks_what_an_older_node_left_unmarked,
    concurrent_appends_and_completions_leave_no_pair_stuck,
);

const LEASE: Duration = Duration::from_secs(60);

/// A server whose delivery workers are off: only the test claims.
async fn queue_app(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |c| c.delivery_enabled = false).await
}

async fn webhook_channel(app: &TestApp) -> ChannelId {
    let ch = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    s(&ch, "id").parse().unwrap()
}

async fn conversation(app: &TestApp, channel: ChannelId) -> ConversationId {
    let conv = app.create_conversation(&channel.to_string(), None).await;
    s(&conv, "id").parse().unwrap()
}

/// Appends one outbound message owed to `targets`; returns its deliveries in
/// `targets` order.
async fn append(
    app: &TestApp,
    conversation_id: ConversationId,
    targets: &[ChannelId],
) -> Vec<DeliveryId> {
    append_to(&app.store, app, conversation_id, targets).await
}

async fn append_to(
    store: &Store,
    app: &TestApp,
    conversation_id: ConversationId,
    targets: &[ChannelId],
) -> Vec<DeliveryId> {
    let append = app.append_of(conversation_id, "hello", None, targets.to_vec());
    // Below ingest: these tests choose the delivery rows an append gets.
    match test_support::append_activity(store, &append)
        .await
        .expect("append")
    {
        AppendOutcome::Created { deliveries, .. } => deliveries.into_iter().map(|d| d.0).collect(),
        other => panic!("not created: {other:?}"),
    }
}

/// Claims every due head, as a worker would.
async fn claim(app: &TestApp) -> (Vec<Delivery>, Timestamp) {
    let now = Timestamp::now();
    let lease = now.plus(LEASE);
    let claimed = app
        .store
        .claim_due(NodeId::new(), now, lease, 100)
        .await
        .expect("claim");
    (claimed.into_iter().map(|c| c.delivery).collect(), lease)
}

/// Claims the due heads of one conversation; the others' are given back.
async fn claim_of(app: &TestApp, conversation_id: ConversationId) -> (Vec<Delivery>, Timestamp) {
    let (claimed, lease) = claim(app).await;
    let mut mine = Vec::new();
    for d in claimed {
        if d.conversation_id == conversation_id {
            mine.push(d);
        } else {
            app.store.release_delivery(d.id, lease).await.unwrap();
        }
    }
    (mine, lease)
}

async fn record(app: &TestApp, d: &Delivery, lease: Timestamp, result: AttemptResult) {
    let completion = Completion {
        delivery: d.clone(),
        lease,
        now: Timestamp::now(),
        result,
        log: AttemptLog {
            started_at: Timestamp::now(),
            duration_ms: 1,
            http_status: None,
            response_body: None,
            node: "test".into(),
        },
    };
    assert_eq!(
        app.store
            .record_attempts(&[completion])
            .await
            .expect("record"),
        [true],
        "lease of {} lost",
        d.id
    );
}

fn failed() -> AttemptResult {
    AttemptResult::Failed {
        error: "HTTP 400".into(),
    }
}

fn delivered() -> AttemptResult {
    AttemptResult::Delivered { external_id: None }
}

/// Runs one statement with one delivery id bound, past the store's API.
async fn exec(store: &Store, sql: &'static str, id: DeliveryId) {
    let n = match store {
        Store::Sqlite { writer, .. } => sqlx::query(sql)
            .bind(id)
            .execute(writer)
            .await
            .map(|r| r.rows_affected()),
        Store::Postgres(pool, _) => sqlx::query(sql)
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .expect("statement");
    assert_eq!(n, 1, "{sql}");
}

/// A pending delivery as the head check sees it.
#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    id: DeliveryId,
    conversation_id: ConversationId,
    channel_id: ChannelId,
    seq: i64,
    head: bool,
}

/// Every pending delivery, grouped by (conversation, channel), each group in `seq` order.
async fn pending_by_pair(store: &Store) -> BTreeMap<(String, String), Vec<PendingRow>> {
    const SQL: &str = "SELECT id, conversation_id, channel_id, seq, head FROM deliveries \
         WHERE status = 'pending' ORDER BY conversation_id, channel_id, seq";
    let rows: Vec<PendingRow> = match store {
        Store::Sqlite { writer, .. } => sqlx::query_as(SQL).fetch_all(writer).await,
        Store::Postgres(pool, _) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .expect("pending rows");
    let mut pairs: BTreeMap<(String, String), Vec<PendingRow>> = BTreeMap::new();
    for row in rows {
        pairs
            .entry((row.conversation_id.to_string(), row.channel_id.to_string()))
            .or_default()
            .push(row);
    }
    pairs
}

/// The invariant: in each pair with pending deliveries, the first is the head and no
/// other is.
#[track_caller]
fn assert_heads(pairs: &BTreeMap<(String, String), Vec<PendingRow>>) {
    for (pair, rows) in pairs {
        let heads: Vec<i64> = rows.iter().filter(|r| r.head).map(|r| r.seq).collect();
        assert_eq!(heads, [rows[0].seq], "heads of {pair:?}: {rows:?}");
    }
}

async fn assert_heads_consistent(store: &Store) {
    assert_heads(&pending_by_pair(store).await);
}

/// The id of the single head of a conversation's pair, checking the invariant.
async fn head_of(store: &Store, conversation_id: ConversationId) -> DeliveryId {
    let pairs = pending_by_pair(store).await;
    assert_heads(&pairs);
    let rows: Vec<&PendingRow> = pairs
        .values()
        .flatten()
        .filter(|r| r.conversation_id == conversation_id && r.head)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].id
}

async fn a_backlog_in_one_pair_does_not_block_the_others(backend: Backend) {
    let app = queue_app(backend).await;
    let channel = webhook_channel(&app).await;
    let mut convs = Vec::new();
    for _ in 0..3 {
        convs.push(conversation(&app, channel).await);
    }
    // Interleaved, so the pairs' rows alternate in next_attempt_at order.
    for _ in 0..50 {
        for &conv in &convs {
            append(&app, conv, &[channel]).await;
        }
    }
    assert_heads_consistent(&app.store).await;

    // Ten wanted, three claimable: each pair's first delivery, in next_attempt_at order.
    let now = Timestamp::now();
    let lease = now.plus(LEASE);
    let claimed: Vec<Delivery> = app
        .store
        .claim_due(NodeId::new(), now, lease, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.delivery)
        .collect();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    assert!(claimed.iter().all(|d| d.seq == 1), "{claimed:?}");
    let pairs: HashSet<ConversationId> = claimed.iter().map(|d| d.conversation_id).collect();
    assert_eq!(pairs.len(), 3);
    assert!(
        claimed
            .windows(2)
            .all(|w| (w[0].next_attempt_at, w[0].id) < (w[1].next_attempt_at, w[1].id)),
        "{claimed:?}"
    );
    // The heads are leased and the rest wait behind them.
    assert!(claim(&app).await.0.is_empty());

    // The first pair's head is rescheduled an hour out: its 49 followers stay blocked,
    // the other pairs move on whether their head was delivered or failed.
    let by_conv = |c: ConversationId| claimed.iter().find(|d| d.conversation_id == c).unwrap();
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    record(
        &app,
        by_conv(convs[0]),
        lease,
        AttemptResult::RetryAt {
            at: later,
            error: "HTTP 503".into(),
        },
    )
    .await;
    record(&app, by_conv(convs[1]), lease, delivered()).await;
    record(&app, by_conv(convs[2]), lease, failed()).await;
    assert_heads_consistent(&app.store).await;
    let (next, lease) = claim(&app).await;
    let got: Vec<(ConversationId, i64)> = next.iter().map(|d| (d.conversation_id, d.seq)).collect();
    let want: HashSet<(ConversationId, i64)> = [(convs[1], 2), (convs[2], 2)].into();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
    // Next claimable: the leases of those two, before the first pair's retry.
    let due = app.store.next_delivery_due().await.unwrap().unwrap();
    assert!(due <= lease && due > now, "{due:?}");
}

async fn a_retried_earlier_delivery_becomes_the_head_again(backend: Backend) {
    let app = queue_app(backend).await;
    let channel = webhook_channel(&app).await;
    let conv = conversation(&app, channel).await;
    let ids: Vec<DeliveryId> = [
        append(&app, conv, &[channel]).await[0],
        append(&app, conv, &[channel]).await[0],
        append(&app, conv, &[channel]).await[0],
    ]
    .into();

    // The first fails for good; the second becomes the head and is in flight...
    let (first, lease) = claim_of(&app, conv).await;
    assert_eq!(first.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    record(&app, &first[0], lease, failed()).await;
    assert_eq!(head_of(&app.store, conv).await, ids[1]);
    let (second, second_lease) = claim_of(&app, conv).await;
    assert_eq!(second.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[1]]);

    // ...when the operator retries the first: it is the head again.
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/deliveries/{}/retry", ids[0]),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    assert_eq!(head_of(&app.store, conv).await, ids[0]);

    // The second's attempt ends in a retry: it now waits behind the first.
    record(
        &app,
        &second[0],
        second_lease,
        AttemptResult::RetryAt {
            at: Timestamp::now(),
            error: "HTTP 503".into(),
        },
    )
    .await;
    let (next, lease) = claim_of(&app, conv).await;
    assert_eq!(next.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    record(&app, &next[0], lease, delivered()).await;
    assert_eq!(head_of(&app.store, conv).await, ids[1]);

    // A channel-wide replay of two failed deliveries of another conversation, one per
    // transaction, makes the earlier of them the head, ahead of the pending third.
    let other = conversation(&app, channel).await;
    let more: Vec<DeliveryId> = [
        append(&app, other, &[channel]).await[0],
        append(&app, other, &[channel]).await[0],
        append(&app, other, &[channel]).await[0],
    ]
    .into();
    for expected in &more[..2] {
        let (got, lease) = claim_of(&app, other).await;
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [*expected]);
        record(&app, &got[0], lease, failed()).await;
    }
    assert_eq!(head_of(&app.store, other).await, more[2]);
    let waker = DeliveryWaker::default();
    assert_eq!(
        replay_failed(&app.store, &waker, app.tenant_id, channel, None, None, 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(head_of(&app.store, other).await, more[0]);
    assert_eq!(head_of(&app.store, conv).await, ids[1]);
}

async fn the_repair_fixes_heads_written_by_hand(backend: Backend) {
    const CLEAR: &str = "UPDATE deliveries SET head = FALSE WHERE id = $1";
    const SET: &str = "UPDATE deliveries SET head = TRUE WHERE id = $1";
    let app = queue_app(backend).await;
    let channel = webhook_channel(&app).await;
    let (a, b) = (
        conversation(&app, channel).await,
        conversation(&app, channel).await,
    );
    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    for _ in 0..3 {
        a_ids.push(append(&app, a, &[channel]).await[0]);
        b_ids.push(append(&app, b, &[channel]).await[0]);
    }
    assert_eq!(app.store.repair_delivery_heads().await.unwrap(), 0);

    // As an older node leaves them: a pair without a head (its insert found the pair
    // empty but knew no flag), and a pair with two.
    exec(&app.store, CLEAR, a_ids[0]).await;
    exec(&app.store, SET, b_ids[2]).await;
    let (claimed, lease) = claim(&app).await;
    assert_eq!(
        claimed.iter().map(|d| d.id).collect::<HashSet<_>>(),
        [b_ids[0], b_ids[2]].into(),
        "the damage is real"
    );
    for d in &claimed {
        app.store.release_delivery(d.id, lease).await.unwrap();
    }

    assert_eq!(app.store.repair_delivery_heads().await.unwrap(), 2);
    assert_heads_consistent(&app.store).await;
    let (claimed, _) = claim(&app).await;
    assert_eq!(
        claimed.iter().map(|d| d.id).collect::<HashSet<_>>(),
        [a_ids[0], b_ids[0]].into()
    );
    assert_eq!(app.store.repair_delivery_heads().await.unwrap(), 0);

    // The engine's periodic repair does the same on its own.
    exec(&app.store, CLEAR, b_ids[0]).await;
    exec(&app.store, SET, b_ids[1]).await;
    let stop = CancellationToken::new();
    let repair = tokio::spawn(run_head_repair(
        app.store.clone(),
        DeliveryWaker::default(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    eventually(Duration::from_secs(10), "the repair", || async {
        let pairs = pending_by_pair(&app.store).await;
        let heads: Vec<DeliveryId> = pairs
            .values()
            .flatten()
            .filter(|r| r.conversation_id == b && r.head)
            .map(|r| r.id)
            .collect();
        (heads == [b_ids[0]]).then_some(())
    })
    .await;
    stop.cancel();
    repair.await.unwrap();
    assert_heads_consistent(&app.store).await;
}

async fn a_starting_node_marks_what_an_older_node_left_unmarked(backend: Backend) {
    let app = queue_app(backend).await;
    let sink = Sink::start().await;
    let ch = app
        .create_channel("webhook", json!({"url": sink.url}))
        .await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    for n in 1..=3 {
        let resp = app
            .post_activity(s(&conv, "id"), json!({"text": format!("m{n}")}))
            .await;
        expect_data(resp, StatusCode::CREATED).await;
    }
    // As a node of the previous release inserts them: no row is marked.
    let head = head_of(&app.store, s(&conv, "id").parse().unwrap()).await;
    exec(
        &app.store,
        "UPDATE deliveries SET head = FALSE WHERE id = $1",
        head,
    )
    .await;

    // A node with its workers on repairs the flags as it starts, then delivers in order
    // (long before the next periodic check, a minute later).
    let node = Node::start(&app.database_url);
    node.ready(&app.http).await;
    let got = sink.wait_for(3, Duration::from_secs(20)).await;
    let texts: Vec<String> = got
        .iter()
        .map(|r| s(&r.json(), "text").to_owned())
        .collect();
    assert_eq!(texts, ["m1", "m2", "m3"]);
}

async fn concurrent_appends_and_completions_leave_no_pair_stuck(backend: Backend) {
    const ROUNDS: i64 = 40;
    const APPENDS: i64 = 4;
    let app = Arc::new(queue_app(backend).await);
    let channels = Arc::new([webhook_channel(&app).await, webhook_channel(&app).await]);
    let conv = conversation(&app, channels[0]).await;
    let mut claims: Vec<(ChannelId, i64)> = Vec::new();

    // Claims the next delivery of every pair: one each, or a pair is stuck.
    async fn claim_heads(
        app: &TestApp,
        pairs: usize,
        claims: &mut Vec<(ChannelId, i64)>,
    ) -> (Vec<Delivery>, Timestamp) {
        let (heads, lease) = claim(app).await;
        if heads.len() != pairs {
            panic!(
                "claimed {heads:?}, pending {:?}",
                pending_by_pair(&app.store).await
            );
        }
        claims.extend(heads.iter().map(|d| (d.channel_id, d.seq)));
        (heads, lease)
    }

    append(&app, conv, &channels[..]).await;
    let mut per_pair = 1;
    for _ in 0..ROUNDS {
        // Deliver until each pair holds only its head, as workers that keep up do...
        for _ in 1..per_pair {
            let (heads, lease) = claim_heads(&app, channels.len(), &mut claims).await;
            for d in &heads {
                record(&app, d, lease, delivered()).await;
            }
        }
        // ...then complete the heads while several appends to the conversation run:
        // each append asks whether its pair still has a pending delivery just as the
        // completion takes the last one away.
        let (heads, lease) = claim_heads(&app, channels.len(), &mut claims).await;
        let mut tasks = tokio::task::JoinSet::new();
        for d in heads {
            let app = app.clone();
            tasks.spawn(async move { record(&app, &d, lease, delivered()).await });
        }
        for _ in 0..APPENDS {
            let (app, channels) = (app.clone(), channels.clone());
            tasks.spawn(async move {
                append(&app, conv, &channels[..]).await;
            });
        }
        tasks.join_all().await;
        per_pair = APPENDS;
    }
    for _ in 0..per_pair {
        let (heads, lease) = claim_heads(&app, channels.len(), &mut claims).await;
        for d in &heads {
            record(&app, d, lease, delivered()).await;
        }
    }

    assert!(pending_by_pair(&app.store).await.is_empty());
    let activities = 1 + ROUNDS * APPENDS;
    assert_eq!(
        app.store.count_deliveries_by_status().await.unwrap(),
        [("delivered".to_owned(), activities * channels.len() as i64)]
    );
    // Each delivery claimed once, and per channel in seq order.
    for &channel in channels.iter() {
        let seqs: Vec<i64> = claims
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=activities).collect::<Vec<_>>(),
            "channel {channel}"
        );
    }
}
