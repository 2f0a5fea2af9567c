//! Webhook signatures, pure functions over bytes.
//!
//! - Outbound: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64>`), keyed by the base64-decoded channel secret.
//! - Inbound generic channels: `x-converger-signature`, either `sha256=<hex>` (HMAC of
//!   the raw body) or `t=<unix>,v1=<hex>[,v1=<hex>...]` (HMAC of `"<t>.<body>"`),
//!   keyed by the whole secret string.
//! - Meta: `X-Hub-Signature-256: sha256=<hex>`, keyed by the app secret.
//!
//! Comparisons are constant-time (`Mac::verify_slice`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now, either way, in seconds.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// Why an inbound signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
    #[error("the signed timestamp is outside the accepted window")]
    Expired,
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`.
fn standard_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// The `webhook-signature` value for one delivery attempt.
pub fn standard_webhooks_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut m = mac(&standard_key(secret));
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()))
}

/// Verifies a Standard Webhooks delivery as a receiver would (spec §4.3): any `v1`
/// signature of the space-separated list may match; others are ignored.
///
/// # Errors
/// Malformed timestamp, timestamp out of tolerance, or no matching signature.
pub fn verify_standard_webhooks(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    let key = standard_key(secret);
    for candidate in signatures.split(' ') {
        let Some(("v1", value)) = candidate.split_once(',') else {
            continue;
        };
        let Ok(expected) = STANDARD.decode(value) else {
            continue;
        };
        let mut m = mac(&key);
        m.update(msg_id.as_bytes());
        m.update(b".");
        m.update(ts.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Checks a hex HMAC-SHA256 of `parts` concatenated.
fn hex_hmac_matches(key: &[u8], parts: &[&[u8]], hex_sig: &str) -> bool {
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let mut m = mac(key);
    for part in parts {
        m.update(part);
    }
    m.verify_slice(&expected).is_ok()
}

/// Verifies an `x-converger-signature` header against the channel secret.
///
/// # Errors
/// Malformed header, stale timestamp, or no matching signature.
pub fn verify_converger_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.trim();
    if let Some(hex_sig) = header.strip_prefix("sha256=") {
        return if hex_hmac_matches(secret.as_bytes(), &[body], hex_sig) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        };
    }
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", sig)) => candidates.push(sig),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let (Some(ts), false) = (timestamp, candidates.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    let prefix = format!("{ts}.");
    if candidates
        .iter()
        .any(|sig| hex_hmac_matches(secret.as_bytes(), &[prefix.as_bytes(), body], sig))
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Verifies Meta's `X-Hub-Signature-256: sha256=<hex>` against the app secret.
///
/// # Errors
/// Malformed header or no match.
pub fn verify_hub_signature(
    app_secret: &str,
    header: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_hmac_matches(app_secret.as_bytes(), &[body], hex_sig) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Signs a body the way `x-converger-signature: t=...,v1=...` expects (for senders and tests).
pub fn converger_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(format!("{timestamp}.").as_bytes());
    m.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(m.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn standard_webhooks_test_vector() {
        let sig = standard_webhooks_signature(SECRET, ID, TS, BODY);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        let list = format!("v1a,AAAA {sig}");
        assert_eq!(
            verify_standard_webhooks(SECRET, ID, "1649367553", &list, BODY, TS + 10),
            Ok(())
        );
        assert_eq!(
            verify_standard_webhooks(SECRET, ID, "1649367553", &sig, BODY, TS + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify_standard_webhooks(SECRET, "msg_other", "1649367553", &sig, BODY, TS),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn meta_test_vector() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.TEST1","timestamp":"1749416383","type":"text","text":{"body":"hi"}}]},"field":"messages"}]}]}"#;
        assert_eq!(body.len(), 420);
        let header = "sha256=bfc18852d7e7fcff57820b3d1d6fc1432d5b6463fcc1abbd11874381d479c01e";
        assert_eq!(
            verify_hub_signature("test_app_secret", header, body),
            Ok(())
        );
        assert_eq!(
            verify_hub_signature("other", header, body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_hub_signature("test_app_secret", "bfc1", body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn converger_signatures_both_formats() {
        let secret = "whsec_abc";
        let body = br#"{"text":"hi"}"#;
        let hex_sig = {
            let mut m = mac(secret.as_bytes());
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(
            verify_converger_signature(secret, &format!("sha256={hex_sig}"), body, 0),
            Ok(())
        );
        assert_eq!(
            verify_converger_signature(secret, &format!("sha256={hex_sig}"), b"{}", 0),
            Err(SignatureError::Mismatch)
        );

        let now = 1_700_000_000;
        let signed = converger_signature(secret, now, body);
        assert_eq!(
            verify_converger_signature(secret, &signed, body, now + 299),
            Ok(())
        );
        assert_eq!(
            verify_converger_signature(secret, &signed, body, now + 301),
            Err(SignatureError::Expired)
        );
        // During rotation several v1 may be sent; one match is enough.
        let old = converger_signature("whsec_old", now, body);
        let rotating = format!("{},{}", old, signed.split(',').nth(1).unwrap());
        assert_eq!(
            verify_converger_signature(secret, &rotating, body, now),
            Ok(())
        );
        assert_eq!(
            verify_converger_signature(secret, "t=1", body, now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_converger_signature(secret, "garbage", body, now),
            Err(SignatureError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_verify_or_panic(header in ".{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(verify_converger_signature("whsec_k", &header, &body, 0).is_err());
            prop_assert!(verify_hub_signature("k", &header, &body).is_err());
            prop_assert!(verify_standard_webhooks(SECRET, ID, &header, &header, &body, 0).is_err());
        }
    }
}
