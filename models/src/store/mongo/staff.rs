//! Staff users (written with their events in one transaction), refresh
//! tokens and API keys (single-document writes, no events).

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};

use super::codec::{collect, encode, from_doc, limit_of, map_conflict, map_err, to_doc};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::email::Email;
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, UserId};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::store::{StaffStore, StoreError, StoreResult, Tx};
use crate::time::{self, Timestamp};

/// Inserts (`replace: false`) or replaces a user with its events.
struct WriteUser<'u> {
    user: &'u User,
    events: &'u [EventEnvelope],
    replace: bool,
}

#[async_trait]
impl Work for WriteUser<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let user = self.user;
        let store = tx.store;
        let doc = to_doc(user, "id")?;
        if self.replace {
            let result = store
                .users
                .replace_one(doc! { "_id": user.id.to_string() }, doc)
                .session(&mut *tx.session)
                .await;
            let result = result.map_err(|e| {
                tx.fail_conflict(e, &format!("a user with email {} exists", user.email))
            })?;
            if result.matched_count == 0 {
                return Err(StoreError::NotFound);
            }
        } else {
            tx.insert_one(
                &store.users,
                doc,
                &format!("a user with email {} or id {} exists", user.email, user.id),
            )
            .await?;
        }
        tx.append_events(self.events).await
    }
}

/// Revoked sessions: `{_id: <session id>, revoked_at: <RFC 3339>}`. Small
/// (pruned past the access tokens' lifetime), so read without an index.
const REVOKED_SESSIONS: &str = "revoked_sessions";

impl MongoStore {
    /// Revokes every refresh token matching `filter`.
    async fn revoke_refresh_tokens(&self, filter: Document) -> StoreResult<()> {
        self.refresh_tokens
            .update_many(filter, doc! { "$set": { "revoked": true } })
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    fn revoked_sessions_collection(&self) -> mongodb::Collection<Document> {
        self.db.collection(REVOKED_SESSIONS)
    }

    /// Records the sessions as revoked now. Written before the tokens are
    /// revoked: a failure in between leaves the session ended, not open.
    async fn record_revoked_sessions(&self, sessions: &[String]) -> StoreResult<()> {
        let now = time::format(&time::now());
        let collection = self.revoked_sessions_collection();
        for session in sessions {
            collection
                .update_one(
                    doc! { "_id": session.as_str() },
                    doc! { "$set": { "revoked_at": now.as_str() } },
                )
                .upsert(true)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl StaffStore for MongoStore {
    async fn insert_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        self.run(&mut WriteUser {
            user,
            events,
            replace: false,
        })
        .await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let found = self
            .users
            .find_one(doc! { "email": encode(email)? })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn update_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        self.run(&mut WriteUser {
            user,
            events,
            replace: true,
        })
        .await
    }

    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id.to_string() } },
            None => Document::new(),
        };
        let cursor = self
            .users
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn count_users(&self) -> StoreResult<u64> {
        self.users
            .count_documents(Document::new())
            .await
            .map_err(map_err)
    }

    // --- refresh tokens ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let doc = to_doc(token, "token_hash")?;
        self.refresh_tokens
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, "the refresh token exists"))
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let found = self
            .refresh_tokens
            .find_one(doc! { "_id": token_hash })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "token_hash")).transpose()
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let result = self
            .refresh_tokens
            .update_one(
                doc! { "_id": token_hash, "used": false, "revoked": false },
                doc! { "$set": { "used": true } },
            )
            .await
            .map_err(map_err)?;
        Ok(result.modified_count == 1)
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        self.record_revoked_sessions(&[family_id.to_string()])
            .await?;
        self.revoke_refresh_tokens(doc! { "family_id": family_id })
            .await
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        let live = doc! { "user_id": user.to_string(), "revoked": false };
        let mut cursor = self
            .refresh_tokens
            .find(live)
            .projection(doc! { "family_id": 1 })
            .await
            .map_err(map_err)?;
        let mut families = std::collections::BTreeSet::new();
        while cursor.advance().await.map_err(map_err)? {
            let token = cursor.deserialize_current().map_err(map_err)?;
            if let Ok(family) = token.get_str("family_id") {
                families.insert(family.to_string());
            }
        }
        self.record_revoked_sessions(&families.into_iter().collect::<Vec<_>>())
            .await?;
        self.revoke_refresh_tokens(doc! { "user_id": user.to_string() })
            .await
    }

    async fn revoked_sessions(&self, since: Timestamp) -> StoreResult<Vec<String>> {
        let mut cursor = self
            .revoked_sessions_collection()
            .find(doc! { "revoked_at": { "$gte": time::format(&since) } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(map_err)? {
            let doc = cursor.deserialize_current().map_err(map_err)?;
            if let Ok(id) = doc.get_str("_id") {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }

    async fn prune_revoked_sessions(&self, before: Timestamp) -> StoreResult<u64> {
        self.revoked_sessions_collection()
            .delete_many(doc! { "revoked_at": { "$lt": time::format(&before) } })
            .await
            .map(|r| r.deleted_count)
            .map_err(map_err)
    }

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let doc = to_doc(key, "id")?;
        self.api_keys
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, "an API key with this id or hash exists"))
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        let found = self
            .api_keys
            .find_one(doc! { "key_hash": key_hash })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let cursor = self
            .api_keys
            .find(Document::new())
            .sort(doc! { "created_at": 1, "_id": 1 })
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    /// Sets `revoked_at` unless the key is revoked already: `true` when this
    /// call revoked it.
    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        let result = self
            .api_keys
            .update_one(
                doc! { "_id": id.to_string(), "revoked_at": Bson::Null },
                doc! { "$set": { "revoked_at": time::format(&at) } },
            )
            .await
            .map_err(map_err)?;
        Ok(result.modified_count == 1)
    }
}
