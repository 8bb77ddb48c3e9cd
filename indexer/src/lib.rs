//! The search index: Redis inverted indexes for name, email and phone, and the
//! per-customer caller-ID summary, fed by the domain event stream and
//! rebuildable from the store. It reads the store; it never writes it.

pub mod stream;
pub mod worker;
