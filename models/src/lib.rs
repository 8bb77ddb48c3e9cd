//! The CRM domain and its persistence.
//!
//! Owns what a customer, an identifier and an engagement *are*, how raw input
//! becomes them (phone numbers, emails), the rules that link identifiers to
//! customers, the domain events, and the store that keeps them. It knows
//! nothing of HTTP, Redis or the search index.
//!
//! # Layout
//! - [`phone`], [`email`]: parse-once value types.
//! - [`ingest`]: the one engagement parser every ingest route uses.
//! - [`names`]: name tokens, typo variants and query classification for search.
//! - [`customer`], [`engagement`], [`staff`], [`device`], [`ids`], [`time`]: the records.
//! - [`event`], [`events`], [`relay`]: domain events, the stream they go on,
//!   and the relay that moves them there from the store's event log.
//! - [`store`]: the store trait and its adapters (`embedded` redb, `mongo`).
//! - [`linking`]: merge records, suggestions and the linking policy.
//! - [`service`]: the operations handlers call ([`service::Crm`]).
//! - [`problem`]: the error-code table and the problem document of the HTTP API.

pub mod analytics;
pub mod customer;
pub mod device;
pub mod email;
pub mod engagement;
pub mod event;
pub mod events;
pub mod ids;
pub mod import;
pub mod ingest;
pub mod linking;
pub mod live;
pub mod names;
pub mod phone;
pub mod problem;
pub mod relay;
pub mod service;
pub mod staff;
pub mod store;
pub mod time;
pub mod webhook;

pub use customer::{ChannelCounts, Customer, CustomerStatus, Identifier};
pub use email::Email;
pub use engagement::{
    CallStatus, Channel, Direction, Engagement, EngagementDetail, PayloadType, Source,
};
pub use ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
pub use phone::{PhoneError, PhoneNumber, Region};
