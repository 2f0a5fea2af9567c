//! The life of a conversation: WhatsApp numbers as one party however they are written
//! (on create, search and in the migration of rows stored before), closing and
//! reopening recorded as `conversationUpdate` activities on REST and sockets, the idle
//! closer (also with several nodes), and search by external id within a tenant.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use converger::domain::{
    ActivityType, ChannelType, ConversationId, ConversationStatus, Direction, NewActivity,
    Timestamp,
};
use converger::store::{
    AppendOutcome, ConversationFilter, ExternalIdSearch, NewChannel, NewConversation, Store,
    StoreOptions, test_support,
};

use crate::common::node::Node;
use crate::common::sink::{Reply, Sink};
use crate::common::socket::{seqs, topic};
use crate::common::{
    Backend, TestApp, TestDb, both_backends, eventually, expect_data, expect_error, postgres_only,
    s,
};

both_backends!(
    whatsapp_numbers_are_one_party_however_written,
    the_migration_normalises_rows_of_the_old_form,
    reopen_and_its_conflicts,
    close_and_reopen_are_activities_on_rest_and_sockets,
    idle_conversations_are_closed_and_recorded,
    only_idle_conversations_are_closed,
    external_id_search_stays_within_the_tenant,
);

postgres_only!(several_nodes_close_an_idle_conversation_once);

const WAIT: Duration = Duration::from_secs(20);

/// A WhatsApp (Meta) channel that never sends: its provider is a closed local port.
async fn whatsapp_channel(app: &TestApp) -> Value {
    app.create_channel(
        "whatsapp_meta",
        json!({"phone_number_id": "106540352242922", "access_token": "t", "verify_token": "v",
               "api_base_url": "http://127.0.0.1:9"}),
    )
    .await
}

async fn create(app: &TestApp, channel: &Value, external_id: &str) -> reqwest::Response {
    app.req(Method::POST, "/api/v1/conversations")
        .json(&json!({"channel_id": s(channel, "id"), "external_id": external_id}))
        .send()
        .await
        .unwrap()
}

async fn lifecycle(app: &TestApp, conversation: &str, action: &str) -> reqwest::Response {
    app.req(
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/{action}"),
    )
    .send()
    .await
    .unwrap()
}

/// The conversations a search answers, as `(id, external_id)`.
async fn search(app: &TestApp, key: &str, query: &str) -> Vec<(String, String)> {
    let resp = app
        .with_key(key, Method::GET, &format!("/api/v1/conversations?{query}"))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (s(c, "id").to_owned(), s(c, "external_id").to_owned()))
        .collect()
}

fn q(external_id: &str) -> String {
    format!(
        "external_id={}",
        url::form_urlencoded::byte_serialize(external_id.as_bytes()).collect::<String>()
    )
}

async fn conversation(app: &TestApp, id: &str) -> Value {
    let resp = app
        .req(Method::GET, &format!("/api/v1/conversations/{id}"))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await
}

async fn whatsapp_numbers_are_one_party_however_written(backend: Backend) {
    let app = TestApp::start(backend).await;
    let wa = whatsapp_channel(&app).await;
    let first = expect_data(
        create(&app, &wa, "+49 (0)151 1234-5678").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first["external_id"], "+4915112345678");

    // Every other spelling of the number is the same party: one active conversation.
    for spelling in ["004915112345678", "4915112345678", "+49.151.12345678"] {
        let err = expect_error(
            create(&app, &wa, spelling).await,
            StatusCode::CONFLICT,
            "conversation_exists",
        )
        .await;
        assert_eq!(err["details"]["conversation_id"], first["id"], "{spelling}");
    }
    // What is not an international number is refused, naming the field.
    for bad in ["user-7", "015112345678", "+49 151 CALL ME", "1555"] {
        let err = expect_error(
            create(&app, &wa, bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(err["details"]["fields"][0]["field"], "external_id", "{bad}");
    }
    // Infobip channels alike.
    let ib = app
        .create_channel(
            "whatsapp_infobip",
            json!({"base_url": "http://127.0.0.1:9", "api_key": "k", "sender": "447860099299"}),
        )
        .await;
    let on_ib = expect_data(
        create(&app, &ib, "0049 151 12345678").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(on_ib["external_id"], "+4915112345678");

    // Other channel types keep external ids verbatim.
    let ws = app.websocket_channel().await;
    let verbatim = expect_data(
        create(&app, &ws, "0049 151 1234-5678").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(verbatim["external_id"], "0049 151 1234-5678");

    // Lookup: any spelling finds the WhatsApp conversations; a verbatim id matches only
    // the same text elsewhere.
    let key = app.api_key.clone();
    let mut found = search(&app, &key, &q("4915112345678")).await;
    found.sort();
    let mut expected = vec![
        (s(&first, "id").to_owned(), "+4915112345678".to_owned()),
        (s(&on_ib, "id").to_owned(), "+4915112345678".to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected);
    let both = search(&app, &key, &q("0049 151 1234-5678")).await;
    assert_eq!(both.len(), 3, "{both:?}");
    assert!(both.contains(&(
        s(&verbatim, "id").to_owned(),
        "0049 151 1234-5678".to_owned()
    )));
    let on_channel = search(
        &app,
        &key,
        &format!("{}&channel_id={}", q("+49 151 12345678"), s(&wa, "id")),
    )
    .await;
    assert_eq!(
        on_channel,
        [(s(&first, "id").to_owned(), "+4915112345678".to_owned())]
    );
    // Text that is no number finds nothing on WhatsApp channels.
    assert!(search(&app, &key, &q("user-7")).await.is_empty());
}

/// Runs `$body` with `$pool` bound to the store's pool that writes.
macro_rules! on_writer {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite { writer: $pool, .. } => $body,
            Store::Postgres($pool, _) => $body,
        }
    };
}

/// Rows stored by a release before numbers were normalised, in the forms it kept them,
/// migrated: every WhatsApp row normalised, two spellings that were both active leave
/// one active (the one with the latest activity) and the other closed naming it, and
/// the rest alone.
async fn the_migration_normalises_rows_of_the_old_form(backend: Backend) {
    const LIFECYCLE: i64 = 20261203000005;
    let (_db, url) = TestDb::create(backend).await;
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    // The schema as it was before this migration.
    on_writer!(&store, |pool| {
        let mut migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        let before: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|m| m.version < LIFECYCLE)
            .cloned()
            .collect();
        assert!(before.len() < migrator.migrations.len());
        migrator.migrations = Cow::Owned(before);
        migrator.run(pool).await.unwrap();
    });
    let key = converger::auth::generate_api_key();
    let tenant = store
        .insert_tenant("acme", &key.hash, &key.prefix)
        .await
        .unwrap();
    let channel = |kind: ChannelType, config: Value| NewChannel {
        name: kind.to_string(),
        kind,
        secret: converger::auth::generate_channel_secret(),
        config,
    };
    let wa = store
        .insert_channel(
            tenant.id,
            channel(
                ChannelType::WhatsappMeta,
                json!({"phone_number_id": "1", "access_token": "t", "verify_token": "v",
                       "api_version": "v18.0", "api_base_url": "https://graph.facebook.com"}),
            ),
        )
        .await
        .unwrap();
    let hook = store
        .insert_channel(
            tenant.id,
            channel(
                ChannelType::Webhook,
                json!({"url": "https://bot.example.com/hook"}),
            ),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (channel_id, external_id) in [
        (wa.id, "+4915112345678"),     // opened by the application
        (wa.id, "4915112345678"),      // opened by the user's reply, written to last
        (wa.id, "0049 151 1234-5678"), // an earlier one, closed below
        (wa.id, "user-x"),             // not a number: left alone
        (hook.id, "004915112345678"),  // not WhatsApp: left alone
        (wa.id, "+49 (0)30 1234567"),
    ] {
        let created = store
            .insert_conversation(
                tenant.id,
                NewConversation {
                    channel_id,
                    external_id: Some(external_id.into()),
                    metadata: json!({"source": external_id}),
                },
            )
            .await
            .unwrap();
        ids.push(created.id);
    }
    let hours_ago = |h: u64| Timestamp::now().minus(Duration::from_secs(h * 3600));
    for (id, status, updated_at) in [
        (ids[0], "active", hours_ago(3)),
        (ids[1], "active", hours_ago(1)),
        (ids[2], "closed", hours_ago(48)),
    ] {
        on_writer!(&store, |pool| sqlx::query(
            "UPDATE conversations SET status = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(status)
        .bind(updated_at)
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ()))
        .unwrap();
    }

    store.migrate().await.unwrap();

    let get = |id: ConversationId| {
        let store = store.clone();
        async move { store.get_conversation(tenant.id, id).await.unwrap() }
    };
    let (app_opened, reply_opened, earlier) =
        (get(ids[0]).await, get(ids[1]).await, get(ids[2]).await);
    assert_eq!(reply_opened.external_id.as_deref(), Some("+4915112345678"));
    assert_eq!(reply_opened.status, ConversationStatus::Active);
    assert_eq!(reply_opened.metadata, json!({"source": "4915112345678"}));
    assert_eq!(app_opened.external_id.as_deref(), Some("+4915112345678"));
    assert_eq!(app_opened.status, ConversationStatus::Closed);
    assert_eq!(
        app_opened.metadata,
        json!({"source": "+4915112345678", "superseded_by": ids[1].to_string()})
    );
    assert_eq!(earlier.external_id.as_deref(), Some("+4915112345678"));
    assert_eq!(earlier.status, ConversationStatus::Closed);
    assert_eq!(get(ids[3]).await.external_id.as_deref(), Some("user-x"));
    assert_eq!(
        get(ids[4]).await.external_id.as_deref(),
        Some("004915112345678")
    );
    let berlin = get(ids[5]).await;
    assert_eq!(berlin.external_id.as_deref(), Some("+49301234567"));
    assert_eq!(berlin.status, ConversationStatus::Active);

    // The number's one active conversation is the one inbound messages find.
    let active = store
        .find_active_conversation(tenant.id, wa.id, "+4915112345678")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.id, ids[1]);
    let filter = ConversationFilter {
        external_id: Some(ExternalIdSearch::new("4915112345678")),
        limit: 10,
        ..ConversationFilter::default()
    };
    let all = store.list_conversations(tenant.id, &filter).await.unwrap();
    assert_eq!(all.len(), 3);

    // The migrated schema takes the new activity type.
    let append = converger::store::ActivityAppend {
        tenant_id: tenant.id,
        conversation_id: ids[1],
        activity: NewActivity {
            kind: ActivityType::ConversationUpdate,
            direction: Direction::Outbound,
            sender: "system".into(),
            text: None,
            attachments: json!([]),
            metadata: json!({"status": "active"}),
            idempotency_key: None,
        },
        targets: Vec::new(),
        request_id: None,
    };
    let appended = test_support::append_activity(&store, &append)
        .await
        .unwrap();
    assert!(
        matches!(appended, AppendOutcome::Created { .. }),
        "{appended:?}"
    );
    store.close().await;
}

async fn reopen_and_its_conflicts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let first = app.create_conversation(s(&ch, "id"), Some("user-7")).await;
    let id = s(&first, "id");

    expect_error(
        lifecycle(&app, id, "reopen").await,
        StatusCode::CONFLICT,
        "conversation_active",
    )
    .await;
    assert_eq!(lifecycle(&app, id, "close").await.status(), StatusCode::OK);
    let reopened = expect_data(lifecycle(&app, id, "reopen").await, StatusCode::OK).await;
    assert_eq!(reopened["status"], "active");
    assert_eq!(reopened["last_seq"], 2);
    expect_data(
        app.post_activity(id, json!({"text": "open again"})).await,
        StatusCode::CREATED,
    )
    .await;

    // Closed again, and the party starts a new conversation: the old one cannot come
    // back while the new one is active, and the failed reopen records nothing.
    assert_eq!(lifecycle(&app, id, "close").await.status(), StatusCode::OK);
    let second = app.create_conversation(s(&ch, "id"), Some("user-7")).await;
    let err = expect_error(
        lifecycle(&app, id, "reopen").await,
        StatusCode::CONFLICT,
        "conversation_exists",
    )
    .await;
    assert_eq!(err["details"]["conversation_id"], second["id"]);
    let stayed = conversation(&app, id).await;
    assert_eq!(
        (stayed["status"].as_str(), stayed["last_seq"].as_i64()),
        (Some("closed"), Some(4))
    );
    assert_eq!(app.activities(id).await.len(), 4);
    // Once the new one is closed, the old one may come back.
    assert_eq!(
        lifecycle(&app, s(&second, "id"), "close").await.status(),
        StatusCode::OK
    );
    expect_data(lifecycle(&app, id, "reopen").await, StatusCode::OK).await;

    // Unknown and other tenants' conversations are not found; other credentials may
    // not reopen.
    let unknown = ConversationId::new().to_string();
    expect_error(
        lifecycle(&app, &unknown, "reopen").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (_, other_key) = app.create_tenant("other").await;
    for action in ["reopen", "close"] {
        let resp = app
            .with_key(
                &other_key,
                Method::POST,
                &format!("/api/v1/conversations/{id}/{action}"),
            )
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(conversation(&app, id).await["status"], "active");
    let resp = app
        .anon(Method::POST, &format!("/api/v1/conversations/{id}/reopen"))
        .header("x-channel-token", s(&ch, "token"))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "api_key_required").await;
}

async fn close_and_reopen_are_activities_on_rest_and_sockets(backend: Backend) {
    let app = TestApp::start(backend).await;
    let id = app.conversation().await;
    let mut socket = app.socket(&id, "alice").await;
    socket.join(&topic(&id), "1", json!({})).await;

    app.post(&id, "hello").await;
    assert_eq!(lifecycle(&app, &id, "close").await.status(), StatusCode::OK);
    assert_eq!(
        lifecycle(&app, &id, "reopen").await.status(),
        StatusCode::OK
    );
    app.post(&id, "again").await;

    let pushed = socket.activities(4).await;
    let listed = app.activities(&id).await;
    assert_eq!(pushed, listed, "sockets and REST see the same activities");
    assert_eq!(seqs(&listed), [1, 2, 3, 4]);
    let kinds: Vec<_> = listed.iter().map(|a| s(a, "type")).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "conversationUpdate",
            "conversationUpdate",
            "message"
        ]
    );
    for (activity, status) in [(&listed[1], "closed"), (&listed[2], "active")] {
        assert_eq!(
            activity["metadata"],
            json!({"status": status, "reason": "api"})
        );
        assert_eq!(activity["direction"], "outbound");
        assert_eq!(activity["sender"], "app");
        assert_eq!(activity["text"], Value::Null);
    }
    // A resumed socket replays them in order too.
    let mut late = app.socket(&id, "bob").await;
    let reply = late
        .join(
            &topic(&id),
            "1",
            json!({"last_activity_id": s(&listed[0], "id")}),
        )
        .await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    assert_eq!(seqs(&late.activities(3).await), [2, 3, 4]);

    // Clients cannot post one themselves.
    let err = expect_error(
        app.post_activity(&id, json!({"type": "conversationUpdate"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(err["details"]["fields"][0]["field"], "type");

    // Delivered where the channel's adapter takes outbound activities: a webhook.
    let receiver = Sink::start().await;
    receiver.always(Reply::status(200));
    let hook = app
        .create_channel("webhook", json!({"url": receiver.url}))
        .await;
    let on_hook = app.create_conversation(s(&hook, "id"), None).await;
    assert_eq!(
        lifecycle(&app, s(&on_hook, "id"), "close").await.status(),
        StatusCode::OK
    );
    let got = receiver.wait_for(1, WAIT).await;
    let body = got[0].json();
    assert_eq!(body["type"], "conversationUpdate");
    assert_eq!(body["metadata"]["status"], "closed");
    assert_eq!(body["conversation"]["id"], on_hook["id"]);
    // Not to WhatsApp, which sends text messages only.
    let wa = whatsapp_channel(&app).await;
    let on_wa = expect_data(
        create(&app, &wa, "+4915112345678").await,
        StatusCode::CREATED,
    )
    .await;
    let closed = expect_data(
        lifecycle(&app, s(&on_wa, "id"), "close").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(closed["last_seq"], 1);
    let update = &app.activities(s(&on_wa, "id")).await[0];
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/activities/{}/deliveries", s(update, "id")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(expect_data(resp, StatusCode::OK).await, json!([]));
}

/// Waits until the conversation is closed; returns it.
async fn closed_eventually(app: &TestApp, id: &str) -> Value {
    eventually(WAIT, "the idle conversation to be closed", || async {
        let c = conversation(app, id).await;
        (c["status"] == "closed").then_some(c)
    })
    .await
}

async fn idle_conversations_are_closed_and_recorded(backend: Backend) {
    // 3.6 seconds without an activity.
    let app = TestApp::start_with(backend, |c| {
        c.conversation_idle_close_hours = Some(0.001);
        c.conversation_idle_check_secs = 1;
    })
    .await;
    let id = app.conversation().await;
    let closed = closed_eventually(&app, &id).await;
    assert_eq!(closed["last_seq"], 1);
    let acts = app.activities(&id).await;
    assert_eq!(acts[0]["type"], "conversationUpdate");
    assert_eq!(
        acts[0]["metadata"],
        json!({"status": "closed", "reason": "idle"})
    );
    assert_eq!(acts[0]["sender"], "system");
    expect_error(
        app.post_activity(&id, json!({"text": "too late"})).await,
        StatusCode::CONFLICT,
        "conversation_closed",
    )
    .await;
    // Reopened, it is active until it idles again.
    expect_data(lifecycle(&app, &id, "reopen").await, StatusCode::OK).await;
    let closed = closed_eventually(&app, &id).await;
    assert_eq!(closed["last_seq"], 3);
}

/// Writes a conversation's last activity time past the API.
async fn last_active(app: &TestApp, id: &str, at: Timestamp) {
    let id: ConversationId = id.parse().unwrap();
    on_writer!(&app.store, |pool| sqlx::query(
        "UPDATE conversations SET updated_at = $1 WHERE id = $2"
    )
    .bind(at)
    .bind(id)
    .execute(pool)
    .await
    .map(|r| assert_eq!(r.rows_affected(), 1)))
    .unwrap();
}

async fn only_idle_conversations_are_closed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.conversation_idle_close_hours = Some(1.0);
        c.conversation_idle_check_secs = 1;
    })
    .await;
    let idle = app.conversation().await;
    let busy = app.conversation().await;
    let closed_already = app.conversation().await;
    assert_eq!(
        lifecycle(&app, &closed_already, "close").await.status(),
        StatusCode::OK
    );
    let two_hours_ago = Timestamp::now().minus(Duration::from_secs(7200));
    for id in [&idle, &closed_already] {
        last_active(&app, id, two_hours_ago).await;
    }
    // The busy one went quiet half an hour ago: within the hour.
    last_active(
        &app,
        &busy,
        Timestamp::now().minus(Duration::from_secs(30 * 60)),
    )
    .await;

    let closed = closed_eventually(&app, &idle).await;
    assert_eq!(closed["last_seq"], 1);
    // A conversation made idle after that round is closed by a later one; by then every
    // round has passed the busy one over.
    let before = conversation(&app, &busy).await;
    let marker = app.conversation().await;
    last_active(&app, &marker, two_hours_ago).await;
    closed_eventually(&app, &marker).await;
    assert_eq!(conversation(&app, &busy).await, before);
    assert_eq!(before["status"], "active");
    assert_eq!(
        app.activities(&closed_already).await.len(),
        1,
        "closed once, by the API"
    );
}

/// Two nodes run the closer over one database: each idle conversation is closed once.
async fn several_nodes_close_an_idle_conversation_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.conversation_idle_close_hours = Some(1.0);
        c.conversation_idle_check_secs = 1;
    })
    .await;
    let node = Node::start_with(
        &app.database_url,
        &[
            ("CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS", "1"),
            ("CONVERGER_CONVERSATION_IDLE_CHECK_SECS", "1"),
        ],
        std::process::Stdio::null(),
    );
    node.ready(&app.http).await;
    let ch = app.websocket_channel().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(s(&app.create_conversation(s(&ch, "id"), None).await, "id").to_owned());
    }
    let long_ago = Timestamp::now().minus(Duration::from_secs(3 * 3600));
    for id in &ids {
        last_active(&app, id, long_ago).await;
    }
    for id in &ids {
        let closed = closed_eventually(&app, id).await;
        assert_eq!(closed["last_seq"], 1, "{id} closed more than once");
    }
    for id in &ids {
        let acts = app.activities(id).await;
        assert_eq!(acts.len(), 1, "{acts:?}");
        assert_eq!(acts[0]["metadata"]["reason"], "idle");
    }
}

async fn external_id_search_stays_within_the_tenant(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let old = app.create_conversation(s(&ch, "id"), Some("user-1")).await;
    assert_eq!(
        lifecycle(&app, s(&old, "id"), "close").await.status(),
        StatusCode::OK
    );
    let new = app.create_conversation(s(&ch, "id"), Some("user-1")).await;
    app.create_conversation(s(&ch, "id"), Some("user-2")).await;
    let (_, other_key) = app.create_tenant("other").await;
    let other_ch = app
        .create_channel_as(&other_key, "websocket", json!({}))
        .await;
    let theirs = expect_data(
        app.with_key(&other_key, Method::POST, "/api/v1/conversations")
            .json(&json!({"channel_id": s(&other_ch, "id"), "external_id": "user-1"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;

    let key = app.api_key.clone();
    let ours: Vec<_> = search(&app, &key, "external_id=user-1")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        ours,
        [s(&new, "id"), s(&old, "id")],
        "newest first, every status"
    );
    let active = search(&app, &key, "external_id=user-1&status=active").await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].0, s(&new, "id"));
    let paged = search(&app, &key, "external_id=user-1&limit=1").await;
    assert_eq!(paged.len(), 1);
    let other: Vec<_> = search(&app, &other_key, "external_id=user-1")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(other, [s(&theirs, "id")]);
    // Another tenant's channel filters to nothing, never to its conversations.
    assert!(
        search(
            &app,
            &key,
            &format!("external_id=user-1&channel_id={}", s(&other_ch, "id"))
        )
        .await
        .is_empty()
    );
    assert!(search(&app, &key, "external_id=nobody").await.is_empty());
}
