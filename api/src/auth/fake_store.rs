//! An in-memory store of staff records, for the unit tests of this module.
//! Customer and engagement methods are not needed here and panic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use crm_models::customer::{Customer, Identifier};
use crm_models::engagement::Engagement;
use crm_models::ids::{ApiKeyId, CustomerId, EngagementId, UserId};
use crm_models::staff::{ApiKey, RefreshToken, User};
use crm_models::store::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
    StoreResult,
};
use crm_models::time::Timestamp;
use crm_models::Email;

#[derive(Default)]
pub struct FakeStore {
    users: Mutex<BTreeMap<UserId, User>>,
    refresh: Mutex<BTreeMap<String, RefreshToken>>,
    keys: Mutex<Vec<ApiKey>>,
}

impl FakeStore {
    pub fn refresh_tokens(&self) -> Vec<RefreshToken> {
        self.refresh.lock().unwrap().values().cloned().collect()
    }
}

#[async_trait]
impl Store for FakeStore {
    fn kind(&self) -> &'static str {
        "fake"
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn insert_customer(&self, _: &Customer) -> StoreResult<()> {
        unimplemented!()
    }
    async fn get_customer(&self, _: CustomerId) -> StoreResult<Option<Customer>> {
        unimplemented!()
    }
    async fn update_profile(&self, _: &Customer) -> StoreResult<()> {
        unimplemented!()
    }
    async fn add_identifiers(
        &self,
        _: CustomerId,
        _: &[Identifier],
        _: Timestamp,
    ) -> StoreResult<Customer> {
        unimplemented!()
    }
    async fn delete_customer(&self, _: CustomerId) -> StoreResult<Option<Customer>> {
        unimplemented!()
    }
    async fn list_customers(
        &self,
        _: Option<Timestamp>,
        _: Option<CustomerCursor>,
        _: usize,
    ) -> StoreResult<Vec<Customer>> {
        unimplemented!()
    }
    async fn claim_identity(&self, _: &str, _: CustomerId) -> StoreResult<Claim> {
        unimplemented!()
    }
    async fn identity_owner(&self, _: &str) -> StoreResult<Option<CustomerId>> {
        unimplemented!()
    }
    async fn release_identity(&self, _: &str, _: CustomerId) -> StoreResult<()> {
        unimplemented!()
    }
    async fn identities_of(&self, _: CustomerId) -> StoreResult<Vec<String>> {
        unimplemented!()
    }
    async fn insert_engagements(&self, _: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        unimplemented!()
    }
    async fn get_engagement(&self, _: EngagementId) -> StoreResult<Option<Engagement>> {
        unimplemented!()
    }
    async fn list_engagements(
        &self,
        _: CustomerId,
        _: &EngagementFilter,
        _: Option<EngagementCursor>,
        _: usize,
    ) -> StoreResult<Vec<Engagement>> {
        unimplemented!()
    }

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        let mut users = self.users.lock().unwrap();
        if users
            .values()
            .any(|u| u.id == user.id || u.email == user.email)
        {
            return Err(StoreError::Conflict("email taken".into()));
        }
        users.insert(user.id, user.clone());
        Ok(())
    }
    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        Ok(self.users.lock().unwrap().get(&id).cloned())
    }
    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        Ok(self
            .users
            .lock()
            .unwrap()
            .values()
            .find(|u| &u.email == email)
            .cloned())
    }
    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let mut users = self.users.lock().unwrap();
        match users.get_mut(&user.id) {
            Some(u) => {
                *u = user.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound),
        }
    }
    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        Ok(self
            .users
            .lock()
            .unwrap()
            .values()
            .filter(|u| after.is_none_or(|a| u.id > a))
            .take(limit)
            .cloned()
            .collect())
    }
    async fn count_users(&self) -> StoreResult<u64> {
        Ok(self.users.lock().unwrap().len() as u64)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        self.refresh
            .lock()
            .unwrap()
            .insert(token.token_hash.clone(), token.clone());
        Ok(())
    }
    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        Ok(self.refresh.lock().unwrap().get(token_hash).cloned())
    }
    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let mut all = self.refresh.lock().unwrap();
        match all.get_mut(token_hash) {
            Some(t) if !t.used && !t.revoked => {
                t.used = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        for t in self.refresh.lock().unwrap().values_mut() {
            if t.family_id == family_id {
                t.revoked = true;
            }
        }
        Ok(())
    }
    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        for t in self.refresh.lock().unwrap().values_mut() {
            if t.user_id == user {
                t.revoked = true;
            }
        }
        Ok(())
    }

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        self.keys.lock().unwrap().push(key.clone());
        Ok(())
    }
    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        Ok(self
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.key_hash == key_hash)
            .cloned())
    }
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        Ok(self.keys.lock().unwrap().clone())
    }
    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        let mut keys = self.keys.lock().unwrap();
        match keys
            .iter_mut()
            .find(|k| k.id == id && k.revoked_at.is_none())
        {
            Some(k) => {
                k.revoked_at = Some(at);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
