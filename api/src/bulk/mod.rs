//! Bulk import and export: a company's customers and history in through
//! the same parsing and identity linking as live traffic, and everything
//! out again, in CSV or NDJSON, in constant memory.
//!
//! # Layout
//! - [`export`]: the export's rows, formats and resumable cursor, read from
//!   the store a page at a time (the HTTP routes and `crm-api export`).
//! - [`import`]: reading a file's rows, mapping columns to fields, applying
//!   them a chunk at a time through the service, committing progress.
//! - `dry_run`: the outcomes a dry run's customer rows would have.
//! - `replay`: the first outcomes of a chunk's rows applied again after a
//!   restart, so that a resumed import counts what an uninterrupted one does.
//! - [`jobs`]: imports posted over HTTP: the spooled body, the background
//!   task, resuming unfinished imports at start-up.
//! - [`cli`]: `crm-api import` and `crm-api export`.

pub mod cli;
mod dry_run;
pub mod export;
pub mod import;
pub mod jobs;
mod replay;
