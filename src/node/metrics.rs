//! Counters for `/metrics`. Each shard owns one [`ShardMetrics`] and is its only writer
//! (relaxed atomics on a shard-local cache line: no contention); a scrape sums all shards.
//! Labels are bounded: outcome, the RFC error codes (others fold into `other`), peer ids.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::identity::Identity;
use super::peers::Peers;
use crate::accounts::{Account, Book};
use crate::btp::link::LinkCounters;
use crate::codec::ErrorCode;

/// Upper bounds of the latency histogram buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 1_000_000, 5_000_000,
    10_000_000,
];

/// Adds to a counter this shard alone writes: a relaxed load and store, not a locked
/// read-modify-write (readers on other threads see either value).
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

fn add_i(c: &AtomicI64, n: i64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[derive(Default)]
pub struct ShardMetrics {
    fulfilled: AtomicU64,
    /// Per code ([`ErrorCode::slot`]).
    rejected: [AtomicU64; ErrorCode::SLOTS],
    latency: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    in_flight: AtomicI64,
    handed_over: AtomicU64,
    ccp_messages: AtomicU64,
}

impl ShardMetrics {
    pub fn packet_started(&self) {
        add_i(&self.in_flight, 1);
    }

    /// A Prepare got its answer: fulfilled, or rejected with `code`.
    pub fn packet_done(&self, reject: Option<ErrorCode>, latency_us: u64) {
        add_i(&self.in_flight, -1);
        match reject {
            None => add(&self.fulfilled, 1),
            Some(code) => add(&self.rejected[code.slot()], 1),
        };
        let b = BUCKETS_US
            .iter()
            .position(|&le| latency_us <= le)
            .unwrap_or(BUCKETS_US.len());
        add(&self.latency[b], 1);
        add(&self.latency_sum_us, latency_us);
    }

    /// A route protocol message got its answer (not counted as a forwarded packet).
    pub fn ccp_message_done(&self) {
        add_i(&self.in_flight, -1);
        add(&self.ccp_messages, 1);
    }

    /// A packet went out through another shard's link.
    pub fn handed_over(&self) {
        self.handed_over.fetch_add(1, Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }
}

/// The routing part of `/metrics`.
#[derive(Debug, Default)]
pub struct RoutesReport {
    /// Learned routes in the published table.
    pub learned: usize,
    pub ccp: crate::routing::ccp::Counters,
}

/// The `code` label of counter slot `i` ([`ErrorCode::slot`]).
fn slot_label(i: usize) -> &'static str {
    ErrorCode::ALL.get(i).map_or("other", |c| c.as_str())
}

/// Renders the Prometheus text exposition for all shards.
pub fn render(
    shards: &[Arc<ShardMetrics>],
    links: &LinkCounters,
    peers: &Peers,
    identity: &Identity,
    book: &Book,
    routes: &RoutesReport,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP ilp_routes_learned Routes learned by CCP in the published routing table.\n# TYPE ilp_routes_learned gauge\nilp_routes_learned {}",
        routes.learned
    );
    let c = &routes.ccp;
    for (name, help, v) in [
        (
            "ilp_ccp_controls_sent_total",
            "Route controls (SYNC) sent.",
            c.controls_sent,
        ),
        (
            "ilp_ccp_controls_received_total",
            "Route controls accepted from peers.",
            c.controls_received,
        ),
        (
            "ilp_ccp_updates_sent_total",
            "Route updates sent (heartbeats included).",
            c.updates_sent,
        ),
        (
            "ilp_ccp_updates_received_total",
            "Route updates accepted from peers.",
            c.updates_received,
        ),
        (
            "ilp_ccp_resyncs_total",
            "Route controls sent again: a gap, a silent peer, a failed control.",
            c.resyncs,
        ),
        (
            "ilp_ccp_not_fulfilled_total",
            "Route controls and updates we sent that got no Fulfill.",
            c.not_fulfilled,
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(
        s,
        "# HELP ilp_address_known 1 once the node has its ILP address (configured, or learned from the parent).\n# TYPE ilp_address_known gauge\nilp_address_known {}",
        u8::from(identity.address().is_some())
    );
    let _ = writeln!(
        s,
        "# HELP ilp_ildcp_address_mismatch 1 when the parent now assigns an address other than the one kept until restart.\n# TYPE ilp_ildcp_address_mismatch gauge\nilp_ildcp_address_mismatch {}",
        u8::from(identity.mismatch().is_some())
    );
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| shards.iter().map(|m| f(m)).sum::<u64>();
    s.push_str("# HELP ilp_packets_total Prepares answered, by outcome and code.\n");
    s.push_str("# TYPE ilp_packets_total counter\n");
    let _ = writeln!(
        s,
        "ilp_packets_total{{outcome=\"fulfilled\",code=\"\"}} {}",
        sum(&|m| m.fulfilled.load(Relaxed))
    );
    for i in 0..ErrorCode::SLOTS {
        let n = sum(&|m| m.rejected[i].load(Relaxed));
        if n > 0 {
            let code = slot_label(i);
            let _ = writeln!(
                s,
                "ilp_packets_total{{outcome=\"rejected\",code=\"{code}\"}} {n}"
            );
        }
    }
    s.push_str("# HELP ilp_packets_in_flight Prepares received and not yet answered.\n");
    s.push_str("# TYPE ilp_packets_in_flight gauge\n");
    let in_flight: i64 = shards.iter().map(|m| m.in_flight()).sum();
    let _ = writeln!(s, "ilp_packets_in_flight {in_flight}");
    s.push_str(
        "# HELP ilp_packets_handed_over_total Packets sent out through another shard's link.\n",
    );
    s.push_str("# TYPE ilp_packets_handed_over_total counter\n");
    let _ = writeln!(
        s,
        "ilp_packets_handed_over_total {}",
        sum(&|m| m.handed_over.load(Relaxed))
    );
    for (name, help, value) in [
        (
            "ilp_ccp_messages_received_total",
            "Route protocol (CCP) messages answered (not in ilp_packets_total).",
            sum(&|m| m.ccp_messages.load(Relaxed)),
        ),
        (
            "ilp_late_fulfills_total",
            "Fulfills that arrived after we had stopped waiting (the amount is at risk).",
            links.late_fulfills.load(Relaxed),
        ),
        (
            "ilp_late_fulfill_amount_total",
            "Sum of the amounts of late Fulfills, in the next hops' units.",
            links.late_fulfill_amount.load(Relaxed),
        ),
        (
            "ilp_link_write_timeouts_total",
            "Links closed because a peer stopped reading (no write progress within writeTimeoutMs).",
            links.write_timeouts.load(Relaxed),
        ),
        (
            "ilp_http_connections_opened_total",
            "Connections opened to ILP-over-HTTP peers.",
            links.http_connections_opened.load(Relaxed),
        ),
        (
            "ilp_btp_bad_frames_total",
            "Frames from peers that could not be parsed.",
            links.bad_frames.load(Relaxed),
        ),
        (
            "ilp_log_lines_dropped_total",
            "Log lines dropped because stderr did not keep up.",
            crate::logging::dropped_lines() as u64,
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    s.push_str("# HELP ilp_peer_links Live BTP links per peer and shard.\n");
    s.push_str("# TYPE ilp_peer_links gauge\n");
    for p in peers.list() {
        for (shard, n) in p.links_per_shard().iter().enumerate() {
            let _ = writeln!(
                s,
                "ilp_peer_links{{peer=\"{}\",shard=\"{shard}\"}} {n}",
                p.id()
            );
        }
    }
    s.push_str("# HELP ilp_packet_latency_seconds Time from Prepare received to answer sent.\n");
    s.push_str("# TYPE ilp_packet_latency_seconds histogram\n");
    let mut cumulative = 0;
    for (i, le) in BUCKETS_US.iter().enumerate() {
        cumulative += sum(&|m| m.latency[i].load(Relaxed));
        let _ = writeln!(
            s,
            "ilp_packet_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *le as f64 / 1e6
        );
    }
    cumulative += sum(&|m| m.latency[BUCKETS_US.len()].load(Relaxed));
    let _ = writeln!(
        s,
        "ilp_packet_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        s,
        "ilp_packet_latency_seconds_sum {}",
        sum(&|m| m.latency_sum_us.load(Relaxed)) as f64 / 1e6
    );
    let _ = writeln!(s, "ilp_packet_latency_seconds_count {cumulative}");
    render_accounts(&mut s, book);
    s
}

/// Per accounted peer (never per address): balance, reservations, settlement flag, rejects.
fn render_accounts(s: &mut String, book: &Book) {
    if book.accounts.is_empty() {
        return;
    }
    let gauge = |s: &mut String, name: &str, help: &str, value: &dyn Fn(&Account) -> i64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for a in &book.accounts {
            let _ = writeln!(s, "{name}{{peer=\"{}\"}} {}", a.id, value(a));
        }
    };
    gauge(
        s,
        "ilp_account_balance",
        "What the peer owes us, in its units.",
        &Account::balance,
    );
    gauge(
        s,
        "ilp_account_reserved_in",
        "Amounts reserved by Prepares from the peer still in flight.",
        &Account::reserved_in,
    );
    gauge(
        s,
        "ilp_account_reserved_out",
        "Amounts reserved by Prepares to the peer still in flight.",
        &Account::reserved_out,
    );
    gauge(
        s,
        "ilp_account_settlement_needed",
        "1 when the balance is at or below settleThreshold.",
        &|a| i64::from(a.needs_settlement()),
    );
    s.push_str("# HELP ilp_account_rejects_total Prepares from the peer that were rejected, by code.\n# TYPE ilp_account_rejects_total counter\n");
    for a in &book.accounts {
        for i in 0..ErrorCode::SLOTS {
            let n: u64 = a.shards.iter().map(|x| x.rejected[i].load(Relaxed)).sum();
            if n > 0 {
                let code = slot_label(i);
                let _ = writeln!(
                    s,
                    "ilp_account_rejects_total{{peer=\"{}\",code=\"{code}\"}} {n}",
                    a.id
                );
            }
        }
    }
}
