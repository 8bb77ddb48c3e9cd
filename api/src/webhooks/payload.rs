//! The body of a delivery: `{type, timestamp, data}`, where `data` is the
//! event's own fields (ids) and the current state of the object it is
//! about, read from the store at delivery: the customer for customer
//! events, the engagement for `engagement.recorded`, the device or user
//! (never a secret or a hash), the call signal and its customer for
//! `call.incoming` (an unknown caller's signal without its number). An object that is gone (an erased customer) adds
//! nothing: the body then carries only ids.

use chrono::Duration;
use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::ids::CustomerId;
use crm_models::store::{Store, StoreResult};
use crm_models::time;
use serde_json::{json, Map, Value};

use crate::routes::users::UserView;

/// How far before the event a call signal is looked for.
const SIGNAL_WINDOW_S: i64 = 60;

/// The delivery body of `event`, as of now.
pub async fn body(store: &dyn Store, event: &EventEnvelope) -> StoreResult<Value> {
    let mut data = match serde_json::to_value(event) {
        Ok(Value::Object(mut m)) => match m.remove("data") {
            Some(Value::Object(d)) => d,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    if let Some(c) = event.customer_id {
        data.insert("customer_id".into(), json!(c));
    }
    match &event.event {
        DomainEvent::CustomerCreated {}
        | DomainEvent::CustomerUpdated { .. }
        | DomainEvent::CustomersMerged { .. }
        | DomainEvent::CustomersUnmerged { .. } => {
            if let Some(c) = event.customer_id {
                add_customer(store, c, &mut data).await?;
            }
        }
        DomainEvent::EngagementRecorded { engagement_id, .. } => {
            if let Some(e) = store.get_engagement(*engagement_id).await? {
                data.insert("engagement".into(), to_json(&e));
            }
        }
        DomainEvent::DeviceEnrolled { device_id, .. }
        | DomainEvent::DeviceRevoked { device_id, .. } => {
            if let Some(d) = store.get_device(*device_id).await? {
                let view = crm_mobile_bridge::devices::DeviceView::from(d);
                data.insert("device".into(), to_json(&view));
            }
        }
        DomainEvent::UserCreated { user_id }
        | DomainEvent::UserUpdated { user_id, .. }
        | DomainEvent::UserDeactivated { user_id } => {
            if let Some(u) = store.get_user(*user_id).await? {
                data.insert("user".into(), to_json(&UserView::from(u)));
            }
        }
        DomainEvent::CallIncoming {
            signal_id, user_id, ..
        } => {
            let since = event.occurred_at - Duration::seconds(SIGNAL_WINDOW_S);
            let signals = store
                .list_call_signals(Some(*user_id), since, 1_000)
                .await?;
            if let Some(s) = signals.iter().find(|s| s.id == *signal_id) {
                let mut signal = to_json(s);
                // A number nobody has is nobody's profile: it stays on the
                // phone owner's screen and out of deliveries.
                if s.customer_id.is_none() {
                    if let Some(fields) = signal.as_object_mut() {
                        fields.remove("number");
                    }
                }
                data.insert("signal".into(), signal);
            }
            if let Some(c) = event.customer_id {
                add_customer(store, c, &mut data).await?;
            }
        }
        // Only ids: the customer is gone, or the event is about an endpoint.
        DomainEvent::CustomerErased { .. } | DomainEvent::WebhookDisabled { .. } => {}
    }
    Ok(json!({
        "type": event.name(),
        "timestamp": time::format(&event.occurred_at),
        "data": Value::Object(data),
    }))
}

async fn add_customer(
    store: &dyn Store,
    id: CustomerId,
    data: &mut Map<String, Value>,
) -> StoreResult<()> {
    if let Some(c) = store.get_customer(id).await? {
        data.insert("customer".into(), to_json(&c));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
