//! The egress policy from outside: tenants cannot point channels at internal
//! addresses, deliveries never reach one the policy closes, redirects stay on their
//! origin, and a delivery that is let through to loopback never acts on the admin API.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};
use crate::delivery::{post, settled_delivery, webhook_conversation};

both_backends!(
    internal_destinations_are_refused_when_a_channel_is_written,
    deliveries_to_closed_addresses_fail_as_egress_refused,
    redirects_to_another_port_are_refused,
    deliveries_never_act_on_the_admin_api,
);

/// A server whose egress policy is the default: public destinations only.
async fn closed_app(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |c| c.egress_allow.clear()).await
}

const INTERNAL: &[&str] = &[
    "http://127.0.0.1:4000/admin/api/tenants",
    "http://[::1]/",
    "http://localhost/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://[::ffff:127.0.0.1]/",
    "http://user@127.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/",
    "http://[fd00::1]/",
];

/// A 422 whose field error for `field` names the egress policy.
async fn assert_refused(response: reqwest::Response, field: &str, url: &str) {
    let error = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields = &error["details"]["fields"];
    assert!(
        fields.as_array().is_some_and(|f| f.iter().any(
            |e| e["field"] == field && e["message"].as_str().unwrap().contains("egress policy")
        )),
        "{url}: {error}"
    );
}

async fn internal_destinations_are_refused_when_a_channel_is_written(backend: Backend) {
    let app = closed_app(backend).await;
    for &url in INTERNAL {
        let cases = [
            ("webhook", json!({"url": url}), "config.url"),
            (
                "whatsapp_meta",
                json!({"phone_number_id": "106540352242922", "access_token": "t",
                       "verify_token": "v", "app_secret": "s", "api_base_url": url}),
                "config.api_base_url",
            ),
            (
                "whatsapp_infobip",
                json!({"base_url": url, "api_key": "k", "sender": "441134960000"}),
                "config.base_url",
            ),
        ];
        for (kind, config, field) in cases {
            let response = app
                .req(Method::POST, "/api/v1/channels")
                .json(&json!({"name": "n", "type": kind, "config": config}))
                .send()
                .await
                .unwrap();
            assert_refused(response, field, url).await;
        }
    }
    // Nothing was written.
    let list = expect_data(
        app.req(Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list, json!([]));

    // Headers that steer routing or framing are not the tenant's to set.
    for header in [
        "Host",
        "X-Forwarded-For",
        "Forwarded",
        "Connection",
        "Transfer-Encoding",
    ] {
        let response = app
            .req(Method::POST, "/api/v1/channels")
            .json(&json!({"name": "n", "type": "webhook", "config": {
                "url": "https://hooks.example.com/in", "headers": {header: "127.0.0.1"}}}))
            .send()
            .await
            .unwrap();
        let error = expect_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(
            error["details"]["fields"][0]["field"],
            format!("config.headers.{header}"),
            "{error}"
        );
    }

    // A public destination is accepted, and cannot be changed into an internal one.
    let channel = app
        .create_channel("webhook", json!({"url": "https://hooks.example.com/in"}))
        .await;
    let response = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&channel, "id")),
        )
        .json(&json!({"config": {"url": "http://169.254.169.254/"}}))
        .send()
        .await
        .unwrap();
    assert_refused(response, "config.url", "patch").await;
    let read = expect_data(
        app.req(
            Method::GET,
            &format!("/api/v1/channels/{}", s(&channel, "id")),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["config"]["url"], "https://hooks.example.com/in");
}

/// A channel that points at loopback although the node's policy closes it (written
/// before the policy, or by a node with another allow-list) is never delivered to.
async fn deliveries_to_closed_addresses_fail_as_egress_refused(backend: Backend) {
    let app = closed_app(backend).await;
    let sink = Sink::start().await;
    let channel = app
        .store
        .insert_channel(
            app.tenant_id,
            converger::store::NewChannel {
                name: "written before the policy".into(),
                kind: converger::domain::ChannelType::Webhook,
                secret: converger::auth::generate_channel_secret(),
                config: json!({"url": format!("{}/hook", sink.url)}),
            },
        )
        .await
        .unwrap();
    let conv = app
        .create_conversation(&channel.id.to_string(), Some("customer-1"))
        .await;
    let activity = post(&app, &conv, "must not leave").await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert_eq!(delivery["attempts"], 1, "permanent: {delivery}");
    assert!(
        s(&delivery, "last_error").starts_with("egress_refused"),
        "{delivery}"
    );
    assert!(sink.received().is_empty());
}

async fn redirects_to_another_port_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let elsewhere = Sink::start().await;
    let sink = Sink::start().await;
    // Same host, another port: another origin.
    sink.always(Reply::status(307).header("Location", &format!("{}/stolen", elsewhere.url)));
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    let activity = post(&app, &conv, "stay here").await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert!(
        s(&delivery, "last_error").contains("redirect"),
        "{delivery}"
    );
    assert_eq!(sink.received().len(), 1);
    assert!(elsewhere.received().is_empty());
}

/// Even where loopback is open to deliveries (as in these tests), a tenant's webhook
/// aimed at the node's own admin API is refused by the admin guard.
async fn deliveries_never_act_on_the_admin_api(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (victim, victim_key) = app.create_tenant("victim").await;
    let url = format!("{}/admin/api/tenants/{victim}/rotate_key", app.base);
    let channel = app.create_channel("webhook", json!({"url": url})).await;
    let conv = app.create_conversation(s(&channel, "id"), Some("x")).await;
    let activity = post(&app, &conv, "rotate it").await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert!(s(&delivery, "last_error").contains("403"), "{delivery}");
    // The victim's key still works.
    let response = app
        .with_key(&victim_key, Method::GET, "/api/v1/channels")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
