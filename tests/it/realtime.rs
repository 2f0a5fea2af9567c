//! The Phoenix Channels WebSocket endpoint, driven over real sockets against real
//! servers: one node on each backend, then several nodes sharing one PostgreSQL
//! database.

use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use converger::domain::TenantStatus;

use crate::common::longpoll::{LongPoll, request};
use crate::common::node::Node;
use crate::common::socket::{Socket, refusal, refused, seqs, topic, ws_url};
use crate::common::{Backend, JWT_SECRET, TestApp, both_backends, eventually, postgres_only};

both_backends!(
    bad_credentials_and_versions_get_403_before_upgrade,
    heartbeat_is_answered_with_null_join_ref,
    joins_are_authorised_and_topics_matched,
    rest_posts_reach_joined_sockets_with_their_join_ref,
    pushed_activities_are_ingested_as_the_token_user_once,
    rejoin_replays_exactly_what_was_missed,
    typing_reaches_the_others_only,
    v1_object_frames,
    token_in_the_subprotocol_header,
    limits_idle_timeout_and_shutdown_close_codes,
    concurrent_writers_and_joiners_see_gap_free_sequences,
    refused_connects_say_why,
    longpoll_refusals_and_bad_requests_answer_json_codes,
    longpoll_join_push_receive_and_resume,
    longpoll_sessions_expire_and_stay_within_their_tenant,
);

async fn bad_credentials_and_versions_get_403_before_upgrade(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;

    assert_eq!(refused(server.ws()).await, 403);
    assert_eq!(refused(server.url("not-a-jwt", Some("2.0.0"))).await, 403);
    let mut forged = token.clone();
    forged.pop();
    assert_eq!(refused(server.url(&forged, Some("2.0.0"))).await, 403);
    assert_eq!(refused(server.url(&token, Some("3.0.0"))).await, 403);
    // A channel token is not a client token.
    let channel = server.websocket_channel().await;
    let channel_token = channel["token"].as_str().unwrap();
    assert_eq!(refused(server.url(channel_token, Some("2.0.0"))).await, 403);

    server
        .store
        .set_tenant_status(server.tenant_id, TenantStatus::Inactive)
        .await
        .unwrap();
    assert_eq!(refused(server.url(&token, Some("2.0.0"))).await, 403);
    server
        .store
        .set_tenant_status(server.tenant_id, TenantStatus::Active)
        .await
        .unwrap();
    Socket::connect(&server.url(&token, Some("2.0.0"))).await;
    server.stop().await;
}

async fn heartbeat_is_answered_with_null_join_ref(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let mut socket = server.socket(&conversation, "alice").await;
    socket
        .send(json!([null, "12", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(
        socket.recv_text().await,
        r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    server.stop().await;
}

async fn joins_are_authorised_and_topics_matched(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let other = server.conversation().await;
    let mut socket = server.socket(&conversation, "alice").await;

    let reply = socket.join(&topic(&conversation), "1", json!({})).await;
    assert_eq!(
        reply,
        json!(["1", "1", topic(&conversation), "phx_reply", {"status": "ok", "response": {"last_seq": 0}}])
    );

    let reply = socket.join(&topic(&other), "2", json!({})).await;
    assert_eq!(reply[0], "2");
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(reply[4]["response"]["reason"], "unauthorized");

    socket
        .send(json!(["3", "3", "room:lobby", "phx_join", {}]))
        .await;
    assert_eq!(
        socket.recv_text().await,
        r#"[null,"3","room:lobby","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
    // A message to a topic not joined.
    socket
        .send(json!([null, "4", topic(&other), "new_activity", {"text": "x"}]))
        .await;
    let reply = socket.recv().await;
    assert_eq!(reply[0], Value::Null);
    assert_eq!(reply[4]["response"]["reason"], "unmatched topic");

    // A duplicate join closes the old instance first.
    let reply = socket.join(&topic(&conversation), "5", json!({})).await;
    assert_eq!(
        reply,
        json!(["1", "1", topic(&conversation), "phx_close", {}])
    );
    let reply = socket.recv().await;
    assert_eq!(
        (
            reply[0].clone(),
            reply[3].clone(),
            reply[4]["status"].clone()
        ),
        (json!("5"), json!("phx_reply"), json!("ok"))
    );

    // A push with the stale join ref is dropped without a reply.
    socket
        .send(json!(["1", "6", topic(&conversation), "new_activity", {"text": "stale"}]))
        .await;
    assert!(socket.drain().await.is_empty());
    assert!(server.activities(&conversation).await.is_empty());

    // Leave: ok reply, then phx_close with the join ref as both refs.
    socket
        .send(json!(["5", "7", topic(&conversation), "phx_leave", {}]))
        .await;
    assert_eq!(
        socket.recv().await,
        json!(["5", "7", topic(&conversation), "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        socket.recv().await,
        json!(["5", "5", topic(&conversation), "phx_close", {}])
    );
    server.post(&conversation, "after leave").await;
    assert!(socket.drain().await.is_empty());

    // A closed conversation cannot be joined.
    let closed = server
        .req(
            Method::POST,
            &format!("/api/v1/conversations/{conversation}/close"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), StatusCode::OK);
    let reply = socket.join(&topic(&conversation), "8", json!({})).await;
    assert_eq!(reply[4]["response"]["reason"], "conversation_closed");
    server.stop().await;
}

async fn rest_posts_reach_joined_sockets_with_their_join_ref(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let mut socket = server.socket(&conversation, "alice").await;
    socket.join(&topic(&conversation), "1", json!({})).await;
    let posted = server.post(&conversation, "hello").await;
    let push = socket.recv().await;
    assert_eq!(
        push,
        json!(["1", null, topic(&conversation), "new_activity", posted])
    );
    server.stop().await;
}

async fn pushed_activities_are_ingested_as_the_token_user_once(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let mut socket = server.socket(&conversation, "alice").await;
    socket.join(&topic(&conversation), "1", json!({})).await;

    let body = json!({"text": "hi", "idempotency_key": "k1", "metadata": {"a": 1}});
    socket
        .send(json!([
            "1",
            "2",
            topic(&conversation),
            "new_activity",
            body
        ]))
        .await;
    let mut frames = [socket.recv().await, socket.recv().await];
    frames.sort_by_key(|f| f[3].as_str().unwrap().to_owned());
    let (push, reply) = (&frames[0], &frames[1]);
    assert_eq!(reply[1], "2");
    assert_eq!(reply[4]["status"], "ok");
    let id = reply[4]["response"]["id"].clone();
    assert_eq!(reply[4]["response"]["seq"], 1);
    assert_eq!(push[4]["id"], id);
    assert_eq!(push[4]["sender"], "alice");
    assert_eq!(push[4]["direction"], "inbound");

    // The same push again: the original, nothing new.
    socket
        .send(json!([
            "1",
            "3",
            topic(&conversation),
            "new_activity",
            body
        ]))
        .await;
    let reply = socket.recv().await;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"id": id, "seq": 1}})
    );
    // Same key, other content: a conflict.
    socket
        .send(json!(["1", "4", topic(&conversation), "new_activity", {"text": "other", "idempotency_key": "k1"}]))
        .await;
    assert_eq!(
        socket.recv().await[4]["response"]["reason"],
        "idempotency_conflict"
    );
    // The client cannot choose the sender; invalid content names its field.
    socket
        .send(json!(["1", "5", topic(&conversation), "new_activity", {"text": "x", "sender": "mallory"}]))
        .await;
    assert_eq!(
        socket.recv().await[4]["response"]["reason"],
        "validation_failed"
    );
    socket
        .send(json!(["1", "6", topic(&conversation), "new_activity", {"text": "  "}]))
        .await;
    let reply = socket.recv().await;
    assert_eq!(reply[4]["response"]["reason"], "validation_failed");
    assert_eq!(reply[4]["response"]["fields"][0]["field"], "text");

    assert!(socket.drain().await.is_empty());
    let stored = server.activities(&conversation).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["sender"], "alice");

    // A frame many times the socket's read buffer arrives whole.
    let long = "é".repeat(30_000);
    socket
        .send(json!(["1", "7", topic(&conversation), "new_activity", {"text": long}]))
        .await;
    let frames = [socket.recv().await, socket.recv().await];
    let reply = frames.iter().find(|f| f[3] == "phx_reply").unwrap();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let push = frames.iter().find(|f| f[3] == "new_activity").unwrap();
    assert_eq!(push[4]["text"], long.as_str());
    assert_eq!(
        server.activities(&conversation).await[1]["text"],
        long.as_str()
    );
    server.stop().await;
}

async fn rejoin_replays_exactly_what_was_missed(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    let mut socket = Socket::connect(&server.url(&token, Some("2.0.0"))).await;
    socket.join(&topic(&conversation), "1", json!({})).await;
    for i in 1..=3 {
        server.post(&conversation, &format!("m{i}")).await;
    }
    let seen = socket.activities(3).await;
    assert_eq!(seqs(&seen), [1, 2, 3]);
    drop(socket);

    for i in 4..=6 {
        server.post(&conversation, &format!("m{i}")).await;
    }
    let mut socket = Socket::connect(&server.url(&token, Some("2.0.0"))).await;
    let reply = socket
        .join(
            &topic(&conversation),
            "7",
            json!({"last_activity_id": seen[2]["id"]}),
        )
        .await;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"last_seq": 6}})
    );
    let replayed = socket.activities(3).await;
    assert_eq!(seqs(&replayed), [4, 5, 6]);
    assert_eq!(
        replayed
            .iter()
            .map(|a| a["text"].clone())
            .collect::<Vec<_>>(),
        ["m4", "m5", "m6"]
    );
    assert!(socket.drain().await.is_empty());
    server.post(&conversation, "m7").await;
    assert_eq!(seqs(&socket.activities(1).await), [7]);

    // `last_seq` works the same; a watermark from the future or another conversation is refused.
    let mut other = Socket::connect(&server.url(&token, Some("2.0.0"))).await;
    other
        .join(&topic(&conversation), "1", json!({"last_seq": 5}))
        .await;
    assert_eq!(seqs(&other.activities(2).await), [6, 7]);
    let reply = other
        .join(&topic(&conversation), "2", json!({"last_seq": 99}))
        .await;
    assert_eq!(reply[3], "phx_close");
    assert_eq!(
        other.recv().await[4]["response"]["reason"],
        "invalid_watermark"
    );
    server.stop().await;
}

async fn typing_reaches_the_others_only(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let mut alice = server.socket(&conversation, "alice").await;
    let mut bob = server.socket(&conversation, "bob").await;
    alice.join(&topic(&conversation), "1", json!({})).await;
    bob.join(&topic(&conversation), "9", json!({})).await;

    alice
        .send(json!(["1", "2", topic(&conversation), "typing", {}]))
        .await;
    assert_eq!(
        alice.recv().await[4],
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        bob.recv().await,
        json!(["9", null, topic(&conversation), "typing", {"sender": "alice"}])
    );
    // Events reach a stream in order: had alice's typing been forwarded to her, it
    // would come before this activity.
    server.post(&conversation, "after typing").await;
    assert_eq!(alice.recv().await[3], "new_activity");
    assert_eq!(bob.recv().await[3], "new_activity");
    assert!(server.activities(&conversation).await.len() == 1);
    server.stop().await;
}

async fn v1_object_frames(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    for vsn in [None, Some("1.0.0")] {
        let mut socket = Socket::connect(&server.url(&token, vsn)).await;
        socket
            .send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "12"}))
            .await;
        assert_eq!(
            socket.recv_text().await,
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"12"}"#
        );
        socket
            .send(json!({"topic": topic(&conversation), "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}))
            .await;
        let reply = socket.recv().await;
        assert_eq!(reply["payload"]["status"], "ok");
        assert!(reply.get("join_ref").is_none());
        let posted = server.post(&conversation, "v1").await;
        assert_eq!(
            socket.recv().await,
            json!({"topic": topic(&conversation), "event": "new_activity", "payload": posted, "ref": null})
        );
    }
    server.stop().await;
}

async fn token_in_the_subprotocol_header(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token);
    let mut request = format!("{}?vsn=2.0.0", server.ws())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("phoenix, base64url.bearer.phx.{encoded}")
            .parse()
            .unwrap(),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");
    let mut socket = Socket { ws };
    assert_eq!(
        socket.join(&topic(&conversation), "1", json!({})).await[4]["status"],
        "ok"
    );

    let mut bad = format!("{}?vsn=2.0.0", server.ws())
        .into_client_request()
        .unwrap();
    bad.headers_mut().insert(
        "sec-websocket-protocol",
        "phoenix, base64url.bearer.phx.bm9wZQ".parse().unwrap(),
    );
    assert_eq!(refused(bad).await, 403);
    server.stop().await;
}

async fn limits_idle_timeout_and_shutdown_close_codes(backend: Backend) {
    let server = TestApp::start_with(backend, |c| {
        c.socket_push_rate = 3;
        c.socket_max_channels = 1;
        c.socket_idle_timeout_secs = 1;
    })
    .await;
    let conversation = server.conversation().await;
    let mut socket = server.socket(&conversation, "alice").await;
    socket.join(&topic(&conversation), "1", json!({})).await;
    for r in ["2", "3"] {
        socket
            .send(json!(["1", r, topic(&conversation), "typing", {}]))
            .await;
        assert_eq!(socket.recv().await[4]["status"], "ok");
    }
    socket
        .send(json!(["1", "4", topic(&conversation), "typing", {}]))
        .await;
    assert_eq!(
        socket.recv().await[4],
        json!({"status": "error", "response": {"reason": "rate_limited"}})
    );
    // Without a frame for the idle timeout, the server closes (not with 1000).
    assert_eq!(socket.closed().await, Some(CloseCode::Away));

    let mut socket = server.socket(&conversation, "alice").await;
    socket
        .send(json!(["5", "5", "conversation:x", "phx_join", {}]))
        .await;
    assert_eq!(socket.recv().await[4]["response"]["reason"], "unauthorized");
    socket.join(&topic(&conversation), "6", json!({})).await;
    let reply = socket.join("conversation:other", "7", json!({})).await;
    assert_eq!(reply[4]["response"]["reason"], "too many channels joined");

    server.begin_shutdown();
    assert_eq!(socket.closed().await, Some(CloseCode::Restart));
    server.stop().await;
}

/// Writers and joiners race: every joiner sees each activity after its watermark
/// exactly once, in order, up to the last.
async fn concurrent_writers_and_joiners_see_gap_free_sequences(backend: Backend) {
    const WRITERS: usize = 20;
    const JOINERS: usize = 20;
    const PER_WRITER: usize = 10;
    const BEFORE: usize = 20;
    const FINAL: i64 = (BEFORE + WRITERS * PER_WRITER) as i64;
    // Every joiner gets its own client token from one address.
    let server = std::sync::Arc::new(
        TestApp::start_with(backend, |c| c.rate_limit_tokens_per_minute = 0).await,
    );
    let conversation = server.conversation().await;
    for i in 0..BEFORE {
        server.post(&conversation, &format!("before {i}")).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (server, conversation) = (server.clone(), conversation.clone());
        tasks.spawn(async move {
            for i in 0..PER_WRITER {
                server.post(&conversation, &format!("w{w} {i}")).await;
            }
        });
    }
    for j in 0..JOINERS {
        let (server, conversation) = (server.clone(), conversation.clone());
        tasks.spawn(async move {
            let watermark = rand::random_range(0..=BEFORE as i64);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..40))).await;
            let mut socket = server.socket(&conversation, &format!("joiner{j}")).await;
            let reply = socket
                .join(&topic(&conversation), "1", json!({"last_seq": watermark}))
                .await;
            assert_eq!(reply[4]["status"], "ok", "{reply}");
            let seen = socket.activities((FINAL - watermark) as usize).await;
            assert_eq!(
                seqs(&seen),
                ((watermark + 1)..=FINAL).collect::<Vec<_>>(),
                "joiner {j} from {watermark}"
            );
            assert!(socket.drain().await.is_empty());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    std::sync::Arc::into_inner(server).unwrap().stop().await;
}

// One SQLite file serves one node: streaming across nodes, and the LISTEN connection
// that carries it, are PostgreSQL's.
postgres_only!(
    other_nodes_stream_every_activity_in_order,
    a_lost_listener_connection_loses_nothing,
);

/// Text too large for a NOTIFY payload: the activity travels by reference.
fn large_text(tag: &str) -> String {
    format!("{tag} {}", "x".repeat(20_000))
}

/// A socket on the node serving `base`, joined live to the conversation as `user`.
async fn joined_on(base: &str, app: &TestApp, conversation: &str, user: &str) -> Socket {
    let token = app.token(conversation, user).await;
    let mut socket = Socket::connect(&ws_url(base, &token, Some("2.0.0"))).await;
    let reply = socket.join(&topic(conversation), "1", json!({})).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    socket
}

/// The PostgreSQL backends of the test database holding a LISTEN connection.
async fn listener_pids(app: &TestApp) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE query ILIKE 'LISTEN%' AND datname = current_database() ORDER BY pid",
    )
    .fetch_all(app.store.pg_pool().expect("PostgreSQL"))
    .await
    .expect("pg_stat_activity")
}

async fn other_nodes_stream_every_activity_in_order(backend: Backend) {
    let a = TestApp::start(backend).await;
    let b = Node::start(&a.database_url);
    b.ready(&a.http).await;
    let conversation = a.conversation().await;
    let mut on_b = joined_on(&b.base, &a, &conversation, "bob").await;
    let mut on_a = joined_on(&a.base, &a, &conversation, "alice").await;

    let mut posted = Vec::new();
    for text in ["m1".into(), large_text("m2"), "m3".into(), large_text("m4")] {
        posted.push(a.post(&conversation, &text).await);
    }
    assert_eq!(on_b.activities(posted.len()).await, posted);
    assert_eq!(on_a.activities(posted.len()).await, posted);

    // Typing and socket pushes cross nodes too, in both directions.
    on_a.send(json!(["1", "2", topic(&conversation), "typing", {}]))
        .await;
    assert_eq!(
        on_a.recv().await[4],
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        on_b.recv().await,
        json!(["1", null, topic(&conversation), "typing", {"sender": "alice"}])
    );
    on_b.send(json!(["1", "3", topic(&conversation), "new_activity", {"text": "from b"}]))
        .await;
    let pushed = on_a.activities(1).await.remove(0);
    assert_eq!(
        (&pushed["sender"], pushed["seq"].as_i64()),
        (&json!("bob"), Some(5))
    );
    let frames = on_b.drain().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f[3] == "new_activity" && f[4] == pushed)
    );
    assert!(on_a.drain().await.is_empty());
    a.stop().await;
}

async fn a_lost_listener_connection_loses_nothing(backend: Backend) {
    let a = TestApp::start(backend).await;
    let b = Node::start(&a.database_url);
    b.ready(&a.http).await;
    let conversation = a.conversation().await;
    let mut on_b = joined_on(&b.base, &a, &conversation, "bob").await;
    let before = eventually(Duration::from_secs(10), "both nodes to LISTEN", || async {
        let pids = listener_pids(&a).await;
        (pids.len() == 2).then_some(pids)
    })
    .await;
    for i in 1..=3 {
        a.post(&conversation, &format!("before {i}")).await;
    }
    assert_eq!(seqs(&on_b.activities(3).await), [1, 2, 3]);

    // Terminate every LISTEN backend of the database (node B's, and A's) while A keeps
    // posting, and post again right after: whatever was notified while B was not
    // listening must reach B's socket from the store.
    let writer = async {
        for i in 0..20 {
            let text = if i % 5 == 4 {
                large_text("during")
            } else {
                format!("during {i}")
            };
            a.post(&conversation, &text).await;
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
        )
        .fetch_all(a.store.pg_pool().expect("PostgreSQL"))
        .await
        .expect("terminate");
        assert_eq!(terminated, [true, true]);
        for i in 0..3 {
            a.post(&conversation, &format!("right after {i}")).await;
        }
    };
    tokio::join!(writer, killer);
    let last = 3 + 20 + 3;
    let seen = on_b.activities(last - 3).await;
    assert_eq!(seqs(&seen), (4..=last as i64).collect::<Vec<_>>());
    assert_eq!(seen, a.activities(&conversation).await[3..]);
    assert!(on_b.drain().await.is_empty(), "nothing twice");

    // Both nodes listen again, on new connections.
    let before = eventually(
        Duration::from_secs(10),
        "both nodes to LISTEN again",
        || async {
            let pids = listener_pids(&a).await;
            (pids.len() == 2 && pids.iter().all(|p| !before.contains(p))).then_some(pids)
        },
    )
    .await;

    // Now keep the listeners out while A posts, so that these notifications are lost
    // for certain, with no later activity to reveal the gap: only the resynchronisation
    // after B listens again can deliver them. A's pool is warmed first, as no new
    // connection can be opened meanwhile.
    futures_util::future::join_all((0..8).map(|_| a.activities(&conversation))).await;
    let mut admin = admin_connection().await;
    let database = a.database_url.rsplit('/').next().expect("database name");
    let allow = |yes: bool| format!("ALTER DATABASE {database} ALLOW_CONNECTIONS {yes}");
    sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(allow(false)))
        .await
        .expect("refuse connections");
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1)",
    )
    .bind(&before)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert_eq!(terminated, [true, true]);
    for i in 0..4 {
        let text = if i == 3 {
            large_text("unheard")
        } else {
            format!("unheard {i}")
        };
        a.post(&conversation, &text).await;
    }
    assert!(on_b.drain().await.is_empty(), "B cannot hear anything yet");
    sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(allow(true)))
        .await
        .expect("allow connections");
    let seen = on_b.activities(4).await;
    assert_eq!(
        seqs(&seen),
        (last as i64 + 1..=last as i64 + 4).collect::<Vec<_>>()
    );
    assert_eq!(seen, a.activities(&conversation).await[last..]);
    assert!(on_b.drain().await.is_empty(), "nothing twice");

    a.post(&conversation, "after").await;
    assert_eq!(seqs(&on_b.activities(1).await), [last as i64 + 5]);
    a.stop().await;
}

/// A connection to the PostgreSQL server's own database, outside the test database.
async fn admin_connection() -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = crate::common::postgres_url().expect("PostgreSQL URL");
    sqlx::PgConnection::connect(&url)
        .await
        .expect("admin connection")
}

/// A client token for `conversation` of the app's tenant that expired an hour ago.
async fn expired_token(server: &TestApp, conversation: &str) -> String {
    use converger::auth::{Claims, TokenType};
    let found = server
        .store
        .get_conversation(server.tenant_id, conversation.parse().unwrap())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        typ: TokenType::Client,
        tenant: server.tenant_id,
        channel: found.channel_id,
        conversation: Some(found.id),
        sub: Some("alice".into()),
        sfp: None,
        iat: now - 7200,
        exp: Some(now - 3600),
        jti: "expired".into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Every refused WebSocket connect is a 403 whose JSON body names the reason.
async fn refused_connects_say_why(backend: Backend) {
    let server = TestApp::start(backend).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    let expired = expired_token(&server, &conversation).await;
    let channel = server.websocket_channel().await;
    let channel_token = channel["token"].as_str().unwrap().to_owned();
    let mut forged = token.clone();
    forged.pop();

    for (url, code) in [
        (server.ws(), "missing_token"),
        (format!("{}?vsn=2.0.0", server.ws()), "missing_token"),
        (server.url(&token, Some("3.0.0")), "unsupported_version"),
        (server.url("not-a-jwt", Some("2.0.0")), "invalid_token"),
        (server.url(&forged, Some("2.0.0")), "invalid_token"),
        (server.url(&channel_token, Some("2.0.0")), "invalid_token"),
        (server.url(&expired, Some("2.0.0")), "token_expired"),
    ] {
        let (status, body) = refusal(url.as_str()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some(code)),
            "{url}: {body}"
        );
        assert!(body["error"]["message"].is_string());
        assert!(!body.to_string().contains(&token), "no token in refusals");
    }
    server
        .store
        .set_tenant_status(server.tenant_id, TenantStatus::Inactive)
        .await
        .unwrap();
    let (status, body) = refusal(server.url(&token, Some("2.0.0")).as_str()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_inactive"))
    );
    server
        .store
        .set_tenant_status(server.tenant_id, TenantStatus::Active)
        .await
        .unwrap();

    // Plain HTTP to the WebSocket endpoint: a JSON 400, not a bare rejection.
    let resp = server
        .anon(
            Method::GET,
            &format!("/socket/websocket?token={token}&vsn=2.0.0"),
        )
        .send()
        .await
        .unwrap();
    crate::common::expect_error(resp, StatusCode::BAD_REQUEST, "websocket_required").await;
    Socket::connect(&server.url(&token, Some("2.0.0"))).await;
    server.stop().await;
}

/// Long-poll failures are JSON with a code and the Phoenix status the client acts on;
/// none is a 500, and none harms the session.
async fn longpoll_refusals_and_bad_requests_answer_json_codes(backend: Backend) {
    let server = TestApp::start_with(backend, |c| {
        c.max_body_bytes = 8 * 1024;
        c.socket_max_frame_bytes = 1024;
        c.cors_origins = Some("https://app.example.com".into());
    })
    .await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    let expired = expired_token(&server, &conversation).await;
    let endpoint = server.longpoll();
    let get = |url: String| {
        let http = server.http.clone();
        async move { request(&http, Method::GET, &url, None).await }
    };

    // Refused connects: 403, Phoenix status 403 (the client stops retrying this one).
    for (query, code) in [
        ("vsn=2.0.0".to_owned(), "missing_token"),
        (format!("token={token}&vsn=9.0.0"), "unsupported_version"),
        ("token=nope&vsn=2.0.0".to_owned(), "invalid_token"),
        (format!("token={expired}&vsn=2.0.0"), "token_expired"),
    ] {
        get(format!("{endpoint}?{query}"))
            .await
            .assert_failure(403, 403, code);
    }
    // The client token in the header of the `authToken` option opens a session too.
    let opened = server
        .anon(Method::GET, "/socket/longpoll?vsn=2.0.0")
        .header("x-phoenix-authtoken", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    assert_eq!(opened.headers()["cache-control"], "no-store");
    let opened: Value = opened.json().await.unwrap();
    assert_eq!(opened["status"], 410);
    assert!(opened["token"].as_str().unwrap().starts_with("lps_"));

    // A browser app on another origin may long-poll, sending the Phoenix headers.
    let preflight = server
        .anon(Method::OPTIONS, "/socket/longpoll")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-phoenix-authtoken",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-phoenix-authtoken"), "{allowed}");

    // Sessions this node does not hold: 410, so the client opens a new one.
    let unknown = format!("lps_{}", "0".repeat(64));
    get(format!(
        "{endpoint}?token={token}&vsn=2.0.0&token={unknown}"
    ))
    .await
    .assert_failure(410, 410, "session_on_another_node");
    request(
        &server.http,
        Method::POST,
        &format!("{endpoint}?token={unknown}"),
        Some("[]".into()),
    )
    .await
    .assert_failure(410, 410, "session_on_another_node");
    request(
        &server.http,
        Method::POST,
        &format!("{endpoint}?vsn=2.0.0"),
        Some("[]".into()),
    )
    .await
    .assert_failure(410, 410, "session_gone");

    // Bad batches are refused whole.
    let mut session = LongPoll::open(&server.base, &server.http, &token).await;
    let join = json!(["1", "1", topic(&conversation), "phx_join", {}]).to_string();
    let push = |text: &str| {
        json!(["1", "2", topic(&conversation), "new_activity", {"text": text}]).to_string()
    };
    session
        .post_raw(format!("{join}\n[\"not\",\"a\"]"))
        .await
        .assert_failure(400, 400, "invalid_frame");
    session
        .post_raw("AAECAw==".into())
        .await
        .assert_failure(400, 400, "invalid_frame");
    session
        .post_raw(format!("{join}\n{}", push(&"x".repeat(2000))))
        .await
        .assert_failure(413, 413, "payload_too_large");
    session
        .post_raw(vec![push("small"); 101].join("\n"))
        .await
        .assert_failure(413, 413, "payload_too_large");
    session
        .post_raw(vec![push(&"y".repeat(900)); 10].join("\n"))
        .await
        .assert_failure(413, 413, "payload_too_large");
    // Nothing of those batches was served: the join comes only now, and nothing was posted.
    let reply = session.join(&topic(&conversation), "1", json!({})).await;
    assert_eq!(
        reply,
        json!(["1", "1", topic(&conversation), "phx_reply", {"status": "ok", "response": {"last_seq": 0}}])
    );
    assert!(session.drain().await.is_empty());
    assert!(server.activities(&conversation).await.is_empty());
    server.stop().await;
}

/// Over long-poll, a joined session gets every activity once, in order, with its join
/// ref; pushes are ingested as the token's user; a new session resumes exactly after
/// the last activity seen.
async fn longpoll_join_push_receive_and_resume(backend: Backend) {
    let server = TestApp::start_with(backend, |c| c.longpoll_window_secs = 1).await;
    let conversation = server.conversation().await;
    let token = server.token(&conversation, "alice").await;
    let mut session = LongPoll::open(&server.base, &server.http, &token).await;
    let t = topic(&conversation);

    // Heartbeats work (the JS client sends none over long-poll, others may).
    session
        .send(&[json!([null, "hb1", "phoenix", "heartbeat", {}])])
        .await;
    assert_eq!(
        session.recv().await,
        json!([null, "hb1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // A poll with nothing to say answers 204 after the window.
    let idle = session.poll().await;
    assert_eq!(
        (idle.http, idle.status()),
        (StatusCode::OK, 204),
        "{idle:?}"
    );

    let reply = session.join(&t, "3", json!({})).await;
    assert_eq!(
        reply,
        json!(["3", "3", t, "phx_reply", {"status": "ok", "response": {"last_seq": 0}}])
    );
    let posted = server.post(&conversation, "from REST").await;
    assert_eq!(
        session.recv().await,
        json!(["3", null, t, "new_activity", posted])
    );

    // Two pushes in one batch, the second a retry of the first: one activity.
    let push = json!({"text": "from long-poll", "idempotency_key": "lp-1"});
    session
        .send(&[
            json!(["3", "4", t, "new_activity", push]),
            json!(["3", "5", t, "new_activity", push]),
        ])
        .await;
    let mut replies = Vec::new();
    let mut pushed = Vec::new();
    while replies.len() < 2 || pushed.is_empty() {
        let frame = session.recv().await;
        match frame[3].as_str().unwrap() {
            "phx_reply" => replies.push(frame),
            "new_activity" => pushed.push(frame[4].clone()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(replies[0][1], "4");
    assert_eq!(replies[1][1], "5");
    assert_eq!(replies[0][4]["response"], replies[1][4]["response"]);
    assert_eq!(replies[0][4]["response"]["seq"], 2);
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        (
            pushed[0]["sender"].as_str(),
            pushed[0]["direction"].as_str()
        ),
        (Some("alice"), Some("inbound"))
    );
    assert!(
        session.drain().await.is_empty(),
        "a retried push is not broadcast again"
    );
    let last_seen = pushed[0]["id"].clone();

    // Away: a new session (as after a lost one) resumes after the last activity seen.
    drop(session);
    for i in 1..=3 {
        server.post(&conversation, &format!("away {i}")).await;
    }
    let mut session = LongPoll::open(&server.base, &server.http, &token).await;
    let reply = session
        .join(&t, "9", json!({"last_activity_id": last_seen}))
        .await;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"last_seq": 5}})
    );
    let replayed = session.activities(3).await;
    assert_eq!(seqs(&replayed), [3, 4, 5]);
    assert_eq!(replayed[0]["text"], "away 1");
    assert!(session.drain().await.is_empty());
    server.post(&conversation, "live").await;
    let live = session.recv().await;
    assert_eq!(
        (live[0].as_str(), live[4]["seq"].as_i64()),
        (Some("9"), Some(6))
    );

    // Leave: ok, then phx_close; nothing arrives after.
    session
        .send(&[json!(["9", "10", t, "phx_leave", {}])])
        .await;
    assert_eq!(session.recv().await[4]["status"], "ok");
    assert_eq!(session.recv().await, json!(["9", "9", t, "phx_close", {}]));
    server.post(&conversation, "after leave").await;
    assert!(session.drain().await.is_empty());

    server.stop().await;
}

/// A session lives while it is polled, longer than the idle timeout if a poll waits
/// that long, and ends when nobody polls; it acts only for its own token's tenant and
/// conversation.
async fn longpoll_sessions_expire_and_stay_within_their_tenant(backend: Backend) {
    let server = TestApp::start_with(backend, |c| {
        c.socket_idle_timeout_secs = 2;
        c.longpoll_window_secs = 3;
    })
    .await;
    let conversation = server.conversation().await;
    let mut session = server.longpoll_session(&conversation, "alice").await;
    // The poll waits 3 s, past the idle timeout: the session stays.
    let waited = session.poll().await;
    assert_eq!(
        (waited.http, waited.status()),
        (StatusCode::OK, 204),
        "{waited:?}"
    );
    session
        .send(&[json!([null, "1", "phoenix", "heartbeat", {}])])
        .await;
    assert_eq!(session.recv().await[4]["status"], "ok");

    // Nobody polls: the session ends.
    let polled = &session;
    eventually(
        Duration::from_secs(60),
        "the unpolled session to end",
        || async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let answer = polled.poll().await;
            (answer.http == StatusCode::GONE).then_some(answer)
        },
    )
    .await
    .assert_failure(410, 410, "session_gone");

    // Another tenant's client: its session cannot join this tenant's conversation,
    // nor does it see its activities.
    let (other_tenant, other_key) = server.create_tenant("globex").await;
    let other_channel = server
        .create_channel_as(&other_key, "websocket", json!({}))
        .await;
    let other_conversation = server
        .with_key(&other_key, Method::POST, "/api/v1/conversations")
        .json(&json!({"channel_id": other_channel["id"]}))
        .send()
        .await
        .unwrap();
    let other_conversation =
        crate::common::expect_data(other_conversation, StatusCode::CREATED).await;
    let other_token = server.jwt.issue_client_token(
        other_tenant,
        other_channel["id"].as_str().unwrap().parse().unwrap(),
        other_conversation["id"].as_str().unwrap().parse().unwrap(),
        "mallory",
    );
    let mut other = LongPoll::open(&server.base, &server.http, &other_token).await;
    let reply = other.join(&topic(&conversation), "1", json!({})).await;
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(reply[4]["response"]["reason"], "unauthorized");
    server.post(&conversation, "private").await;
    other
        .send(&[json!(["1", "2", topic(&conversation), "new_activity", {"text": "intrusion"}])])
        .await;
    assert_eq!(
        other.recv().await[4]["response"]["reason"],
        "unmatched topic"
    );
    assert!(other.drain().await.is_empty());
    assert_eq!(server.activities(&conversation).await.len(), 1);
    server.stop().await;
}
