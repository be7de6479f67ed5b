//! The operator's subcommands of `ilp-connector` (besides `run`): [`send`] packets through a
//! node, [`receive`] them as a child or a dialled peer, and [`admin`] (peers, routes, health
//! from a node's admin port). Each returns the process's exit code; stdout carries only the
//! result, errors go to stderr.

pub mod admin;
pub mod receive;
pub mod send;

/// Exit codes shared by the subcommands.
pub mod exit {
    /// Everything as asked (every packet fulfilled).
    pub const OK: u8 = 0;
    /// Ran, but not everything succeeded (a Reject, a failed connection).
    pub const FAILED: u8 = 1;
    /// Bad arguments (a URL that does not parse, …).
    pub const USAGE: u8 = 2;
}

/// Data bytes as text when every byte is printable ASCII (and there is at least one).
pub fn printable(data: &[u8]) -> Option<&str> {
    (!data.is_empty() && data.iter().all(|b| (0x20..0x7f).contains(b)))
        .then(|| std::str::from_utf8(data).ok())
        .flatten()
}
