//! A thread-per-core ILPv4 connector peering over BTP 2.0.
//!
//! Layout: [`codec`] holds the pure wire formats (OER, ILP, BTP, addresses); [`clock`] the
//! time as a batch of packets sees it.
pub mod accounts;
pub mod admin;
pub mod alarm;
pub mod btp;
pub mod clock;
pub mod codec;
pub mod config;
pub mod http;
pub mod logging;
pub mod node;
pub mod routing;
pub mod testkit;
pub mod tools;
