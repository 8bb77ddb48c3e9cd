//! Stream tickets: browsers cannot set headers on an `EventSource`, so
//! `POST /v1/stream/tickets` hands a staff user a short token for
//! `GET /v1/stream?ticket=`. An access token is never accepted in a URL
//! (URLs end up in proxy and server logs); a ticket is harmless there: it is
//! valid for [`TICKET_TTL`] and for one stream only.
//!
//! A ticket is an HS256 JWT (audience `crm-stream`) signed with a key derived
//! from the JWT secret, so any instance sharing the secret accepts it and it
//! can never pass for an access token (another key, another audience). It
//! names the user, their session and a random nonce; redeeming it records
//! the nonce as used (Redis `SET NX EX` when Redis is configured, so a ticket
//! is single use across instances; this process's memory otherwise).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crm_indexer::redis_link::{Link, LinkConfig, Target};
use crm_models::ids::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::StreamSession;
use crate::error::ApiError;

/// How long a ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Clock difference tolerated between the instance that issued a ticket and
/// the one that redeems it.
const LEEWAY_S: u64 = 5;
const AUDIENCE: &str = "crm-stream";
const ISSUER: &str = "crm-api";
/// Most used nonces remembered in memory (tickets redeemed in the last
/// minute); past this, redemptions are refused until some expire.
const MAX_LOCAL_NONCES: usize = 100_000;
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSED: &str = "invalid, expired or used stream ticket";

/// What a ticket says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    sid: String,
    aud: String,
    iss: String,
    iat: i64,
    exp: i64,
    /// The nonce: a ticket is used once.
    jti: String,
}

/// A ticket as handed out.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub ticket: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Issues and redeems tickets.
pub struct Tickets {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    used: UsedNonces,
}

enum UsedNonces {
    /// Nonce -> when it may be forgotten.
    Local(Mutex<HashMap<String, Instant>>),
    Shared {
        connection: Link,
        prefix: String,
    },
}

impl Tickets {
    /// Tickets signed with a key derived from `jwt_secret`; used nonces in
    /// Redis when `redis_url` is set.
    pub async fn new(
        jwt_secret: &[u8],
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"crm-api stream tickets v1\0")
            .chain_update(jwt_secret)
            .finalize()
            .into();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_S;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let used = match redis_url {
            None => UsedNonces::Local(Mutex::new(HashMap::new())),
            Some(url) => {
                let config = LinkConfig {
                    connect_timeout: REDIS_TIMEOUT,
                    response_timeout: Some(REDIS_TIMEOUT),
                    retries: 1,
                    backoff: None,
                };
                let connection = Target::parse(url)?.connect(config).await?;
                UsedNonces::Shared {
                    connection,
                    prefix: redis_prefix.to_string(),
                }
            }
        };
        Ok(Tickets {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            used,
        })
    }

    /// A ticket for `session`, valid from now for [`TICKET_TTL`].
    pub fn issue(&self, session: &StreamSession) -> Result<Ticket, ApiError> {
        self.issue_at(session, chrono::Utc::now().timestamp())
    }

    /// A ticket for `session` as if issued at `now` (Unix seconds).
    pub fn issue_at(&self, session: &StreamSession, now: i64) -> Result<Ticket, ApiError> {
        let ttl = i64::try_from(TICKET_TTL.as_secs()).unwrap_or(60);
        let claims = TicketClaims {
            sub: session.user_id.to_string(),
            sid: session.sid.clone(),
            aud: AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let ticket = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing a stream ticket: {e}")))?;
        Ok(Ticket {
            ticket,
            expires_at: claims.exp,
        })
    }

    /// The user and session a valid, unused ticket names; the ticket is
    /// used from now on. The caller still checks that the session holds.
    pub async fn redeem(&self, ticket: &str) -> Result<(UserId, String), ApiError> {
        let claims = jsonwebtoken::decode::<TicketClaims>(ticket, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "stream ticket refused");
                ApiError::Unauthorized(REFUSED)
            })?
            .claims;
        let user_id: UserId = claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized(REFUSED))?;
        if claims.jti.is_empty() || !self.first_use(&claims.jti).await? {
            tracing::debug!(user_id = %user_id, "stream ticket used twice");
            return Err(ApiError::Unauthorized(REFUSED));
        }
        Ok((user_id, claims.sid))
    }

    /// Records the nonce; false when it was recorded before.
    async fn first_use(&self, nonce: &str) -> Result<bool, ApiError> {
        // Kept past the ticket's expiry and the leeway: by then the
        // signature check refuses the ticket anyway.
        let keep = TICKET_TTL + Duration::from_secs(2 * LEEWAY_S);
        match &self.used {
            UsedNonces::Local(used) => {
                let now = Instant::now();
                let mut used = used.lock();
                if used.len() >= MAX_LOCAL_NONCES {
                    used.retain(|_, until| *until > now);
                }
                if used.contains_key(nonce) {
                    return Ok(false);
                }
                if used.len() >= MAX_LOCAL_NONCES {
                    return Err(ApiError::Unavailable(
                        "too many stream tickets in the last minute; try again".into(),
                    ));
                }
                used.insert(nonce.to_string(), now + keep);
                Ok(true)
            }
            UsedNonces::Shared { connection, prefix } => {
                let mut connection = connection.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}ticket:{nonce}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(keep.as_secs())
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot record a stream ticket's use in Redis");
                        ApiError::Unavailable("stream tickets are unavailable; try again".into())
                    })?;
                Ok(set.is_some())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::staff::Role;

    fn session() -> StreamSession {
        StreamSession {
            user_id: UserId::new(),
            role: Role::Agent,
            sid: "family".into(),
        }
    }

    async fn tickets(secret: &[u8]) -> Tickets {
        Tickets::new(secret, None, "").await.unwrap()
    }

    #[tokio::test]
    async fn a_ticket_names_its_session_once() {
        let tickets = tickets(b"0123456789abcdef0123456789abcdef").await;
        let s = session();
        let t = tickets.issue(&s).unwrap();
        assert_eq!(
            tickets.redeem(&t.ticket).await.unwrap(),
            (s.user_id, "family".to_string())
        );
        assert!(matches!(
            tickets.redeem(&t.ticket).await,
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn expired_foreign_and_access_tokens_are_refused() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let tickets = tickets(secret).await;
        let s = session();
        let old = tickets
            .issue_at(&s, chrono::Utc::now().timestamp() - 120)
            .unwrap();
        assert!(tickets.redeem(&old.ticket).await.is_err());
        let other = Tickets::new(b"another secret, also 32 bytes long", None, "")
            .await
            .unwrap();
        assert!(tickets
            .redeem(&other.issue(&s).unwrap().ticket)
            .await
            .is_err());
        // An access token signed with the JWT secret itself is not a ticket.
        let access = crate::auth::tokens::AccessTokens::new(secret, 900)
            .issue(
                &crm_models::staff::User {
                    id: s.user_id,
                    email: crm_models::Email::parse("a@example.com").unwrap(),
                    name: "A".into(),
                    role: Role::Agent,
                    password_hash: String::new(),
                    active: true,
                    team: None,
                    created_at: crm_models::time::now(),
                    updated_at: crm_models::time::now(),
                },
                "family",
            )
            .unwrap();
        assert!(tickets.redeem(&access).await.is_err());
    }
}
