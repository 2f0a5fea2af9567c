//! Credentials: tenant API keys, channel secrets, and the two kinds of JWT.
//!
//! Pure functions over bytes and keys; the HTTP and socket edges decide where a
//! credential comes from and what it may reach. A token of one kind never verifies as
//! another: every JWT carries a `typ` claim that is checked on the way in.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::domain::{ChannelId, ConversationId, TenantId};

/// Lifetime of client tokens.
pub const CLIENT_TOKEN_TTL_SECS: i64 = 3600;
/// How many characters of an API key are kept in clear to recognise it.
const API_KEY_PREFIX_CHARS: usize = 12;

/// A freshly generated tenant API key: show `key` once, store `hash` and `prefix`.
pub struct NewApiKey {
    pub key: String,
    pub hash: String,
    pub prefix: String,
}

/// Generates a tenant API key: `cvg_` and 32 random bytes in base64url.
pub fn generate_api_key() -> NewApiKey {
    let bytes: [u8; 32] = rand::rng().random();
    let key = format!("cvg_{}", URL_SAFE_NO_PAD.encode(bytes));
    NewApiKey {
        hash: hash_api_key(&key),
        prefix: key.chars().take(API_KEY_PREFIX_CHARS).collect(),
        key,
    }
}

/// The stored form of an API key: hex SHA-256. Keys are 256 random bits, so a fast
/// hash is enough; lookups by hash are exact, which also makes them constant-time with
/// respect to the key's content.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Generates a channel secret in Standard Webhooks form: `whsec_` and base64 of 32
/// random bytes.
pub fn generate_channel_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// A short fingerprint of a channel secret, carried in channel tokens so that rotating
/// the secret revokes them. Not reversible to the secret.
pub fn secret_fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(format!("converger-channel-token:{secret}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// The kinds of JWT Converger issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Channel,
    Client,
}

/// Claims of both token kinds; which are present depends on `typ`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub typ: TokenType,
    pub tenant: TenantId,
    pub channel: ChannelId,
    /// Client tokens: the one conversation they reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationId>,
    /// Client tokens: the user id, which becomes the `sender` of what they post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Channel tokens: fingerprint of the channel secret they were issued under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfp: Option<String>,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub jti: String,
}

/// A channel token's verified content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelToken {
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    pub secret_fingerprint: String,
}

/// A client token's verified content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    pub conversation_id: ConversationId,
    pub user_id: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token is of the wrong type for this use")]
    WrongType,
}

/// HS256 keys for issuing and verifying tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

impl JwtKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        // HS256 over serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The channel's token; it lives until the channel secret is rotated. It is the
    /// same on every read (and every node) for one secret: its claims are derived
    /// from the channel, its creation time and the secret's fingerprint, so reads do
    /// not mint a new never-expiring credential each time.
    pub fn issue_channel_token(
        &self,
        tenant: TenantId,
        channel: ChannelId,
        created_at: i64,
        secret: &str,
    ) -> String {
        let sfp = secret_fingerprint(secret);
        let jti = Sha256::digest(format!("converger-channel-token-id:{channel}:{sfp}").as_bytes());
        self.sign(&Claims {
            typ: TokenType::Channel,
            tenant,
            channel,
            conversation: None,
            sub: None,
            jti: URL_SAFE_NO_PAD.encode(&jti[..16]),
            sfp: Some(sfp),
            iat: created_at,
            exp: None,
        })
    }

    /// Issues a one-hour client token for one conversation and user.
    pub fn issue_client_token(
        &self,
        tenant: TenantId,
        channel: ChannelId,
        conversation: ConversationId,
        user_id: &str,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            typ: TokenType::Client,
            tenant,
            channel,
            conversation: Some(conversation),
            sub: Some(user_id.to_owned()),
            sfp: None,
            iat: now,
            exp: Some(now + CLIENT_TOKEN_TTL_SECS),
            jti: uuid::Uuid::now_v7().to_string(),
        })
    }

    /// Verifies signature, algorithm (HS256 only) and time claims.
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// Verifies a channel token.
    ///
    /// # Errors
    /// Bad signature or shape, or a token of another type.
    pub fn verify_channel_token(&self, token: &str) -> Result<ChannelToken, TokenError> {
        let claims = self.verify(token)?;
        if claims.typ != TokenType::Channel {
            return Err(TokenError::WrongType);
        }
        Ok(ChannelToken {
            tenant_id: claims.tenant,
            channel_id: claims.channel,
            secret_fingerprint: claims.sfp.ok_or(TokenError::Invalid)?,
        })
    }

    /// Verifies a client token, which must carry an expiry.
    ///
    /// # Errors
    /// Bad signature or shape, expired, or a token of another type.
    pub fn verify_client_token(&self, token: &str) -> Result<ClientToken, TokenError> {
        let claims = self.verify(token)?;
        if claims.typ != TokenType::Client {
            return Err(TokenError::WrongType);
        }
        if claims.exp.is_none() {
            return Err(TokenError::Invalid);
        }
        match (claims.conversation, claims.sub) {
            (Some(conversation_id), Some(user_id)) => Ok(ClientToken {
                tenant_id: claims.tenant,
                channel_id: claims.channel,
                conversation_id,
                user_id,
            }),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Whether a string looks like a JWT rather than an API key, so one
    /// `Authorization: Bearer` header can carry either.
    pub fn looks_like_jwt(credential: &str) -> bool {
        credential.split('.').count() == 3 && !credential.starts_with("cvg_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(b"test-secret-of-enough-length-0123456789")
    }

    #[test]
    fn api_keys_hash_and_prefix() {
        let k = generate_api_key();
        assert!(k.key.starts_with("cvg_"));
        assert_eq!(k.hash, hash_api_key(&k.key));
        assert!(k.key.starts_with(&k.prefix));
        assert_ne!(generate_api_key().key, k.key);
    }

    #[test]
    fn channel_secrets_are_standard_webhooks_secrets() {
        let s = generate_channel_secret();
        let raw = STANDARD.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn tokens_round_trip_and_keep_their_type() {
        let keys = keys();
        let (t, ch, conv) = (TenantId::new(), ChannelId::new(), ConversationId::new());
        let client = keys.issue_client_token(t, ch, conv, "u1");
        let verified = keys.verify_client_token(&client).unwrap();
        assert_eq!(verified.conversation_id, conv);
        assert_eq!(verified.user_id, "u1");
        assert_eq!(
            keys.verify_channel_token(&client),
            Err(TokenError::WrongType)
        );

        let channel = keys.issue_channel_token(t, ch, 1_700_000_000, "whsec_x");
        // Stable for one secret; another secret gives another token.
        assert_eq!(
            keys.issue_channel_token(t, ch, 1_700_000_000, "whsec_x"),
            channel
        );
        assert_ne!(
            keys.issue_channel_token(t, ch, 1_700_000_000, "whsec_y"),
            channel
        );
        assert_eq!(
            keys.verify_channel_token(&channel)
                .unwrap()
                .secret_fingerprint,
            secret_fingerprint("whsec_x")
        );
        assert_eq!(
            keys.verify_client_token(&channel),
            Err(TokenError::WrongType)
        );
    }

    #[test]
    fn rejects_other_keys_expired_and_alg_none() {
        let keys = keys();
        let token = keys.issue_client_token(
            TenantId::new(),
            ChannelId::new(),
            ConversationId::new(),
            "u",
        );
        assert_eq!(
            JwtKeys::new(b"other").verify_client_token(&token),
            Err(TokenError::Invalid)
        );

        let now = chrono::Utc::now().timestamp();
        let expired = keys.sign(&Claims {
            typ: TokenType::Client,
            tenant: TenantId::new(),
            channel: ChannelId::new(),
            conversation: Some(ConversationId::new()),
            sub: Some("u".into()),
            sfp: None,
            iat: now - 7200,
            exp: Some(now - 3600),
            jti: "j".into(),
        });
        assert_eq!(keys.verify_client_token(&expired), Err(TokenError::Expired));

        // The same claims with `alg: none` and no signature.
        let payload = token.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            keys.verify_client_token(&format!("{header}.{payload}.")),
            Err(TokenError::Invalid)
        );
        // HS512 with the right key is still refused: only HS256 is accepted.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &keys.verify(&token).unwrap(),
            &EncodingKey::from_secret(b"test-secret-of-enough-length-0123456789"),
        )
        .unwrap();
        assert_eq!(keys.verify_client_token(&hs512), Err(TokenError::Invalid));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let keys = keys();
        let token = keys.issue_client_token(
            TenantId::new(),
            ChannelId::new(),
            ConversationId::new(),
            "u",
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(
            keys.verify_client_token(&parts.join(".")),
            Err(TokenError::Invalid)
        );
    }

    proptest! {
        /// Any string is answered with a verdict, never a panic, and random input is
        /// never accepted.
        #[test]
        fn arbitrary_tokens_never_verify(s in ".{0,300}", a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,80}", c in "[A-Za-z0-9_-]{0,80}") {
            let keys = keys();
            prop_assert!(keys.verify_client_token(&s).is_err());
            let dotted = format!("{a}.{b}.{c}");
            prop_assert!(keys.verify_channel_token(&dotted).is_err());
        }
    }
}
