//! Access tokens (HS256 JWTs) and the random secrets behind refresh tokens and
//! API keys, which are stored only as their SHA-256.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crm_models::staff::{Role, User};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// `iss` of every access token.
pub const ISSUER: &str = "crm-api";
/// `aud` of every access token.
pub const AUDIENCE: &str = "crm";
/// Clock skew tolerated on `exp`, `nbf` and `iat`, between instances behind
/// a load balancer.
pub const LEEWAY_S: u64 = 5;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The role when the token was issued. Authentication uses the stored
    /// role instead, so that a change takes effect at once.
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// The session: the refresh-token family the token was issued in.
    /// Ending the session (logout, reuse of a refresh token, a new
    /// password, deactivation) ends its access tokens.
    pub sid: String,
}

/// Why a token is refused (for the debug log; the client is told nothing).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("no session id")]
    NoSession,
}

/// Issues and checks access tokens with one HS256 secret.
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: i64,
    /// Tokens whose signature and claims were checked, by their exact text:
    /// a client sends the same token with every request until it expires,
    /// and only the expiry can change the answer (`nbf` and `iat` were in
    /// the past once, and stay there). Sessions are checked on every use.
    verified: Mutex<HashMap<String, Claims>>,
}

/// Most verified tokens remembered; when full, the memory starts again
/// empty.
const VERIFIED_CAPACITY: usize = 4096;

impl AccessTokens {
    pub fn new(secret: &[u8], ttl_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        // Times are checked in `verify_at`, against one clock, all with
        // the same leeway; serde makes `exp`, `nbf` and `iat` mandatory.
        validation.leeway = LEEWAY_S;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        AccessTokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_s: i64::try_from(ttl_s).unwrap_or(i64::MAX).min(MAX_TTL_S),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds an access token stays valid (`expires_in`).
    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// A signed token for this user in session `sid`, valid from now for the TTL.
    pub fn issue(&self, user: &User, sid: &str) -> Result<String, ApiError> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.id.to_string(),
            role: user.role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: iat.saturating_add(self.ttl_s),
            nbf: iat,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: sid.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing an access token: {e}")))
    }

    /// The claims of a token this service signed and that is valid now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    pub(crate) fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let leeway = LEEWAY_S as i64;
        let unexpired = |c: &Claims| c.exp.saturating_add(leeway) >= now;
        if let Some(claims) = self.verified.lock().get(token) {
            if unexpired(claims) {
                return Ok(claims.clone());
            }
        }
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims;
        if !unexpired(&claims) {
            return Err(TokenError::Expired);
        }
        if claims.nbf.saturating_sub(leeway) > now || claims.iat.saturating_sub(leeway) > now {
            return Err(TokenError::NotYetValid);
        }
        if claims.sid.is_empty() {
            return Err(TokenError::NoSession);
        }
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_CAPACITY {
            // Also forgets the expired ones.
            verified.clear();
        }
        verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }
}

/// Longest lifetime accepted for any token: ten years. Keeps time arithmetic
/// far from overflow whatever the configuration says.
pub const MAX_TTL_S: i64 = 10 * 365 * 24 * 3600;

/// 32 random bytes from the OS, base64url without padding (43 characters).
pub fn random_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// How secrets are stored and looked up: SHA-256, lowercase hex. A plain
/// hash suffices: the secrets are 256 random bits, not guessable passwords.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::ids::UserId;
    use crm_models::Email;

    fn user(role: Role) -> User {
        let now = crm_models::time::now();
        User {
            id: UserId::new(),
            email: Email::parse("ann@example.com").unwrap(),
            name: "Ann".into(),
            role,
            password_hash: String::new(),
            active: true,
            team: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn sign(claims: &serde_json::Value, secret: &[u8], alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let tokens = AccessTokens::new(SECRET, 900);
        let u = user(Role::Agent);
        let claims = tokens
            .verify(&tokens.issue(&u, "session-1").unwrap())
            .unwrap();
        assert_eq!(claims.sub, u.id.to_string());
        assert_eq!(claims.sid, "session-1");
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.role, Role::Agent);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.jti.len(), 36);
    }

    #[test]
    fn a_token_verified_before_is_refused_once_it_expires() {
        let tokens = AccessTokens::new(SECRET, 900);
        let token = tokens.issue(&user(Role::Agent), "s").unwrap();
        let exp = tokens.verify(&token).unwrap().exp;
        let last_second = exp + LEEWAY_S as i64;
        assert!(tokens.verify_at(&token, last_second).is_ok());
        for _ in 0..2 {
            // Remembered or not, an expired token is refused.
            assert!(tokens.verify_at(&token, last_second + 1).is_err());
        }
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
        assert!(
            tokens.verify(&tampered).is_err(),
            "only the exact text is remembered"
        );
    }

    #[test]
    fn foreign_expired_and_misaddressed_tokens_are_refused() {
        let tokens = AccessTokens::new(SECRET, 900);
        let now = chrono::Utc::now().timestamp();
        let good = serde_json::json!({
            "sub": UserId::new().to_string(), "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
            "exp": now + 60, "nbf": now, "iat": now, "jti": "x", "sid": "s",
        });
        assert!(tokens
            .verify(&sign(&good, SECRET, Algorithm::HS256))
            .is_ok());
        let other_secret = b"another secret, 32 bytes or more!!";
        assert!(tokens
            .verify(&sign(&good, other_secret, Algorithm::HS256))
            .is_err());
        assert!(tokens
            .verify(&sign(&good, SECRET, Algorithm::HS512))
            .is_err());
        for (field, value) in [
            ("exp", serde_json::json!(now - 120)),
            ("nbf", serde_json::json!(now + 60)),
            ("iat", serde_json::json!(now + 60)),
            ("aud", serde_json::json!("elsewhere")),
            ("iss", serde_json::json!("someone-else")),
            ("sid", serde_json::json!("")),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(
                tokens
                    .verify(&sign(&bad, SECRET, Algorithm::HS256))
                    .is_err(),
                "{field}"
            );
        }
        for field in ["exp", "nbf", "iat", "aud", "iss", "sub", "sid"] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(field);
            assert!(
                tokens
                    .verify(&sign(&bad, SECRET, Algorithm::HS256))
                    .is_err(),
                "missing {field}"
            );
        }
        // alg: none, no signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(good.to_string());
        assert!(tokens.verify(&format!("{header}.{payload}.")).is_err());
    }

    #[test]
    fn nbf_and_iat_may_be_ahead_by_the_leeway_and_no_more() {
        let tokens = AccessTokens::new(SECRET, 900);
        let now = 1_800_000_000;
        let claims = |nbf: i64, iat: i64| {
            serde_json::json!({
                "sub": UserId::new().to_string(), "role": "agent", "iss": ISSUER,
                "aud": AUDIENCE, "exp": now + 600, "nbf": nbf, "iat": iat, "jti": "x", "sid": "s",
            })
        };
        let leeway = LEEWAY_S as i64;
        for (nbf, iat, ok) in [
            (now, now, true),
            (now + leeway, now, true),
            (now, now + leeway, true),
            (now + leeway + 1, now, false),
            (now, now + leeway + 1, false),
            (now - 300, now - 300, true),
        ] {
            let token = sign(&claims(nbf, iat), SECRET, Algorithm::HS256);
            let result = tokens.verify_at(&token, now);
            assert_eq!(result.is_ok(), ok, "nbf {nbf} iat {iat}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(TokenError::NotYetValid)));
            }
        }
    }

    #[test]
    fn secrets_are_random_and_stored_as_sha256_hex() {
        let a = random_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_secret());
        assert!(URL_SAFE_NO_PAD.decode(&a).is_ok());
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
