//! Live push to desktops over Server-Sent Events (`GET /v1/stream`).
//!
//! - [`tickets`]: single-use tickets for `EventSource`, which cannot send headers.
//! - [`filter`]: what a user may see on a stream, and what they asked for.
//! - [`feed`]: one stream: replay from the event log after `Last-Event-ID`,
//!   then the events this process hears live ([`crm_models::live::LiveHub`]),
//!   `call.incoming` with its caller-ID popup.
//!
//! [`Streams`] is what every stream of this process shares: the tickets and
//! the shutdown signal (a graceful shutdown would otherwise wait for ever on
//! streams that never end).

pub mod feed;
pub mod filter;
pub mod tickets;

use tokio::sync::watch;

pub use feed::{open, StreamStart};
pub use filter::StreamFilter;
pub use tickets::{Ticket, Tickets, TICKET_TTL};

/// Shared by the streams of one process.
pub struct Streams {
    pub tickets: Tickets,
    shutdown: watch::Sender<bool>,
}

impl Streams {
    /// Tickets signed with a key derived from the JWT secret; used tickets
    /// recorded in Redis when `redis_url` is set.
    pub async fn new(
        jwt_secret: &[u8],
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        Ok(Streams {
            tickets: Tickets::new(jwt_secret, redis_url, redis_prefix).await?,
            shutdown: watch::channel(false).0,
        })
    }

    /// Ends every open stream (the server is shutting down) and refuses new
    /// ones.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes true when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
