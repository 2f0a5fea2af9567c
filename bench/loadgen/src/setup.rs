//! Creates what the load needs through the public API: one `websocket` channel (it
//! delivers nothing, so only the ingest path is measured) and N conversations on it.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The channel and the activity URL of every conversation created on it.
pub struct Targets {
    pub channel_id: String,
    pub activity_urls: Vec<String>,
}

/// Creates the channel and `conversations` conversations, in order.
///
/// # Errors
/// The server is unreachable, refuses the key, or answers anything but 201.
pub async fn prepare(
    client: &reqwest::Client,
    base: &str,
    api_key: &str,
    conversations: u32,
) -> anyhow::Result<Targets> {
    let channel = post(
        client,
        &format!("{base}/api/v1/channels"),
        api_key,
        &json!({"name": "bench", "type": "websocket", "config": {}}),
    )
    .await
    .context("creating the bench channel")?;
    let channel_id = id_of(&channel)?;

    let mut activity_urls = Vec::with_capacity(conversations as usize);
    for i in 0..conversations {
        let conversation = post(
            client,
            &format!("{base}/api/v1/conversations"),
            api_key,
            &json!({"channel_id": channel_id}),
        )
        .await
        .with_context(|| format!("creating conversation {i}"))?;
        let id = id_of(&conversation)?;
        activity_urls.push(format!("{base}/api/v1/conversations/{id}/activities"));
    }
    Ok(Targets {
        channel_id,
        activity_urls,
    })
}

/// POSTs `body` and returns the `{"data": ...}` object of a 201 response.
async fn post(
    client: &reqwest::Client,
    url: &str,
    api_key: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(url)
        .header("x-api-key", api_key)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::CREATED {
        bail!("POST {url}: expected 201, got {status}: {text}");
    }
    let mut value: Value =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: response is not JSON"))?;
    Ok(value["data"].take())
}

fn id_of(data: &Value) -> anyhow::Result<String> {
    data["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("response data has no string `id`: {data}"))
}
