//! Phoenix Channels text frames (docs/protocols.md#frames): parsing and serialising only.
//!
//! V2 frames are 5-element JSON arrays `[join_ref, ref, topic, event, payload]`; V1
//! frames are objects `{"topic","event","payload","ref","join_ref"?}`. This module does
//! no I/O and knows nothing of topics or sessions: it turns untrusted text into a
//! [`Frame`] or an error, never a panic, and turns a [`Frame`] into compact JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The serializer a socket negotiated with its `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    /// `vsn=1.0.x` or no `vsn`: JSON object frames.
    V1,
    /// `vsn=2.0.x`: JSON array frames.
    V2,
}

impl Vsn {
    /// The serializer for a `vsn` parameter, as Phoenix's default requirements
    /// (`~> 1.0.0`, `~> 2.0.0`) select it; `None` for any other version, which refuses
    /// the connection.
    pub fn from_param(vsn: Option<&str>) -> Option<Self> {
        let Some(vsn) = vsn else {
            return Some(Vsn::V1);
        };
        let mut parts = vsn.split('.');
        let mut number = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok())
        };
        let version = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return None;
        }
        match version {
            (1, 0, _) => Some(Vsn::V1),
            (2, 0, _) => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// A `ref` or `join_ref`: opaque, echoed back unchanged. The JS client sends decimal
/// strings; some V1 clients send integers, which are kept as integers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Str(String),
    Num(serde_json::Number),
}

impl From<&str> for Ref {
    fn from(s: &str) -> Self {
        Ref::Str(s.to_owned())
    }
}

/// One message of the protocol, in either version.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Ref of the join that created the channel instance this message belongs to.
    pub join_ref: Option<Ref>,
    /// Per-message ref chosen by the client, echoed in the reply.
    pub msg_ref: Option<Ref>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// The payload of a frame. Kept apart from a plain [`Value`] so that what the server
/// sends keeps its field order (`status` before `response`, an activity's fields as the
/// REST API orders them) without a crate-wide ordered-map feature.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Any JSON; what clients send.
    Json(Value),
    /// `{"status": status, "response": response}` of a `phx_reply`.
    Reply { status: String, response: Value },
    /// Already serialised JSON, from [`Payload::serialize`].
    Encoded(String),
}

impl Payload {
    /// Serialises a value once, e.g. an activity pushed to a socket.
    pub fn serialize<T: Serialize>(value: &T) -> Payload {
        // Serialising our own types to JSON cannot fail: they have string keys only.
        Payload::Encoded(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
    }

    /// The payload as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Payload::Json(value) => value.clone(),
            Payload::Reply { status, response } => {
                json!({ "status": status, "response": response })
            }
            Payload::Encoded(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Payload::Json(value) => out.push_str(&value.to_string()),
            Payload::Reply { status, response } => {
                out.push_str("{\"status\":");
                out.push_str(&json_string(status));
                out.push_str(",\"response\":");
                out.push_str(&response.to_string());
                out.push('}');
            }
            Payload::Encoded(text) => out.push_str(text),
        }
    }
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn json_ref(r: &Option<Ref>) -> String {
    match r {
        None => "null".into(),
        Some(Ref::Str(s)) => json_string(s),
        Some(Ref::Num(n)) => n.to_string(),
    }
}

/// Why a text frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is not valid JSON")]
    Json,
    #[error("the frame does not have the shape of a {0:?} message")]
    Shape(Vsn),
}

/// The reply event.
pub const PHX_REPLY: &str = "phx_reply";
/// Sent when a channel instance is closed (after a leave, or replaced by a new join).
pub const PHX_CLOSE: &str = "phx_close";
/// Sent when a channel instance failed; the client rejoins.
pub const PHX_ERROR: &str = "phx_error";

/// `join_ref`/`ref` fields: strings, numbers or null.
fn parse_ref(value: Value) -> Result<Option<Ref>, ()> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(Ref::Str(s))),
        Value::Number(n) => Ok(Some(Ref::Num(n))),
        _ => Err(()),
    }
}

fn parse_string(value: Value) -> Result<String, ()> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(()),
    }
}

impl Frame {
    /// Parses a client's text frame.
    ///
    /// # Errors
    /// Invalid JSON, or JSON that is not a message of this version. V2 accepts arrays
    /// of five or more elements (extra ones ignored, as Phoenix does); V1 requires
    /// `topic`, `event`, `payload` and `ref` (which may be null).
    pub fn parse(vsn: Vsn, text: &str) -> Result<Frame, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|_| FrameError::Json)?;
        let shape = |_| FrameError::Shape(vsn);
        match (vsn, value) {
            (Vsn::V2, Value::Array(items)) if items.len() >= 5 => {
                let mut items = items.into_iter();
                let mut next = || items.next().unwrap_or(Value::Null);
                Ok(Frame {
                    join_ref: parse_ref(next()).map_err(shape)?,
                    msg_ref: parse_ref(next()).map_err(shape)?,
                    topic: parse_string(next()).map_err(shape)?,
                    event: parse_string(next()).map_err(shape)?,
                    payload: Payload::Json(next()),
                })
            }
            (Vsn::V1, Value::Object(mut map)) => {
                let mut take = |key: &str| map.remove(key).ok_or(FrameError::Shape(vsn));
                let topic = parse_string(take("topic")?).map_err(shape)?;
                let event = parse_string(take("event")?).map_err(shape)?;
                let payload = take("payload")?;
                let msg_ref = parse_ref(take("ref")?).map_err(shape)?;
                let join_ref =
                    parse_ref(map.remove("join_ref").unwrap_or(Value::Null)).map_err(shape)?;
                Ok(Frame {
                    join_ref,
                    msg_ref,
                    topic,
                    event,
                    payload: Payload::Json(payload),
                })
            }
            _ => Err(FrameError::Shape(vsn)),
        }
    }

    /// Serialises as compact JSON (no spaces, so clients that split on commas work).
    /// V1 frames carry no `join_ref`, as Phoenix's V1 serializer emits none.
    pub fn encode(&self, vsn: Vsn) -> String {
        let mut out = String::with_capacity(64);
        match vsn {
            Vsn::V2 => {
                out.push('[');
                out.push_str(&json_ref(&self.join_ref));
                out.push(',');
                out.push_str(&json_ref(&self.msg_ref));
                out.push(',');
                out.push_str(&json_string(&self.topic));
                out.push(',');
                out.push_str(&json_string(&self.event));
                out.push(',');
                self.payload.write(&mut out);
                out.push(']');
            }
            Vsn::V1 => {
                out.push_str("{\"topic\":");
                out.push_str(&json_string(&self.topic));
                out.push_str(",\"event\":");
                out.push_str(&json_string(&self.event));
                out.push_str(",\"payload\":");
                self.payload.write(&mut out);
                out.push_str(",\"ref\":");
                out.push_str(&json_ref(&self.msg_ref));
                out.push('}');
            }
        }
        out
    }

    /// A `phx_reply` with `{"status": status, "response": response}`.
    pub fn reply(
        join_ref: Option<Ref>,
        msg_ref: Option<Ref>,
        topic: &str,
        status: &str,
        response: Value,
    ) -> Frame {
        Frame {
            join_ref,
            msg_ref,
            topic: topic.to_owned(),
            event: PHX_REPLY.to_owned(),
            payload: Payload::Reply {
                status: status.to_owned(),
                response,
            },
        }
    }

    /// A server push to one subscriber: `ref` is null.
    pub fn push(join_ref: Option<Ref>, topic: &str, event: &str, payload: Payload) -> Frame {
        Frame {
            join_ref,
            msg_ref: None,
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        }
    }

    /// `phx_close` of a channel instance: its join ref as both refs.
    pub fn close(join_ref: Option<Ref>, topic: &str) -> Frame {
        Frame {
            msg_ref: join_ref.clone(),
            join_ref,
            topic: topic.to_owned(),
            event: PHX_CLOSE.to_owned(),
            payload: Payload::Json(json!({})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(r: &str) -> Option<Ref> {
        Some(Ref::from(r))
    }

    #[test]
    fn vsn_selection() {
        assert_eq!(Vsn::from_param(None), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::from_param(Some("2.0.3")), Some(Vsn::V2));
        for bad in [
            "", "2", "2.0", "2.1.0", "3.0.0", "2.0.0.1", "2.0.x", "v2.0.0", "2.0.-1", "2.0.+1",
        ] {
            assert_eq!(Vsn::from_param(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn v2_join_from_the_spec() {
        let f = Frame::parse(
            Vsn::V2,
            r#"["3","3","room:42","phx_join",{"last_seen_id":1017}]"#,
        )
        .unwrap();
        assert_eq!(f.join_ref, s("3"));
        assert_eq!(f.msg_ref, s("3"));
        assert_eq!(f.topic, "room:42");
        assert_eq!(f.event, "phx_join");
        assert_eq!(f.payload, Payload::Json(json!({"last_seen_id": 1017})));
    }

    #[test]
    fn v2_replies_from_the_spec() {
        let ok = Frame::reply(s("3"), s("3"), "room:42", "ok", json!({}));
        assert_eq!(
            ok.encode(Vsn::V2),
            r#"["3","3","room:42","phx_reply",{"status":"ok","response":{}}]"#
        );
        let refused = Frame::reply(
            s("3"),
            s("3"),
            "room:42",
            "error",
            json!({"reason": "unauthorized"}),
        );
        assert_eq!(
            refused.encode(Vsn::V2),
            r#"["3","3","room:42","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#
        );
        let unmatched = Frame::reply(
            None,
            s("3"),
            "room:42",
            "error",
            json!({"reason": "unmatched topic"}),
        );
        assert_eq!(
            unmatched.encode(Vsn::V2),
            r#"[null,"3","room:42","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn v2_push_leave_close_and_heartbeat_from_the_spec() {
        let push =
            Frame::parse(Vsn::V2, r#"["3","7","room:42","new_msg",{"body":"hello"}]"#).unwrap();
        assert_eq!((push.join_ref, push.msg_ref), (s("3"), s("7")));
        #[derive(Serialize)]
        struct Msg {
            id: u32,
            body: &'static str,
        }
        let server_push = Frame::push(
            s("3"),
            "room:42",
            "new_msg",
            Payload::serialize(&Msg {
                id: 1018,
                body: "hello",
            }),
        );
        assert_eq!(
            server_push.encode(Vsn::V2),
            r#"["3",null,"room:42","new_msg",{"id":1018,"body":"hello"}]"#
        );

        let leave = Frame::parse(Vsn::V2, r#"["3","9","room:42","phx_leave",{}]"#).unwrap();
        assert_eq!(leave.event, "phx_leave");
        assert_eq!(
            Frame::reply(s("3"), s("9"), "room:42", "ok", json!({})).encode(Vsn::V2),
            r#"["3","9","room:42","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            Frame::close(s("3"), "room:42").encode(Vsn::V2),
            r#"["3","3","room:42","phx_close",{}]"#
        );

        let hb = Frame::parse(Vsn::V2, r#"[null,"12","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(
            (hb.join_ref.clone(), hb.topic.as_str(), hb.event.as_str()),
            (None, "phoenix", "heartbeat")
        );
        assert_eq!(
            Frame::reply(None, hb.msg_ref, "phoenix", "ok", json!({})).encode(Vsn::V2),
            r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn v2_extra_elements_are_ignored_and_short_arrays_refused() {
        let f = Frame::parse(Vsn::V2, r#"[null,"1","phoenix","heartbeat",{},"extra"]"#).unwrap();
        assert_eq!(f.payload, Payload::Json(json!({})));
        assert_eq!(
            Frame::parse(Vsn::V2, r#"[null,"1","phoenix","heartbeat"]"#),
            Err(FrameError::Shape(Vsn::V2))
        );
        assert_eq!(
            Frame::parse(Vsn::V2, r#"[null,"1",7,"heartbeat",{}]"#),
            Err(FrameError::Shape(Vsn::V2))
        );
        assert_eq!(
            Frame::parse(Vsn::V2, r#"[{},"1","t","e",{}]"#),
            Err(FrameError::Shape(Vsn::V2))
        );
        assert_eq!(Frame::parse(Vsn::V2, "[null,"), Err(FrameError::Json));
    }

    #[test]
    fn v1_frames_from_the_spec() {
        let join = Frame::parse(
            Vsn::V1,
            r#"{"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}"#,
        )
        .unwrap();
        assert_eq!(
            (join.join_ref, join.msg_ref, join.topic.as_str()),
            (s("1"), s("1"), "room:lobby")
        );

        let hb = Frame::parse(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"12"}"#,
        )
        .unwrap();
        assert_eq!(hb.join_ref, None);
        assert_eq!(
            Frame::reply(None, hb.msg_ref, "phoenix", "ok", json!({})).encode(Vsn::V1),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"12"}"#
        );
        // Broadcast-like pushes have a null ref and never a join_ref.
        assert_eq!(
            Frame::push(s("1"), "room:lobby", "new_msg", Payload::Json(json!({}))).encode(Vsn::V1),
            r#"{"topic":"room:lobby","event":"new_msg","payload":{},"ref":null}"#
        );
    }

    #[test]
    fn v1_requires_ref_and_keeps_integer_refs() {
        assert_eq!(
            Frame::parse(
                Vsn::V1,
                r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#
            ),
            Err(FrameError::Shape(Vsn::V1))
        );
        let f = Frame::parse(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":5}"#,
        )
        .unwrap();
        assert_eq!(
            Frame::reply(None, f.msg_ref, "phoenix", "ok", json!({})).encode(Vsn::V1),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":5}"#
        );
        assert_eq!(
            Frame::parse(Vsn::V1, r#"[null,"1","phoenix","heartbeat",{}]"#),
            Err(FrameError::Shape(Vsn::V1))
        );
    }

    #[test]
    fn round_trips_through_both_versions() {
        let f = Frame {
            join_ref: s("4"),
            msg_ref: s("9"),
            topic: "conversation:x".into(),
            event: "new_activity".into(),
            payload: Payload::Json(json!({"text": "a,\"b\""})),
        };
        assert_eq!(Frame::parse(Vsn::V2, &f.encode(Vsn::V2)).unwrap(), f);
        let v1 = Frame::parse(Vsn::V1, &f.encode(Vsn::V1)).unwrap();
        assert_eq!(
            v1,
            Frame {
                join_ref: None,
                ..f
            }
        );
    }

    proptest! {
        /// Untrusted input gets a verdict, never a panic.
        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = Frame::parse(Vsn::V1, &text);
            let _ = Frame::parse(Vsn::V2, &text);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Frame::parse(Vsn::V1, &text);
            let _ = Frame::parse(Vsn::V2, &text);
        }

        /// JSON-shaped input near the valid grammar, also never a panic; whatever parses
        /// encodes and parses back to itself.
        #[test]
        fn near_valid_frames_round_trip(
            join_ref in proptest::option::of("[0-9]{1,4}"),
            msg_ref in proptest::option::of("[0-9]{1,4}"),
            topic in "[a-z:0-9-]{0,20}",
            event in "[a-z_]{0,12}",
            extra in 0usize..3,
        ) {
            let mut items = vec![json!(join_ref), json!(msg_ref), json!(topic), json!(event), json!({"k": 1})];
            items.extend(std::iter::repeat_n(json!(null), extra));
            let text = Value::Array(items).to_string();
            let f = Frame::parse(Vsn::V2, &text).unwrap();
            prop_assert_eq!(Frame::parse(Vsn::V2, &f.encode(Vsn::V2)).unwrap(), f);
        }

        #[test]
        fn version_parameter_never_panics(vsn in ".{0,20}") {
            let _ = Vsn::from_param(Some(&vsn));
        }
    }
}
