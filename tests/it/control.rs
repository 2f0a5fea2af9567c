//! Per-channel delivery control end to end: the circuit breaker and channel health,
//! pause and resume, and the `ordering` setting, on a real server delivering to
//! recording sinks.
//!
//! "Nothing was attempted" is checked without waiting for time to pass: a sentinel is
//! posted to another, healthy channel after the held delivery became due, and once it
//! is delivered the held one is checked for a lease or an attempt. Claims take due
//! rows in due order, so a claimable held row would have been claimed with the
//! sentinel or before it.

use std::time::Duration;

use converger::domain::{ChannelId, DeliveryId, Timestamp};
use converger::store::{AppendOutcome, Store, test_support};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, expect_error, s};

both_backends!(
    the_breaker_opens_holds_probes_and_closes,
    a_channel_failing_too_long_is_disabled_until_resumed,
    a_paused_channel_keeps_everything_in_order_until_resumed,
    ordering_none_lets_a_later_delivery_pass_a_failing_one,
    changing_the_ordering_keeps_one_head_per_conversation,
    held_rows_written_in_a_race_are_held_again,
    the_next_head_of_a_paused_channel_is_held_too,
    health_is_reported_per_channel_and_tenant,
    a_new_config_or_a_retry_probes_an_open_breaker_at_once,
);

const WAIT: Duration = Duration::from_secs(30);

/// An hour: a cool-down the tests end by hand, so none ends by itself mid-test.
const LONG_COOLDOWN: u64 = 3600;

fn path(channel: &Value, action: &str) -> String {
    format!("/api/v1/channels/{}/{action}", s(channel, "id"))
}

async fn health(app: &TestApp, channel: &Value) -> Value {
    let resp = app
        .req(Method::GET, &path(channel, "health"))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await
}

async fn act(app: &TestApp, channel: &Value, action: &str) -> Value {
    let resp = app
        .req(Method::POST, &path(channel, action))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await
}

/// A webhook channel to `sink` with extra config, and a conversation on it.
async fn channel_to(app: &TestApp, sink: &Sink, config: Value) -> (Value, Value) {
    let mut full = json!({"url": sink.url});
    full.as_object_mut()
        .unwrap()
        .extend(config.as_object().unwrap().clone());
    let channel = app.create_channel("webhook", full).await;
    let conv = app.create_conversation(s(&channel, "id"), None).await;
    (channel, conv)
}

async fn post(app: &TestApp, conv: &Value, text: &str) -> Value {
    expect_data(
        app.post_activity(s(conv, "id"), json!({"text": text}))
            .await,
        StatusCode::CREATED,
    )
    .await
}

/// The one delivery of an activity, read past the API (with its lease).
async fn delivery_of(app: &TestApp, activity: &Value) -> converger::domain::Delivery {
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/activities/{}/deliveries", s(activity, "id")),
        )
        .send()
        .await
        .unwrap();
    let list = expect_data(resp, StatusCode::OK).await;
    let id: DeliveryId = s(&list[0], "id").parse().unwrap();
    app.store.get_delivery_unscoped(id).await.unwrap()
}

/// Waits until the activity's delivery is delivered.
async fn delivered(app: &TestApp, activity: &Value) -> converger::domain::Delivery {
    eventually(WAIT, "the delivery", || async {
        let d = delivery_of(app, activity).await;
        (d.status.as_str() == "delivered").then_some(d)
    })
    .await
}

/// Asserts that a pending delivery has never been claimed since it was last recorded:
/// no lease, and `attempts` unchanged.
#[track_caller]
fn untouched(d: &converger::domain::Delivery, attempts: i32) {
    assert_eq!(d.status.as_str(), "pending", "{d:?}");
    assert_eq!(d.attempts, attempts, "{d:?}");
    assert_eq!(d.locked_until, None, "{d:?}");
}

/// A healthy channel whose deliveries serve as the barrier described above.
struct Barrier {
    sink: Sink,
    conv: Value,
}

impl Barrier {
    async fn new(app: &TestApp) -> Self {
        let sink = Sink::start().await;
        let (_, conv) = channel_to(app, &sink, json!({})).await;
        Self { sink, conv }
    }

    /// Returns once a delivery due after everything due now has been delivered.
    async fn pass(&self, app: &TestApp) {
        let sentinel = post(app, &self.conv, "sentinel").await;
        delivered(app, &sentinel).await;
        assert!(!self.sink.received().is_empty());
    }
}

/// Waits until a delivery's next attempt is due, so a barrier after it proves it held.
async fn due(app: &TestApp, activity: &Value) {
    let d = delivery_of(app, activity).await;
    let at = d.next_attempt_at.expect("pending");
    eventually(WAIT, "the retry time", || async {
        (Timestamp::now() > at).then_some(())
    })
    .await;
}

/// Runs one statement with a channel id and a time bound, past the store's API.
async fn exec(store: &Store, sql: &'static str, channel: &Value, at: Timestamp) {
    let id: ChannelId = s(channel, "id").parse().unwrap();
    let n = match store {
        Store::Sqlite { writer, .. } => sqlx::query(sql)
            .bind(id)
            .bind(at)
            .execute(writer)
            .await
            .map(|r| r.rows_affected()),
        Store::Postgres(pool, _) => sqlx::query(sql)
            .bind(id)
            .bind(at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .expect("statement");
    assert_eq!(n, 1, "{sql}");
}

/// Ends an open breaker's cool-down now, as the clock would an hour later.
async fn end_cooldown(app: &TestApp, channel: &Value) {
    exec(
        &app.store,
        "UPDATE channel_health SET open_until = $2 WHERE channel_id = $1",
        channel,
        Timestamp::now(),
    )
    .await;
}

async fn the_breaker_opens_holds_probes_and_closes(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.delivery_backoff_scale = 0.0001;
        c.breaker_failures = 3;
        c.breaker_cooldown_secs = LONG_COOLDOWN;
        c.breaker_max_cooldown_secs = 4 * LONG_COOLDOWN;
    })
    .await;
    let sink = Sink::start().await;
    sink.always(Reply::status(500).body("down"));
    let barrier = Barrier::new(&app).await;
    let (channel, conv) = channel_to(&app, &sink, json!({})).await;
    let other_conv = app.create_conversation(s(&channel, "id"), None).await;

    // Three failures in a row open the breaker.
    let first = post(&app, &conv, "first").await;
    let opened = eventually(WAIT, "the breaker to open", || async {
        let h = health(&app, &channel).await;
        (h["state"] == "open").then_some(h)
    })
    .await;
    assert_eq!(sink.received().len(), 3);
    assert_eq!(opened["breaker"], "open");
    assert_eq!(opened["consecutive_failures"], 3);
    assert_eq!(opened["failure_threshold"], 3);
    assert!(s(&opened, "last_error").contains("500"), "{opened}");
    assert!(opened["last_failure_at"].is_string());
    assert_eq!(opened["last_success_at"], Value::Null);
    assert_eq!(opened["recent"]["attempts"], 3);
    assert_eq!(opened["recent"]["failures"], 3);
    assert_eq!(opened["recent"]["failure_rate"], 1.0);
    let open_until: chrono::DateTime<chrono::Utc> = s(&opened, "open_until").parse().unwrap();
    assert!(open_until > chrono::Utc::now() + chrono::Duration::minutes(50));

    // During the cool-down nothing of the channel is attempted, neither the failing
    // delivery once its retry is due nor a new one; their attempts are not used up.
    let second = post(&app, &other_conv, "second").await;
    due(&app, &first).await;
    barrier.pass(&app).await;
    untouched(&delivery_of(&app, &first).await, 3);
    untouched(&delivery_of(&app, &second).await, 0);
    assert_eq!(sink.received().len(), 3);

    // At the end of the cool-down one probe goes through; its failure reopens the
    // breaker for twice as long.
    end_cooldown(&app, &channel).await;
    sink.wait_for(4, WAIT).await;
    let reopened = eventually(WAIT, "the breaker to reopen", || async {
        let h = health(&app, &channel).await;
        (h["consecutive_failures"] == 4).then_some(h)
    })
    .await;
    assert_eq!(reopened["state"], "open");
    assert_eq!(reopened["breaker"], "open");
    let reopen_until: chrono::DateTime<chrono::Utc> = s(&reopened, "open_until").parse().unwrap();
    assert!(reopen_until > chrono::Utc::now() + chrono::Duration::minutes(110));
    due(&app, &first).await;
    due(&app, &second).await;
    barrier.pass(&app).await;
    assert_eq!(sink.received().len(), 4, "one probe only");
    let (a, b) = (
        delivery_of(&app, &first).await,
        delivery_of(&app, &second).await,
    );
    assert_eq!(a.attempts + b.attempts, 4);
    for d in [&a, &b] {
        untouched(d, d.attempts);
    }

    // A probe that succeeds closes the breaker, and what waited is delivered.
    sink.always(Reply::status(200));
    end_cooldown(&app, &channel).await;
    let (a, b) = (
        delivered(&app, &first).await,
        delivered(&app, &second).await,
    );
    assert_eq!(a.attempts + b.attempts, 6);
    assert_eq!(sink.received().len(), 6);
    // The channel's health is written just after each outcome.
    let closed = eventually(WAIT, "the last success to count", || async {
        let h = health(&app, &channel).await;
        (h["recent"]["attempts"] == 6).then_some(h)
    })
    .await;
    assert_eq!(closed["state"], "healthy");
    assert_eq!(closed["breaker"], "closed");
    assert_eq!(closed["consecutive_failures"], 0);
    assert_eq!(closed["open_until"], Value::Null);
    assert!(closed["last_success_at"].is_string());
    assert_eq!(closed["recent"]["attempts"], 6);
    assert_eq!(closed["recent"]["failures"], 4);
}

async fn a_channel_failing_too_long_is_disabled_until_resumed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.delivery_backoff_scale = 0.0001;
        c.breaker_failures = 2;
        c.breaker_cooldown_secs = LONG_COOLDOWN;
        c.breaker_disable_after_secs = 1000;
    })
    .await;
    let sink = Sink::start().await;
    sink.always(Reply::status(503));
    let barrier = Barrier::new(&app).await;
    let (channel, conv) = channel_to(&app, &sink, json!({})).await;
    let message = post(&app, &conv, "never arrives").await;
    eventually(WAIT, "the breaker to open", || async {
        (health(&app, &channel).await["state"] == "open").then_some(())
    })
    .await;

    // Failing for longer than the limit, the probe's failure pauses the channel.
    exec(
        &app.store,
        "UPDATE channel_health SET failing_since = $2 WHERE channel_id = $1",
        &channel,
        Timestamp::now().minus(Duration::from_secs(2000)),
    )
    .await;
    end_cooldown(&app, &channel).await;
    let disabled = eventually(WAIT, "the channel to be disabled", || async {
        let h = health(&app, &channel).await;
        (h["state"] == "paused").then_some(h)
    })
    .await;
    assert_eq!(disabled["pause_reason"], "failing");
    assert_eq!(disabled["breaker"], "closed");
    assert_eq!(disabled["consecutive_failures"], 3);
    assert!(disabled["paused_at"].is_string());
    assert_eq!(sink.received().len(), 3);
    // It stays so: no probe, nothing attempted.
    due(&app, &message).await;
    barrier.pass(&app).await;
    untouched(&delivery_of(&app, &message).await, 3);
    assert_eq!(sink.received().len(), 3);

    // Resuming is the way back: due at once, delivered, healthy again.
    sink.always(Reply::status(200));
    let resumed = act(&app, &channel, "resume").await;
    assert_eq!(resumed["state"], "healthy");
    assert_eq!(resumed["pause_reason"], Value::Null);
    assert_eq!(resumed["consecutive_failures"], 0);
    let d = delivered(&app, &message).await;
    assert_eq!(d.attempts, 4);
    assert_eq!(health(&app, &channel).await["state"], "healthy");
}

async fn a_paused_channel_keeps_everything_in_order_until_resumed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    let barrier = Barrier::new(&app).await;
    let (channel, conv) = channel_to(&app, &sink, json!({})).await;

    let paused = act(&app, &channel, "pause").await;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["pause_reason"], "operator");
    let paused_at = paused["paused_at"].clone();
    assert!(paused_at.is_string());
    let mut activities = Vec::new();
    for i in 0..5 {
        activities.push(post(&app, &conv, &format!("m{i}")).await);
    }
    // Pausing again changes nothing.
    assert_eq!(act(&app, &channel, "pause").await["paused_at"], paused_at);
    barrier.pass(&app).await;
    for activity in &activities {
        untouched(&delivery_of(&app, activity).await, 0);
    }
    assert!(sink.received().is_empty());
    let depth = app.store.queue_depth(Timestamp::now()).await.unwrap();
    assert_eq!((depth.pending_held, depth.pending_due), (5, 0));

    let resumed = act(&app, &channel, "resume").await;
    assert_eq!(resumed["state"], "healthy");
    assert_eq!(resumed["paused_at"], Value::Null);
    let got = sink.wait_for(5, WAIT).await;
    let texts: Vec<String> = got.iter().map(|r| r.json()["text"].to_string()).collect();
    assert_eq!(texts, ["\"m0\"", "\"m1\"", "\"m2\"", "\"m3\"", "\"m4\""]);
    for activity in &activities {
        assert_eq!(delivered(&app, activity).await.attempts, 1);
    }
    // Resumed, new activities go out as before.
    let after = post(&app, &conv, "after").await;
    delivered(&app, &after).await;
    assert_eq!(sink.received().len(), 6);
}

async fn ordering_none_lets_a_later_delivery_pass_a_failing_one(backend: Backend) {
    let app = TestApp::start(backend).await;
    let barrier = Barrier::new(&app).await;
    let unordered_sink = Sink::start().await;
    let ordered_sink = Sink::start().await;
    for sink in [&unordered_sink, &ordered_sink] {
        // Retried in an hour: the failing deliveries stay pending throughout.
        sink.script([Reply::status(500).header("retry-after", "3600")]);
    }
    let (unordered, u_conv) = channel_to(&app, &unordered_sink, json!({"ordering": "none"})).await;
    assert_eq!(unordered["config"]["ordering"], "none");
    let (ordered, o_conv) = channel_to(&app, &ordered_sink, json!({})).await;
    assert_eq!(ordered["config"]["ordering"], "conversation");

    // `none`: the second goes out while the first waits for its retry.
    let u_first = post(&app, &u_conv, "u1").await;
    unordered_sink.wait_for(1, WAIT).await;
    let u_second = post(&app, &u_conv, "u2").await;
    delivered(&app, &u_second).await;
    untouched(&delivery_of(&app, &u_first).await, 1);

    // `conversation`: the second waits behind the first.
    let o_first = post(&app, &o_conv, "o1").await;
    ordered_sink.wait_for(1, WAIT).await;
    let o_second = post(&app, &o_conv, "o2").await;
    barrier.pass(&app).await;
    untouched(&delivery_of(&app, &o_second).await, 0);
    assert_eq!(ordered_sink.received().len(), 1);

    // Switched to `none` with the two pending, the second goes out at once.
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&ordered, "id")),
        )
        .json(&json!({"config": {"ordering": "none"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(resp, StatusCode::OK).await["config"]["ordering"],
        "none"
    );
    delivered(&app, &o_second).await;
    untouched(&delivery_of(&app, &o_first).await, 1);

    // Switched back to `conversation`, a new delivery waits behind the failing one.
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&unordered, "id")),
        )
        .json(&json!({"config": {"ordering": "conversation"}}))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    let u_third = post(&app, &u_conv, "u3").await;
    barrier.pass(&app).await;
    untouched(&delivery_of(&app, &u_third).await, 0);
    assert_eq!(unordered_sink.received().len(), 2);

    // Any other value is refused, naming the field.
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&ordered, "id")),
        )
        .json(&json!({"config": {"ordering": "fifo"}}))
        .send()
        .await
        .unwrap();
    let error = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(error["details"]["fields"][0]["field"], "config.ordering");
}

/// Pending rows of a channel: (conversation, seq, head), in that order.
async fn heads_of(store: &Store, channel: ChannelId) -> Vec<(String, i64, bool)> {
    const SQL: &str = "SELECT conversation_id, seq, head FROM deliveries \
         WHERE channel_id = $1 AND status = 'pending' ORDER BY conversation_id, seq";
    let rows: Vec<(converger::domain::ConversationId, i64, bool)> = match store {
        Store::Sqlite { writer, .. } => sqlx::query_as(SQL).bind(channel).fetch_all(writer).await,
        Store::Postgres(pool, _) => sqlx::query_as(SQL).bind(channel).fetch_all(pool).await,
    }
    .expect("pending rows");
    rows.into_iter()
        .map(|(c, seq, head)| (c.to_string(), seq, head))
        .collect()
}

/// Claims every due head and gives the leases back; returns how many there were.
async fn claimable(app: &TestApp) -> usize {
    let now = Timestamp::now();
    let lease = now.plus(Duration::from_secs(60));
    let claimed = app
        .store
        .claim_due(converger::domain::NodeId::new(), now, lease, 100)
        .await
        .expect("claim");
    for c in &claimed {
        app.store
            .release_delivery(c.delivery.id, lease)
            .await
            .unwrap();
    }
    claimed.len()
}

async fn append(app: &TestApp, conv: &Value, channel: ChannelId) {
    let append = app.append_of(s(conv, "id").parse().unwrap(), "hi", None, vec![channel]);
    let outcome = test_support::append_activity(&app.store, &append)
        .await
        .expect("append");
    assert!(matches!(outcome, AppendOutcome::Created { .. }));
}

async fn set_ordering(app: &TestApp, channel: &Value, ordering: &str) {
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(channel, "id")),
        )
        .json(&json!({"config": {"ordering": ordering}}))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
}

async fn changing_the_ordering_keeps_one_head_per_conversation(backend: Backend) {
    // Workers off: only the test claims.
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let id: ChannelId = s(&channel, "id").parse().unwrap();
    let convs = [
        app.create_conversation(s(&channel, "id"), None).await,
        app.create_conversation(s(&channel, "id"), None).await,
    ];
    for conv in &convs {
        for _ in 0..3 {
            append(&app, conv, id).await;
        }
    }
    let heads = |rows: &[(String, i64, bool)]| rows.iter().filter(|r| r.2).count();
    assert_eq!(heads(&heads_of(&app.store, id).await), 2);
    assert_eq!(claimable(&app).await, 2);

    set_ordering(&app, &channel, "none").await;
    let rows = heads_of(&app.store, id).await;
    assert!(rows.iter().all(|r| r.2), "{rows:?}");
    assert_eq!(claimable(&app).await, 6);
    // An append to a channel without order is a head at once.
    append(&app, &convs[0], id).await;
    assert_eq!(claimable(&app).await, 7);
    assert_eq!(app.store.repair_delivery_heads().await.unwrap(), 0);

    set_ordering(&app, &channel, "conversation").await;
    let rows = heads_of(&app.store, id).await;
    for conv in &convs {
        let mine: Vec<bool> = rows
            .iter()
            .filter(|r| r.0 == s(conv, "id"))
            .map(|r| r.2)
            .collect();
        assert!(mine[0], "{rows:?}");
        assert!(mine[1..].iter().all(|head| !head), "{rows:?}");
    }
    assert_eq!(claimable(&app).await, 2);
    assert_eq!(app.store.repair_delivery_heads().await.unwrap(), 0);
    // Setting what is already set moves nothing.
    set_ordering(&app, &channel, "conversation").await;
    assert_eq!(heads_of(&app.store, id).await, rows);
}

async fn held_rows_written_in_a_race_are_held_again(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let id: ChannelId = s(&channel, "id").parse().unwrap();
    let conv = app.create_conversation(s(&channel, "id"), None).await;
    act(&app, &channel, "pause").await;
    append(&app, &conv, id).await;
    assert_eq!(claimable(&app).await, 0, "written held");

    // As an append racing the pause on PostgreSQL would have written it.
    exec(
        &app.store,
        "UPDATE deliveries SET held = FALSE WHERE channel_id = $1 AND next_attempt_at <= $2",
        &channel,
        Timestamp::now(),
    )
    .await;
    if backend == Backend::Postgres {
        // The claim reads the channel's state and hands the row back to be held.
        let now = Timestamp::now();
        let lease = now.plus(Duration::from_secs(60));
        let claimed = app
            .store
            .claim_due(converger::domain::NodeId::new(), now, lease, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(claimed[0].held);
        assert!(
            app.store
                .hold_claimed(claimed[0].delivery.id, lease)
                .await
                .unwrap()
        );
        assert_eq!(claimable(&app).await, 0);
        exec(
            &app.store,
            "UPDATE deliveries SET held = FALSE WHERE channel_id = $1 AND next_attempt_at <= $2",
            &channel,
            Timestamp::now(),
        )
        .await;
    }
    // The periodic repair holds it too.
    assert_eq!(app.store.repair_held_deliveries().await.unwrap(), 1);
    assert_eq!(claimable(&app).await, 0);
    assert_eq!(app.store.repair_held_deliveries().await.unwrap(), 0);

    // And releases a row held after its channel resumed.
    act(&app, &channel, "resume").await;
    assert_eq!(claimable(&app).await, 1);
    exec(
        &app.store,
        "UPDATE deliveries SET held = TRUE WHERE channel_id = $1 AND next_attempt_at <= $2",
        &channel,
        Timestamp::now(),
    )
    .await;
    assert_eq!(claimable(&app).await, 0);
    assert_eq!(app.store.repair_held_deliveries().await.unwrap(), 1);
    assert_eq!(claimable(&app).await, 1);
}

async fn the_next_head_of_a_paused_channel_is_held_too(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let id: ChannelId = s(&channel, "id").parse().unwrap();
    let conv = app.create_conversation(s(&channel, "id"), None).await;
    for _ in 0..3 {
        append(&app, &conv, id).await;
    }
    // The first is in flight as the channel pauses, and delivered after.
    let now = Timestamp::now();
    let lease = now.plus(Duration::from_secs(60));
    let claimed = app
        .store
        .claim_due(converger::domain::NodeId::new(), now, lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    act(&app, &channel, "pause").await;
    let completion = converger::store::Completion {
        delivery: claimed[0].delivery.clone(),
        lease,
        now: Timestamp::now(),
        result: converger::store::AttemptResult::Delivered { external_id: None },
        log: converger::store::AttemptLog {
            started_at: Timestamp::now(),
            duration_ms: 1,
            http_status: Some(200),
            response_body: None,
            node: "test".into(),
        },
    };
    assert_eq!(
        app.store.record_attempts(&[completion]).await.unwrap(),
        [true]
    );
    // The second, now first in line, waits with the channel.
    assert_eq!(claimable(&app).await, 0);
    assert_eq!(app.store.repair_held_deliveries().await.unwrap(), 0);
    act(&app, &channel, "resume").await;
    let now = Timestamp::now();
    let claimed = app
        .store
        .claim_due(
            converger::domain::NodeId::new(),
            now,
            now.plus(Duration::from_secs(60)),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].delivery.seq, 2);
}

async fn health_is_reported_per_channel_and_tenant(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    // The failed delivery is retried only in an hour.
    sink.script([Reply::status(502)
        .header("retry-after", "3600")
        .body("bad gateway")]);
    let (channel, conv) = channel_to(&app, &sink, json!({})).await;

    let fresh = health(&app, &channel).await;
    assert_eq!(fresh["channel_id"], channel["id"]);
    assert_eq!(fresh["state"], "healthy");
    assert_eq!(fresh["breaker"], "closed");
    assert_eq!(fresh["consecutive_failures"], 0);
    assert_eq!(fresh["failure_threshold"], 5);
    assert_eq!(fresh["last_error"], Value::Null);
    assert_eq!(fresh["last_success_at"], Value::Null);
    assert_eq!(fresh["recent"]["attempts"], 0);
    assert_eq!(fresh["recent"]["failure_rate"], Value::Null);

    // One failure: degraded, with the error.
    post(&app, &conv, "hello").await;
    let degraded = eventually(WAIT, "the failure to count", || async {
        let h = health(&app, &channel).await;
        (h["consecutive_failures"] == 1).then_some(h)
    })
    .await;
    assert_eq!(degraded["state"], "degraded");
    assert_eq!(degraded["breaker"], "closed");
    assert!(s(&degraded, "last_error").contains("502"), "{degraded}");
    assert!(degraded["failing_since"].is_string());
    assert_eq!(degraded["recent"]["failure_rate"], 1.0);

    // A success, in another conversation: healthy again.
    let other = app.create_conversation(s(&channel, "id"), None).await;
    let message = post(&app, &other, "again").await;
    assert_eq!(delivered(&app, &message).await.attempts, 1);
    let healthy = eventually(WAIT, "the success to count", || async {
        let h = health(&app, &channel).await;
        (h["recent"]["attempts"] == 2).then_some(h)
    })
    .await;
    assert_eq!(healthy["state"], "healthy");
    assert_eq!(healthy["consecutive_failures"], 0);
    assert_eq!(healthy["failing_since"], Value::Null);
    assert_eq!(healthy["recent"]["failure_rate"], 0.5);
    assert!(healthy["last_success_at"].is_string());
    assert!(
        s(&healthy, "last_error").contains("502"),
        "kept for the record"
    );

    // Another tenant cannot see or change it: 404, as for a channel that does not exist.
    let (_, other_key) = app.create_tenant("other").await;
    for (method, action) in [
        (Method::GET, "health"),
        (Method::POST, "pause"),
        (Method::POST, "resume"),
    ] {
        let resp = app
            .with_key(&other_key, method.clone(), &path(&channel, action))
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        let missing = json!({"id": uuid::Uuid::now_v7().to_string()});
        let resp = app
            .req(method.clone(), &path(&missing, action))
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = app
            .req(method.clone(), &format!("/api/v1/channels/nope/{action}"))
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_id").await;
        let resp = app
            .anon(method, &path(&channel, action))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(health(&app, &channel).await["state"], "healthy");
}

/// An operator who fixed a receiver does not wait out the breaker's cool-down: a
/// config change, or a retry of a waiting delivery, lets the probe through at once.
async fn a_new_config_or_a_retry_probes_an_open_breaker_at_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.delivery_backoff_scale = 0.0001;
        c.breaker_failures = 2;
        c.breaker_cooldown_secs = LONG_COOLDOWN;
        c.breaker_max_cooldown_secs = 4 * LONG_COOLDOWN;
    })
    .await;
    let broken = Sink::start().await;
    broken.always(Reply::status(500));
    let (channel, conv) = channel_to(&app, &broken, json!({})).await;
    let open = || async {
        eventually(WAIT, "the breaker to open", || async {
            (health(&app, &channel).await["state"] == "open").then_some(())
        })
        .await
    };

    // The receiver moves; the tenant points the channel at it.
    let first = post(&app, &conv, "first").await;
    open().await;
    let fixed = Sink::start().await;
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&channel, "id")),
        )
        .json(&json!({"config": {"url": fixed.url}}))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    let d = delivered(&app, &first).await;
    assert_eq!(d.attempts, 3, "two failures, then the probe to the new URL");
    assert_eq!(fixed.received().len(), 1);
    eventually(WAIT, "the probe's success to close the breaker", || async {
        (health(&app, &channel).await["state"] == "healthy").then_some(())
    })
    .await;

    // It breaks again; once it is fixed, retrying the waiting delivery probes now.
    fixed.always(Reply::status(500));
    let second = post(&app, &conv, "second").await;
    open().await;
    fixed.always(Reply::status(200));
    let waiting = delivery_of(&app, &second).await;
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/deliveries/{}/retry", waiting.id),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    let d = delivered(&app, &second).await;
    assert_eq!(d.attempts, 3);
    eventually(WAIT, "the breaker to close again", || async {
        (health(&app, &channel).await["breaker"] == "closed").then_some(())
    })
    .await;
}
