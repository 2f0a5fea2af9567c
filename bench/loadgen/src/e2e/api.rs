//! The few REST calls a benchmark needs: create a channel, conversations, client tokens.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

/// A tenant's view of one converger server.
pub struct Api {
    client: reqwest::Client,
    base: String,
    api_key: String,
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:4400`) with at most `pool` idle
    /// connections kept.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(base: &str, api_key: &str, timeout: Duration, pool: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            base.starts_with("http://127.0.0.") || base.starts_with("http://localhost"),
            "only local servers (http://127.0.0.x) are benchmarked"
        );
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client (connection pool) used for every call.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The tenant API key.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// POSTs `body` to `base + path` and returns the whole JSON body of a 201.
    ///
    /// # Errors
    /// Transport errors, any status but 201, a body that is not JSON.
    pub async fn post_created(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .post(&url)
            .header("x-api-key", &self.api_key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::CREATED {
            bail!("POST {url}: expected 201, got {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: response is not JSON"))
    }

    /// Creates a channel of `kind` with `config` and returns its id.
    ///
    /// # Errors
    /// As [`Api::post_created`]; a response without `data.id`.
    pub async fn create_channel(
        &self,
        name: &str,
        kind: &str,
        config: Value,
    ) -> anyhow::Result<String> {
        let body = self
            .post_created(
                "/api/v1/channels",
                &json!({"name": name, "type": kind, "config": config}),
            )
            .await
            .context("creating the bench channel")?;
        string_at(&body, "/data/id")
    }

    /// Creates `n` conversations on `channel_id`, `parallel` requests at a time, and
    /// returns their ids in creation order.
    ///
    /// # Errors
    /// The first failed creation.
    pub async fn create_conversations(
        &self,
        channel_id: &str,
        n: usize,
        parallel: usize,
    ) -> anyhow::Result<Vec<String>> {
        futures_util::stream::iter(0..n)
            .map(|i| async move {
                let body = self
                    .post_created("/api/v1/conversations", &json!({"channel_id": channel_id}))
                    .await
                    .with_context(|| format!("creating conversation {i}"))?;
                string_at(&body, "/data/id")
            })
            .buffered(parallel.max(1))
            .try_collect()
            .await
    }

    /// Issues one client token per conversation (`user_id` = `bench-<i>`), `parallel`
    /// requests at a time. The server's per-address token limit must be off
    /// (`CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE=0`) for more than a few.
    ///
    /// # Errors
    /// The first refused token.
    pub async fn create_tokens(
        &self,
        conversations: &[String],
        parallel: usize,
    ) -> anyhow::Result<Vec<String>> {
        futures_util::stream::iter(conversations.iter().enumerate())
            .map(|(i, id)| async move {
                let body = self
                    .post_created(
                        "/api/v1/tokens",
                        &json!({"conversation_id": id, "user_id": format!("bench-{i}")}),
                    )
                    .await
                    .with_context(|| format!("issuing a token for conversation {id}"))?;
                string_at(&body, "/token")
            })
            .buffered(parallel.max(1))
            .try_collect()
            .await
    }

    /// The activity URL of a conversation.
    pub fn activities_url(&self, conversation_id: &str) -> String {
        format!(
            "{}/api/v1/conversations/{conversation_id}/activities",
            self.base
        )
    }
}

/// The string at JSON pointer `pointer`.
///
/// # Errors
/// Nothing there, or not a string.
pub fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("response has no string at {pointer}: {value}"))
}
