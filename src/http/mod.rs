//! ILP-over-HTTP links (RFC-0035 as deployed: synchronous, the Fulfill or Reject is the
//! body of an HTTP 200; `shared/spec/ILP-OVER-HTTP.md`), HTTP/1.1 with keep-alive, hyper over
//! glommio's sockets (the adapter is [`io`]):
//! - [`server`]: a POST of an OER Prepare on any path, `Authorization: Bearer <token>` (or the
//!   bare token, as the JS plugin accepts); the token names the peer; the answer comes from
//!   the node's forwarding path (a handler the node gives);
//! - [`client`]: POSTs a Prepare to an HTTP peer over a small per-shard pool of keep-alive
//!   connections and returns the ILP answer, or a [`LinkError`](crate::btp::LinkError) the
//!   node maps to a Reject like any link failure.

pub mod client;
pub mod io;
pub mod server;

/// Largest request or response body read: ILP data is at most 32 767 bytes; the rest of a
/// Prepare or Reject is well under 1 KiB more.
pub const MAX_BODY: usize = 32_767 + 1_024;

/// The content type we send (what Rafiki requires).
pub const CONTENT_TYPE: &str = "application/octet-stream";
