//! A Phoenix Channels WebSocket client for tests (tokio-tungstenite), and the socket
//! side of [`TestApp`].

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TestApp, expect_data};

/// Longest wait for any expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// The WebSocket endpoint of the node serving HTTP at `base` (`http://host:port`).
pub fn ws_endpoint(base: &str) -> String {
    format!("{}/socket/websocket", base.replacen("http", "ws", 1))
}

/// The endpoint with a token and, if given, a protocol version.
pub fn ws_url(base: &str, token: &str, vsn: Option<&str>) -> String {
    match vsn {
        Some(vsn) => format!("{}?token={token}&vsn={vsn}", ws_endpoint(base)),
        None => format!("{}?token={token}", ws_endpoint(base)),
    }
}

impl TestApp {
    /// This server's WebSocket endpoint, without parameters.
    pub fn ws(&self) -> String {
        ws_endpoint(&self.base)
    }

    /// This server's WebSocket endpoint with a token and a protocol version.
    pub fn url(&self, token: &str, vsn: Option<&str>) -> String {
        ws_url(&self.base, token, vsn)
    }

    /// A client token for a user in a conversation, issued with the tenant key.
    pub async fn token(&self, conversation: &str, user: &str) -> String {
        let resp = self
            .req(Method::POST, "/api/v1/tokens")
            .json(&json!({"conversation_id": conversation, "user_id": user}))
            .send()
            .await
            .expect("request");
        expect_data(resp, StatusCode::CREATED).await["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A new conversation on a new websocket channel; returns its id.
    pub async fn conversation(&self) -> String {
        let channel = self.websocket_channel().await;
        let conversation = self
            .create_conversation(channel["id"].as_str().expect("id"), None)
            .await;
        conversation["id"].as_str().expect("id").to_owned()
    }

    /// Posts a message with the tenant key; returns the activity.
    pub async fn post(&self, conversation: &str, text: &str) -> Value {
        let resp = self
            .post_activity(conversation, json!({"text": text}))
            .await;
        expect_data(resp, StatusCode::CREATED).await
    }

    /// A V2 socket on this server for this conversation and user.
    pub async fn socket(&self, conversation: &str, user: &str) -> Socket {
        let token = self.token(conversation, user).await;
        let url = self.url(&token, Some("2.0.0"));
        match &self.tls_cert_pem {
            Some(pem) => Socket::connect_tls(&url, pem).await,
            None => Socket::connect(&url).await,
        }
    }
}

/// A rustls client configuration trusting only the certificate in `pem`.
pub fn client_tls(pem: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.expect("PEM certificate"))
            .expect("usable root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The status of a refused handshake.
pub async fn refused(request: impl IntoClientRequest + Unpin) -> u16 {
    refusal(request).await.0
}

/// The status and JSON body of a refused handshake.
pub async fn refusal(request: impl IntoClientRequest + Unpin) -> (u16, Value) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the handshake succeeded"),
    }
}

pub struct Socket {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    pub async fn connect(url: &str) -> Socket {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Socket { ws }
    }

    /// Connects to a `wss://` URL whose server presents the certificate in `pem`.
    pub async fn connect_tls(url: &str, pem: &[u8]) -> Socket {
        let connector = tokio_tungstenite::Connector::Rustls(client_tls(pem));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .unwrap();
        Socket { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame, as raw text.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .expect("socket closed")
                .unwrap();
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).unwrap()
    }

    /// The close frame the server ends with.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("not closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Joins and returns the reply.
    pub async fn join(&mut self, topic: &str, join_ref: &str, params: Value) -> Value {
        self.send(json!([join_ref, join_ref, topic, "phx_join", params]))
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

    /// Round-trips a heartbeat: every frame the server queued before it is returned.
    pub async fn drain(&mut self) -> Vec<Value> {
        self.send(json!([null, "hb", "phoenix", "heartbeat", {}]))
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

/// The topic of a conversation.
pub fn topic(conversation: &str) -> String {
    format!("conversation:{conversation}")
}

/// The `seq` of each activity.
pub fn seqs(activities: &[Value]) -> Vec<i64> {
    activities
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect()
}
