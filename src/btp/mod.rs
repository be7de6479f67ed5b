//! BTP links on glommio: one authenticated BTP WebSocket per [`Link`], whoever dialled.
//!
//! Layout:
//! - [`link`]: the link task (sole owner of the socket) and the [`Link`] handle others use;
//! - [`socket`]: the WebSocket data phase (frames in and out, our buffers);
//! - [`upgrade`]: the opening handshake (tungstenite's), handing the stream to a socket;
//! - [`deadlines`]: the shard's one timer structure for every pending request;
//! - [`auth`]: the listener's check of the first frame, constant-time;
//! - [`server`]: accept, WebSocket upgrade, authentication;
//! - [`client`]: dial, authenticate; reconnecting with backoff lives in the node.
//!
//! Errors are one type, [`LinkError`], so the node maps them to ILP codes in one place.

pub mod auth;
pub mod client;
pub mod deadlines;
pub mod link;
pub mod server;
pub mod socket;
pub mod throttle;
pub mod tls;
pub mod upgrade;

use std::time::Duration;

pub use link::{IncomingHandler, Link, LinkConfig};

/// Why a request on a link, or a link itself, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A dialling peer's credentials were wrong (unknown account, wrong or missing token):
    /// what the per-IP throttle counts.
    #[error("credentials refused: {0}")]
    BadCredentials(String),
    #[error("no answer before the deadline")]
    Timeout,
    #[error("link lost before the answer arrived")]
    LinkLost,
    #[error("link's outgoing queue is full")]
    QueueFull,
    #[error("peer answered with BTP error {code}: {message}")]
    Remote { code: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Largest WebSocket message we accept: the largest legal BTP frame is 42 015 bytes.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Runs `fut` with a time bound; `None` when the bound passed first.
pub(crate) async fn within<T>(
    dur: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    glommio::timer::timeout(dur, async { Ok(fut.await) })
        .await
        .ok()
}
