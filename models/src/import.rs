//! Bulk imports: the record of one import (what it reads, how far it got,
//! what happened to its rows) and the rows it rejected. The import itself
//! runs in `crm-api`, through [`crate::service::Crm`] like live traffic;
//! these records are what the store keeps so that it can report progress
//! and resume after a restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::{self, Timestamp};

/// What an import brings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportKind {
    Customers,
    Engagements,
}

/// The file format of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    Csv,
    Ndjson,
}

/// Where an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    /// Accepted; the work has not started.
    Queued,
    /// Rows are being applied (or will be again after a restart).
    Running,
    /// Every row was read; see the counts.
    Completed,
    /// The file could not be read on (see `error`); the rows counted were applied.
    Failed,
}

impl ImportState {
    pub fn finished(self) -> bool {
        matches!(self, ImportState::Completed | ImportState::Failed)
    }
}

/// What happened to the rows applied so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportCounts {
    /// Rows read and applied (the last committed row number).
    pub rows_read: u64,
    /// Customers: rows that created a customer. Engagements: engagements stored.
    pub created: u64,
    /// Customers: rows whose identifiers named one customer (new ones were
    /// attached to it). Engagements: not used.
    pub linked: u64,
    /// Customers: rows whose identifiers named several customers, merged
    /// into the oldest. Engagements: not used.
    pub merged: u64,
    /// Rows refused (see the rejected rows).
    pub rejected: u64,
    /// Engagements: rows stored before under the same `client_event_id`.
    pub duplicates: u64,
    /// Engagements: customers created for their identifiers.
    pub customers_created: u64,
}

impl ImportCounts {
    pub fn add(&mut self, other: &ImportCounts) {
        self.rows_read += other.rows_read;
        self.created += other.created;
        self.linked += other.linked;
        self.merged += other.merged;
        self.rejected += other.rejected;
        self.duplicates += other.duplicates;
        self.customers_created += other.customers_created;
    }
}

/// One import and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub id: Uuid,
    pub kind: ImportKind,
    pub format: ImportFormat,
    pub state: ImportState,
    pub dry_run: bool,
    /// A hash of who posted it and their `Idempotency-Key` (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Source column → field.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    /// ISO country for numbers written without `+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The staff user who posted it (`user:<id>`), or `cli`.
    pub created_by: String,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    /// When the last chunk committed.
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
    #[serde(default, with = "time::rfc3339_option")]
    pub finished_at: Option<Timestamp>,
    /// The file's size, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Bytes of the file read up to the last committed row.
    #[serde(default)]
    pub bytes_read: u64,
    /// The CSV's header line (rejected rows are reported under it).
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub counts: ImportCounts,
    /// Why a failed import stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Import {
    /// 0 to 1: the share of the file applied.
    pub fn progress(&self) -> f64 {
        match (self.state, self.bytes_total) {
            (ImportState::Completed, _) => 1.0,
            (_, Some(total)) if total > 0 => (self.bytes_read as f64 / total as f64).min(1.0),
            _ => 0.0,
        }
    }
}

/// A row an import refused, keyed by (import, row number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    pub import_id: Uuid,
    /// 1 for the first row after the header.
    pub row: u64,
    /// The row's cells as read (an NDJSON row: its line).
    pub cells: Vec<String>,
    /// `field: reason`, one per problem, joined by `; `.
    pub error: String,
}
