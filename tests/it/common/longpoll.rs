//! A Phoenix long-poll client for tests, sending what phoenix.js sends: the socket
//! params (the client token as `token`) and `vsn` on every request, the session token
//! appended as another `token`, batches as NDJSON.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::TestApp;

/// Longest wait for one expected message, across polls.
const WAIT: Duration = Duration::from_secs(30);

/// One answer: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub http: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The Phoenix long-poll status of the body.
    pub fn status(&self) -> u64 {
        self.body["status"]
            .as_u64()
            .unwrap_or_else(|| panic!("no status in {self:?}"))
    }

    /// `error.code` of a failure.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {self:?}"))
    }

    /// Asserts a failure: HTTP status, Phoenix status and error code.
    #[track_caller]
    pub fn assert_failure(&self, http: u16, status: u64, code: &str) {
        assert_eq!(
            (self.http.as_u16(), self.status(), self.code()),
            (http, status, code),
            "{self:?}"
        );
        assert!(self.body["error"]["message"].is_string(), "{self:?}");
    }
}

/// The long-poll endpoint of the node serving HTTP at `base`.
pub fn longpoll_endpoint(base: &str) -> String {
    format!("{base}/socket/longpoll")
}

/// One long-poll session.
pub struct LongPoll {
    http: reqwest::Client,
    /// The endpoint with the socket params (`token`, `vsn`).
    url: String,
    pub session: String,
    /// Messages received but not yet taken.
    pending: std::collections::VecDeque<Value>,
}

/// Sends one long-poll request; `query` is appended as is.
pub async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<String>,
) -> Answer {
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/x-ndjson")
            .body(body);
    }
    let resp = req.send().await.expect("long-poll request");
    let http = resp.status();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not JSON ({e}), HTTP {http}: {text}"));
    Answer { http, body }
}

impl LongPoll {
    /// Opens a session with a client token and `vsn=2.0.0`; panics unless it opens.
    pub async fn open(base: &str, http: &reqwest::Client, token: &str) -> LongPoll {
        let url = format!("{}?token={token}&vsn=2.0.0", longpoll_endpoint(base));
        let opened = request(http, reqwest::Method::GET, &format!("{url}&"), None).await;
        assert_eq!(
            (opened.http, opened.status()),
            (StatusCode::OK, 410),
            "{opened:?}"
        );
        assert_eq!(opened.body["messages"], Value::Array(vec![]));
        let session = opened.body["token"].as_str().expect("token").to_owned();
        LongPoll {
            http: http.clone(),
            url,
            session,
            pending: Default::default(),
        }
    }

    fn session_url(&self) -> String {
        format!("{}&token={}", self.url, self.session)
    }

    /// Polls once.
    pub async fn poll(&self) -> Answer {
        request(&self.http, reqwest::Method::GET, &self.session_url(), None).await
    }

    /// Posts a raw body as NDJSON.
    pub async fn post_raw(&self, body: String) -> Answer {
        request(
            &self.http,
            reqwest::Method::POST,
            &self.session_url(),
            Some(body),
        )
        .await
    }

    /// Posts frames as one batch; panics unless accepted.
    pub async fn send(&self, frames: &[Value]) {
        let body = frames
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let answer = self.post_raw(body).await;
        assert_eq!(
            (answer.http, answer.status()),
            (StatusCode::OK, 200),
            "{answer:?}"
        );
    }

    /// The next message, polling as long as it takes (up to a bound).
    pub async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(message) = self.pending.pop_front() {
                return message;
            }
            assert!(tokio::time::Instant::now() < deadline, "no message in time");
            let answer = self.poll().await;
            match (answer.http, answer.status()) {
                (StatusCode::OK, 200) => {
                    assert_eq!(answer.body["token"], self.session.as_str());
                    for text in answer.body["messages"].as_array().expect("messages") {
                        let text = text.as_str().expect("messages are JSON text");
                        self.pending
                            .push_back(serde_json::from_str(text).expect("a JSON frame"));
                    }
                }
                (StatusCode::OK, 204) => {}
                _ => panic!("unexpected poll answer {answer:?}"),
            }
        }
    }

    /// Joins a topic (join ref = ref) and returns the reply.
    pub async fn join(&mut self, topic: &str, join_ref: &str, params: Value) -> Value {
        self.send(&[serde_json::json!([
            join_ref, join_ref, topic, "phx_join", params
        ])])
        .await;
        self.recv().await
    }

    /// Receives `new_activity` pushes until `count` have arrived; returns their payloads.
    pub async fn activities(&mut self, count: usize) -> Vec<Value> {
        let mut found = Vec::new();
        while found.len() < count {
            let frame = self.recv().await;
            if frame[3] == "new_activity" {
                found.push(frame[4].clone());
            }
        }
        found
    }

    /// Round-trips a heartbeat: every message the server queued before it is returned.
    pub async fn drain(&mut self) -> Vec<Value> {
        self.send(&[serde_json::json!([null, "hb", "phoenix", "heartbeat", {}])])
            .await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame[1] == "hb" {
                return frames;
            }
            frames.push(frame);
        }
    }
}

impl TestApp {
    /// This server's long-poll endpoint.
    pub fn longpoll(&self) -> String {
        longpoll_endpoint(&self.base)
    }

    /// A long-poll session on this server for this conversation and user.
    pub async fn longpoll_session(&self, conversation: &str, user: &str) -> LongPoll {
        let token = self.token(conversation, user).await;
        LongPoll::open(&self.base, &self.http, &token).await
    }
}
