//! Staff users, refresh tokens and API keys ([`StaffStore`]).

use std::ops::Bound;

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableError, WriteTransaction};

use super::{
    db_err, decode, encode, insert_with_unique_hash, read_via_index, tx, update_record,
    EmbeddedStore, API_KEYS, API_KEYS_BY_HASH, REFRESH_BY_FAMILY, REFRESH_BY_USER, REFRESH_TOKENS,
    USERS, USERS_BY_EMAIL,
};
use crate::email::Email;
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, UserId};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::store::{StaffStore, StoreError, StoreResult};
use crate::time::Timestamp;

/// Revoked sessions by (revocation time in µs since the epoch, session id).
/// Created on the first revocation: a store that never had one reads empty.
const REVOKED_SESSIONS: TableDefinition<(u64, &str), ()> = TableDefinition::new("revoked_sessions");

fn micros(t: Timestamp) -> u64 {
    u64::try_from(t.timestamp_micros()).unwrap_or(0)
}

/// Records the sessions as revoked now.
fn record_revoked_sessions<'a>(
    txn: &WriteTransaction,
    sessions: impl IntoIterator<Item = &'a str>,
) -> StoreResult<()> {
    let now = micros(crate::time::now());
    let mut table = txn.open_table(REVOKED_SESSIONS).map_err(db_err)?;
    for session in sessions {
        table.insert((now, session), ()).map_err(db_err)?;
    }
    Ok(())
}

fn read_refresh(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    hash: &str,
) -> StoreResult<Option<RefreshToken>> {
    match table.get(hash).map_err(db_err)? {
        Some(bytes) => decode("refresh token", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Marks the given refresh tokens revoked.
fn revoke_tokens(txn: &WriteTransaction, hashes: &[String]) -> StoreResult<()> {
    let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
    for hash in hashes {
        if let Some(mut token) = read_refresh(&tokens, hash)? {
            if !token.revoked {
                token.revoked = true;
                let bytes = encode("refresh token", &token)?;
                tokens
                    .insert(hash.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl StaffStore for EmbeddedStore {
    // --- staff users ---

    async fn insert_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        let user = user.clone();
        let events = events.to_vec();
        self.run_clearing(&self.users, move |db| {
            let id = user.id.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(db_err)?;
                if users.get(id).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict(format!("user {} exists", user.id)));
                }
                if by_email.get(user.email.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("the email is taken".into()));
                }
                let bytes = encode("user", &user)?;
                users.insert(id, bytes.as_slice()).map_err(db_err)?;
                by_email.insert(user.email.as_str(), id).map_err(db_err)?;
            }
            tx::append_events(&txn, &events)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let epoch = match self.users.get(&id) {
            Ok(user) => return Ok(Some(user)),
            Err(epoch) => epoch,
        };
        let user: Option<User> = self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            match users.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("user", bytes.value()).map(Some),
                None => Ok(None),
            }
        })?;
        if let Some(user) = &user {
            self.users.keep(epoch, id, user.clone());
        }
        Ok(user)
    }

    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let email = email.clone();
        self.run(move |db| read_via_index(db, USERS_BY_EMAIL, USERS, email.as_str(), "user"))
            .await
    }

    async fn update_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        let user = user.clone();
        let events = events.to_vec();
        self.run_clearing(&self.users, move |db| {
            let id = user.id.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(db_err)?;
                let stored: User = match users.get(id).map_err(db_err)? {
                    Some(bytes) => decode("user", bytes.value())?,
                    None => return Err(StoreError::NotFound),
                };
                if stored.email != user.email {
                    let owner = by_email
                        .get(user.email.as_str())
                        .map_err(db_err)?
                        .map(|g| g.value());
                    if owner.is_some_and(|o| o != id) {
                        return Err(StoreError::Conflict("the email is taken".into()));
                    }
                    by_email.remove(stored.email.as_str()).map_err(db_err)?;
                    by_email.insert(user.email.as_str(), id).map_err(db_err)?;
                }
                let bytes = encode("user", &user)?;
                users.insert(id, bytes.as_slice()).map_err(db_err)?;
            }
            tx::append_events(&txn, &events)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |db| {
            let start = match after {
                Some(id) => Bound::Excluded(id.0.as_u128()),
                None => Bound::Unbounded,
            };
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in users
                .range::<u128>((start, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("user", v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn count_users(&self) -> StoreResult<u64> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            users.len().map_err(db_err)
        })
        .await
    }

    // --- refresh tokens ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let token = token.clone();
        self.run(move |db| {
            let hash = token.token_hash.as_str();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
                if tokens.get(hash).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("the refresh token exists".into()));
                }
                let bytes = encode("refresh token", &token)?;
                tokens.insert(hash, bytes.as_slice()).map_err(db_err)?;
                txn.open_table(REFRESH_BY_FAMILY)
                    .map_err(db_err)?
                    .insert((token.family_id.as_str(), hash), ())
                    .map_err(db_err)?;
                txn.open_table(REFRESH_BY_USER)
                    .map_err(db_err)?
                    .insert((token.user_id.0.as_u128(), hash), ())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let hash = token_hash.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
            read_refresh(&tokens, &hash)
        })
        .await
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let hash = token_hash.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
                let Some(mut token) = read_refresh(&tokens, &hash)? else {
                    return Ok(false);
                };
                if token.used || token.revoked {
                    return Ok(false);
                }
                token.used = true;
                let bytes = encode("refresh token", &token)?;
                tokens
                    .insert(hash.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        let family = family_id.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut hashes = Vec::new();
            {
                let by_family = txn.open_table(REFRESH_BY_FAMILY).map_err(db_err)?;
                for entry in by_family.range((family.as_str(), "")..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (f, hash) = k.value();
                    if f != family {
                        break;
                    }
                    hashes.push(hash.to_string());
                }
            }
            revoke_tokens(&txn, &hashes)?;
            record_revoked_sessions(&txn, [family.as_str()])?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        self.run(move |db| {
            let uid = user.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            let mut hashes = Vec::new();
            {
                let by_user = txn.open_table(REFRESH_BY_USER).map_err(db_err)?;
                for entry in by_user.range((uid, "")..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (u, hash) = k.value();
                    if u != uid {
                        break;
                    }
                    hashes.push(hash.to_string());
                }
            }
            let mut families = std::collections::BTreeSet::new();
            {
                let tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
                for hash in &hashes {
                    if let Some(token) = read_refresh(&tokens, hash)? {
                        if !token.revoked {
                            families.insert(token.family_id);
                        }
                    }
                }
            }
            revoke_tokens(&txn, &hashes)?;
            record_revoked_sessions(&txn, families.iter().map(String::as_str))?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn revoked_sessions(&self, since: Timestamp) -> StoreResult<Vec<String>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = match txn.open_table(REVOKED_SESSIONS) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut out = Vec::new();
            for entry in table.range((micros(since), "")..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                out.push(k.value().1.to_string());
            }
            Ok(out)
        })
    }

    async fn prune_revoked_sessions(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut gone = 0;
            {
                let mut table = txn.open_table(REVOKED_SESSIONS).map_err(db_err)?;
                let old: Vec<(u64, String)> = table
                    .range(..(micros(before), ""))
                    .map_err(db_err)?
                    .map(|entry| {
                        entry.map(|(k, _)| {
                            let (at, session) = k.value();
                            (at, session.to_string())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for (at, session) in &old {
                    table.remove((*at, session.as_str())).map_err(db_err)?;
                    gone += 1;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(gone)
        })
        .await
    }

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let bytes = encode("api key", key)?;
        let (id, hash) = (key.id.0.as_u128(), key.key_hash.clone());
        let label = format!("api key {}", key.id);
        self.run(move |db| {
            insert_with_unique_hash(
                db,
                (API_KEYS, API_KEYS_BY_HASH),
                id,
                &hash,
                &bytes,
                &label,
                &[],
            )
        })
        .await
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        self.read_now(|db| read_via_index(db, API_KEYS_BY_HASH, API_KEYS, key_hash, "api key"))
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let keys = txn.open_table(API_KEYS).map_err(db_err)?;
            let mut out: Vec<ApiKey> = Vec::new();
            for entry in keys.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("api key", v.value())?);
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        self.run(move |db| {
            update_record(
                db,
                API_KEYS,
                id.0.as_u128(),
                "api key",
                |key: &mut ApiKey| {
                    let fresh = key.revoked_at.is_none();
                    key.revoked_at = key.revoked_at.or(Some(at));
                    fresh
                },
                |_: &ApiKey| Vec::new(),
            )
        })
        .await
    }
}
