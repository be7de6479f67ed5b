//! The route protocol's state, sans-IO (every method takes `now` in milliseconds; nothing
//! here touches a socket or a clock): our side as **speaker** (a routing table id, an epoch
//! log of our exported routes, and per peer whether it wants updates and from which epoch)
//! and as **receiver** (per peer: its table id, the epoch we have applied, the routes learned
//! from it). Behaviour follows ilp-connector 23.0.2 (`shared/spec/CCP.md` §3) where it is
//! right, with these differences, each on purpose:
//! - learned routes are expired when a peer has sent nothing for twice its hold-down time
//!   (after a re-SYNC at one hold-down), where JS keeps them forever;
//! - a gap in a peer's epochs makes us ask again with a SYNC from the epoch we have (JS only
//!   ignores the update and stays behind until the next reconnect);
//! - a failed update is retried with backoff, where JS stops sending until the next control;
//! - our import filter checks segment boundaries (`test.` rather than any string starting
//!   with `test`), refuses prefixes at or under our own address, and routes whose path
//!   contains our address.
//!
//! The node layer (`node::ccp`) feeds it incoming messages and link events, sends what
//! [`Ccp::due`] returns, and rebuilds the routing table when [`Ccp::take_changed`] says the
//! learned routes changed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::codec::ccp::{Route, RouteControl, RouteUpdate, TableId, MODE_SYNC};

/// Epochs per update at most (as JS).
pub const MAX_EPOCHS_PER_UPDATE: usize = 50;
/// Keep an update's data well under the 32 767 bytes a Prepare may carry.
const MAX_UPDATE_BYTES: usize = 30_000;

/// Timing (milliseconds); the defaults are JS's.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Least time between two updates to one peer.
    pub min_interval_ms: u64,
    /// A heartbeat goes out this long after the last update.
    pub heartbeat_ms: u64,
    /// What we advertise as holdDownTime.
    pub hold_down_ms: u32,
    /// First retry of a failed control or update; doubles up to `heartbeat_ms`.
    pub retry_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            min_interval_ms: 150,
            heartbeat_ms: 30_000,
            hold_down_ms: 45_000,
            retry_ms: 1_000,
        }
    }
}

/// How the other node relates to us (decides the defaults and route preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    Parent = 0,
    Peer = 1,
    Child = 2,
}

/// A route we advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The peer it was learned from (`None`: our own or a child's).
    pub via: Option<String>,
    pub via_relation: Option<Relation>,
    /// The path as we send it: our address first.
    pub path: Vec<String>,
    pub auth: [u8; 32],
}

/// A route learned from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub path: Vec<String>,
    pub auth: [u8; 32],
}

/// One selected learned route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    pub prefix: String,
    pub peer: String,
    pub relation: Relation,
    pub path: Vec<String>,
    pub auth: [u8; 32],
}

/// Per-peer state.
#[derive(Debug)]
struct PeerState {
    relation: Relation,
    send_routes: bool,
    receive_routes: bool,
    up: bool,
    // As receiver.
    their_table: TableId,
    their_epoch: u32,
    learned: BTreeMap<String, Learned>,
    control_due: Option<u64>,
    control_in_flight: bool,
    control_failures: u32,
    last_heard: u64,
    resync_asked: bool,
    // As speaker.
    sync: bool,
    next_epoch: u32,
    last_sent: Option<u64>,
    update_in_flight: bool,
    update_failures: u32,
    retry_at: Option<u64>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// `peer.route.control` (data encoded).
    Control { peer: String, data: Vec<u8> },
    /// `peer.route.update` covering epochs up to `to`.
    Update {
        peer: String,
        data: Vec<u8>,
        to: u32,
    },
}

/// What the protocol has done so far (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub controls_sent: u64,
    pub controls_received: u64,
    pub updates_sent: u64,
    pub updates_received: u64,
    /// Controls sent again because of a gap, a silent peer or a failed control.
    pub resyncs: u64,
    /// Controls and updates that got no Fulfill.
    pub not_fulfilled: u64,
}

/// Why a CCP message from a peer was refused (F00 with this message, as JS answers).
pub type Refused = &'static str;

pub struct Ccp {
    own: String,
    /// `test.` / `g.`: what every route must start with.
    global: String,
    table_id: TableId,
    secret: [u8; 32],
    timing: Timing,
    /// Epoch `e` = `log[e]`; `None` once a later entry replaced it.
    log: Vec<Option<(String, Option<Export>)>>,
    /// Log index of each prefix's latest entry.
    latest: BTreeMap<String, usize>,
    exported: BTreeMap<String, Export>,
    peers: BTreeMap<String, PeerState>,
    changed: bool,
    counters: Counters,
}

impl Ccp {
    /// `own`: our address; `table_id` fresh per start; `secret` keys our routes' auth.
    pub fn new(own: &str, table_id: TableId, secret: [u8; 32], timing: Timing) -> Ccp {
        let scheme = own.split('.').next().unwrap_or(own);
        Ccp {
            own: own.to_owned(),
            global: format!("{scheme}."),
            table_id,
            secret,
            timing,
            log: Vec::new(),
            latest: BTreeMap::new(),
            exported: BTreeMap::new(),
            peers: BTreeMap::new(),
            changed: false,
            counters: Counters::default(),
        }
    }

    pub fn table_id(&self) -> TableId {
        self.table_id
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn epoch(&self) -> u32 {
        self.log.len() as u32
    }

    /// Declares a peer (idempotent; settings are updated).
    pub fn add_peer(
        &mut self,
        id: &str,
        relation: Relation,
        send_routes: bool,
        receive_routes: bool,
    ) {
        let p = self
            .peers
            .entry(id.to_owned())
            .or_insert_with(|| PeerState {
                relation,
                send_routes,
                receive_routes,
                up: false,
                their_table: [0; 16],
                their_epoch: 0,
                learned: BTreeMap::new(),
                control_due: None,
                control_in_flight: false,
                control_failures: 0,
                last_heard: 0,
                resync_asked: false,
                sync: false,
                next_epoch: 0,
                last_sent: None,
                update_in_flight: false,
                update_failures: 0,
                retry_at: None,
            });
        p.relation = relation;
        p.send_routes = send_routes;
        p.receive_routes = receive_routes;
    }

    /// Forgets a removed peer (its routes are withdrawn).
    pub fn remove_peer(&mut self, id: &str) {
        if let Some(p) = self.peers.remove(id) {
            self.changed |= !p.learned.is_empty();
        }
    }

    pub fn is_speaking_with(&self, id: &str) -> bool {
        self.peers
            .get(id)
            .is_some_and(|p| p.send_routes || p.receive_routes)
    }

    /// Whether the peer has a live link now: calls [`link_up`](Self::link_up) or
    /// [`link_down`](Self::link_down) when that changed.
    pub fn set_link(&mut self, id: &str, up: bool, now: u64) {
        match self.peers.get(id).map(|p| p.up) {
            Some(false) if up => self.link_up(id, now),
            Some(true) if !up => self.link_down(id),
            _ => {}
        }
    }

    /// The peer's first link came up: ask it for routes (if we take its routes).
    pub fn link_up(&mut self, id: &str, now: u64) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if p.up {
            return;
        }
        p.up = true;
        p.last_heard = now;
        p.resync_asked = false;
        if p.receive_routes {
            // Start over: the peer's sender forgot us (JS resets to IDLE on reconnect).
            p.their_table = [0; 16];
            p.their_epoch = 0;
            p.control_due = Some(now);
            p.control_failures = 0;
        }
    }

    /// The peer's last link went down: everything learned from it is withdrawn, and it no
    /// longer gets updates until it asks again.
    pub fn link_down(&mut self, id: &str) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.up = false;
        p.sync = false;
        p.next_epoch = 0;
        p.control_due = None;
        p.update_in_flight = false;
        p.control_in_flight = false;
        p.retry_at = None;
        if !p.learned.is_empty() {
            p.learned.clear();
            self.changed = true;
        }
    }

    /// A route control from `id`.
    pub fn on_control(&mut self, id: &str, c: &RouteControl, now: u64) -> Result<(), Refused> {
        let current = self.epoch();
        let table_id = self.table_id;
        let p = self
            .peers
            .get_mut(id)
            .filter(|p| p.send_routes || p.receive_routes)
            .ok_or("cannot process route control messages from non-peers.")?;
        if !p.send_routes {
            return Err(
                "rejecting route control message, we are configured not to send routes to you.",
            );
        }
        self.counters.controls_received += 1;
        p.last_heard = now;
        if c.mode == MODE_SYNC {
            p.sync = true;
            p.next_epoch = if c.last_known_table_id == table_id {
                c.last_known_epoch.min(current)
            } else {
                0
            };
            // Send at once (after the minimum interval).
            p.retry_at = None;
            p.update_failures = 0;
            p.last_sent = None;
        } else {
            // IDLE (or any other mode, as JS treats it): stop sending.
            p.sync = false;
        }
        Ok(())
    }

    /// A route update from `id`; `Ok` means fulfil it (also when it is ignored as a gap or
    /// stale, as JS does).
    pub fn on_update(&mut self, id: &str, u: &RouteUpdate, now: u64) -> Result<(), Refused> {
        let own = self.own.clone();
        let global = self.global.clone();
        let p = self
            .peers
            .get_mut(id)
            .filter(|p| p.send_routes || p.receive_routes)
            .ok_or("cannot process route update messages from non-peers.")?;
        if !p.receive_routes {
            return Err(
                "rejecting route update, we are configured not to receive routes from you.",
            );
        }
        self.counters.updates_received += 1;
        p.last_heard = now;
        p.resync_asked = false;
        if u.table_id != p.their_table {
            // A new table (the peer restarted): what we learned is kept until it is withdrawn
            // or replaced, as JS does; we now need its log from epoch 0.
            p.their_table = u.table_id;
            p.their_epoch = 0;
        }
        if u.from_epoch > p.their_epoch {
            // A gap: ask for what we miss.
            p.control_due = Some(now);
            self.counters.resyncs += 1;
            return Ok(());
        }
        if u.to_epoch < p.their_epoch {
            return Ok(()); // stale
        }
        let mut changed = false;
        for w in &u.withdrawn {
            changed |= p.learned.remove(*w).is_some();
        }
        for r in &u.new_routes {
            if !acceptable(r, &own, &global) {
                continue;
            }
            let learned = Learned {
                path: r.path.iter().map(|s| s.to_string()).collect(),
                auth: r.auth,
            };
            if p.learned.get(r.prefix) != Some(&learned) {
                p.learned.insert(r.prefix.to_owned(), learned);
                changed = true;
            }
        }
        p.their_epoch = u.to_epoch;
        self.changed |= changed;
        Ok(())
    }

    /// Whether learned routes changed since the last call (rebuild the table then).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The best learned route per prefix: relation child > peer > parent, then the shorter
    /// path, then the smaller peer id (as JS).
    pub fn best(&self) -> Vec<Best> {
        let mut best: BTreeMap<&str, Best> = BTreeMap::new();
        for (peer, p) in &self.peers {
            for (prefix, l) in &p.learned {
                let candidate = Best {
                    prefix: prefix.clone(),
                    peer: peer.clone(),
                    relation: p.relation,
                    path: l.path.clone(),
                    auth: l.auth,
                };
                let better = match best.get(prefix.as_str()) {
                    None => true,
                    Some(b) => {
                        (
                            std::cmp::Reverse(candidate.relation),
                            candidate.path.len(),
                            &candidate.peer,
                        ) < (std::cmp::Reverse(b.relation), b.path.len(), &b.peer)
                    }
                };
                if better {
                    best.insert(prefix, candidate);
                }
            }
        }
        best.into_values().collect()
    }

    /// What we advertise: our own prefixes (`local`: our address and our children's) and
    /// the selected learned routes. New, changed and withdrawn prefixes become log entries.
    pub fn set_exports(&mut self, local: &[String], learned: &[Best]) {
        let mut next: BTreeMap<String, Export> = BTreeMap::new();
        for prefix in local {
            let auth = hmac_sha256(&self.secret, prefix.as_bytes());
            next.insert(
                prefix.clone(),
                Export {
                    via: None,
                    via_relation: None,
                    path: vec![self.own.clone()],
                    auth,
                },
            );
        }
        for b in learned {
            if next.contains_key(&b.prefix) {
                continue;
            }
            let mut path = vec![self.own.clone()];
            path.extend(b.path.iter().cloned());
            next.insert(
                b.prefix.clone(),
                Export {
                    via: Some(b.peer.clone()),
                    via_relation: Some(b.relation),
                    path,
                    auth: Sha256::digest(b.auth).into(),
                },
            );
        }
        let mut entries: Vec<(String, Option<Export>)> = Vec::new();
        for (prefix, e) in &next {
            if self.exported.get(prefix) != Some(e) {
                entries.push((prefix.clone(), Some(e.clone())));
            }
        }
        for prefix in self.exported.keys() {
            if !next.contains_key(prefix) {
                entries.push((prefix.clone(), None));
            }
        }
        for (prefix, e) in entries {
            if let Some(old) = self.latest.insert(prefix.clone(), self.log.len()) {
                self.log[old] = None;
            }
            self.log.push(Some((prefix, e)));
        }
        self.exported = next;
    }

    /// Controls and updates due at `now` for the peers `mine` selects (each marked in flight
    /// until its result is given).
    pub fn due(&mut self, now: u64, mine: impl Fn(&str) -> bool) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let current = self.epoch();
        let ids: Vec<String> = self.peers.keys().filter(|id| mine(id)).cloned().collect();
        for id in ids {
            let p = &self.peers[&id];
            if !p.up {
                continue;
            }
            // Hold-down: nothing heard for a hold-down → ask again; for two → drop its routes.
            if p.receive_routes && !p.control_in_flight {
                let silent = now.saturating_sub(p.last_heard);
                let hold = u64::from(self.timing.hold_down_ms);
                if silent > 2 * hold && !p.learned.is_empty() {
                    let p = self.peers.get_mut(&id).expect("present");
                    p.learned.clear();
                    self.changed = true;
                } else if silent > hold && !p.resync_asked {
                    let p = self.peers.get_mut(&id).expect("present");
                    p.resync_asked = true;
                    p.control_due = Some(now);
                    self.counters.resyncs += 1;
                }
            }
            let p = &self.peers[&id];
            if p.receive_routes && !p.control_in_flight && p.control_due.is_some_and(|t| t <= now) {
                let mut data = bytes::BytesMut::new();
                RouteControl {
                    mode: MODE_SYNC,
                    last_known_table_id: p.their_table,
                    last_known_epoch: p.their_epoch,
                    features: Vec::new(),
                }
                .encode(&mut data);
                let p = self.peers.get_mut(&id).expect("present");
                p.control_in_flight = true;
                self.counters.controls_sent += 1;
                out.push(Outgoing::Control {
                    peer: id.clone(),
                    data: data.to_vec(),
                });
            }
            let p = &self.peers[&id];
            if !(p.send_routes && p.sync) || p.update_in_flight {
                continue;
            }
            let since = p.last_sent.map_or(u64::MAX, |t| now.saturating_sub(t));
            let due = match p.retry_at {
                Some(t) => now >= t,
                None => {
                    (p.next_epoch < current && since >= self.timing.min_interval_ms)
                        || since >= self.timing.heartbeat_ms
                }
            };
            if !due {
                continue;
            }
            let (data, to) = self.update_for(&id);
            let p = self.peers.get_mut(&id).expect("present");
            p.update_in_flight = true;
            self.counters.updates_sent += 1;
            out.push(Outgoing::Update {
                peer: id.clone(),
                data,
                to,
            });
        }
        out
    }

    /// The update for `peer` from its next epoch: at most 50 epochs and ~30 KB.
    fn update_for(&self, peer: &str) -> (Vec<u8>, u32) {
        let p = &self.peers[peer];
        let from = p.next_epoch.min(self.epoch()) as usize;
        let mut new_routes: Vec<Route> = Vec::new();
        let mut withdrawn: Vec<&str> = Vec::new();
        let mut to = from;
        let mut size = 0usize;
        for entry in self.log[from..].iter().take(MAX_EPOCHS_PER_UPDATE) {
            if let Some((prefix, export)) = entry {
                let advertise = export.as_ref().filter(|e| {
                    // Never send a peer its own routes; a parent gets no routes we learned
                    // from peers or parents (as JS).
                    e.via.as_deref() != Some(peer)
                        && !(p.relation == Relation::Parent
                            && matches!(e.via_relation, Some(Relation::Peer | Relation::Parent)))
                });
                let cost = prefix.len()
                    + 40
                    + advertise.map_or(0, |e| e.path.iter().map(|s| s.len() + 2).sum());
                if size + cost > MAX_UPDATE_BYTES && to > from {
                    break;
                }
                size += cost;
                match advertise {
                    Some(e) => new_routes.push(Route {
                        prefix,
                        path: e.path.iter().map(String::as_str).collect(),
                        auth: e.auth,
                        props: Vec::new(),
                    }),
                    None => withdrawn.push(prefix),
                }
            }
            to += 1;
        }
        let mut data = bytes::BytesMut::new();
        RouteUpdate {
            table_id: self.table_id,
            current_epoch: self.epoch(),
            from_epoch: from as u32,
            to_epoch: to as u32,
            hold_down_ms: self.timing.hold_down_ms,
            speaker: &self.own,
            new_routes,
            withdrawn,
        }
        .encode(&mut data);
        (data.to_vec(), to as u32)
    }

    /// The answer to a control we sent.
    pub fn control_result(&mut self, id: &str, fulfilled: bool, now: u64) {
        let retry = self.timing.retry_ms;
        let cap = self.timing.heartbeat_ms;
        if let Some(p) = self.peers.get_mut(id) {
            p.control_in_flight = false;
            if fulfilled {
                p.control_due = None;
                p.control_failures = 0;
            } else if p.up {
                p.control_due = Some(now + backoff(retry, p.control_failures, cap));
                p.control_failures += 1;
                self.counters.not_fulfilled += 1;
                self.counters.resyncs += 1;
            }
        }
    }

    /// The answer to an update we sent (covering epochs up to `to`).
    pub fn update_result(&mut self, id: &str, to: u32, fulfilled: bool, now: u64) {
        let retry = self.timing.retry_ms;
        let cap = self.timing.heartbeat_ms;
        if let Some(p) = self.peers.get_mut(id) {
            p.update_in_flight = false;
            p.last_sent = Some(now);
            if fulfilled {
                p.next_epoch = p.next_epoch.max(to);
                p.update_failures = 0;
                p.retry_at = None;
            } else {
                p.retry_at = Some(now + backoff(retry, p.update_failures, cap));
                p.update_failures += 1;
                self.counters.not_fulfilled += 1;
            }
        }
    }

    /// Routes learned from `id` (for `/routes` and tests).
    pub fn learned_from(&self, id: &str) -> Vec<(String, Learned)> {
        self.peers
            .get(id)
            .map(|p| {
                p.learned
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The path we advertise a prefix with, if we do.
    pub fn exported(&self, prefix: &str) -> Option<&Export> {
        self.exported.get(prefix)
    }
}

fn backoff(base: u64, failures: u32, cap: u64) -> u64 {
    base.saturating_mul(1 << failures.min(16)).min(cap)
}

/// Our import filter: under the global prefix at a segment boundary, not at or under our
/// own address, and no loop through us.
fn acceptable(r: &Route, own: &str, global: &str) -> bool {
    r.prefix.starts_with(global)
        && r.prefix.len() > global.len()
        && crate::codec::validate_prefix(r.prefix.as_bytes()).is_ok()
        && r.prefix != own
        && !r.prefix.starts_with(&format!("{own}."))
        && !r.path.contains(&own)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under a 32-byte key: our routes' `auth`, as JS makes it.
pub fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let inner: [u8; 32] = {
        let mut h = Sha256::new();
        h.update(k.map(|b| b ^ 0x36));
        h.update(msg);
        h.finalize().into()
    };
    let mut h = Sha256::new();
    h.update(k.map(|b| b ^ 0x5c));
    h.update(inner);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ccp::RouteUpdate;

    const T: Timing = Timing {
        min_interval_ms: 150,
        heartbeat_ms: 30_000,
        hold_down_ms: 45_000,
        retry_ms: 1_000,
    };

    fn node(own: &str) -> Ccp {
        let mut c = Ccp::new(own, [own.len() as u8; 16], [7; 32], T);
        c.set_exports(&[own.to_owned()], &[]);
        c
    }

    fn updates(out: &[Outgoing]) -> Vec<(String, Vec<u8>, u32)> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Update { peer, data, to } => Some((peer.clone(), data.clone(), *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn our_auth_is_js_hmac() {
        // new_connector_first_update_prepare: HMAC-SHA256(0x07×32, "test.rust").
        assert_eq!(
            hex::encode(hmac_sha256(&[7; 32], b"test.rust")),
            "1ba75f5936f0769d4ba2f53d4e2ddc1ef65c594375a1c5e3cac1555e884062a5"
        );
    }

    #[test]
    fn sync_then_update_then_heartbeat() {
        let mut a = node("test.a");
        a.add_peer("b", Relation::Peer, true, true);
        a.link_up("b", 0);
        // We ask b for routes at once.
        let out = a.due(0, |_| true);
        assert!(matches!(&out[0], Outgoing::Control { peer, .. } if peer == "b"));
        a.control_result("b", true, 1);
        // Nothing goes to b before it sends SYNC.
        assert!(updates(&a.due(10, |_| true)).is_empty());
        let sync = RouteControl {
            mode: MODE_SYNC,
            last_known_table_id: [0; 16],
            last_known_epoch: 0,
            features: vec![],
        };
        a.on_control("b", &sync, 20).unwrap();
        let u = updates(&a.due(20, |_| true));
        assert_eq!(u.len(), 1);
        let upd = RouteUpdate::decode(&u[0].1).unwrap();
        assert_eq!((upd.from_epoch, upd.to_epoch, upd.current_epoch), (0, 1, 1));
        assert_eq!(upd.new_routes[0].prefix, "test.a");
        assert_eq!(upd.new_routes[0].path, vec!["test.a"]);
        a.update_result("b", 1, true, 25);
        assert!(
            updates(&a.due(30_000, |_| true)).is_empty(),
            "heartbeat only after 30 s"
        );
        let hb = updates(&a.due(30_026, |_| true));
        let hb = RouteUpdate::decode(&hb[0].1).unwrap();
        assert_eq!((hb.from_epoch, hb.to_epoch), (1, 1));
        assert!(hb.new_routes.is_empty() && hb.withdrawn.is_empty());
    }

    /// Two speakers exchange until quiet: `a` learns `b`'s routes and the reverse.
    fn exchange(a: &mut Ccp, an: &str, b: &mut Ccp, bn: &str, now: u64) {
        for _ in 0..10 {
            let mut moved = false;
            for o in a.due(now, |_| true) {
                moved = true;
                deliver(o, a, an, b, now);
            }
            for o in b.due(now, |_| true) {
                moved = true;
                deliver(o, b, bn, a, now);
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver(o: Outgoing, from: &mut Ccp, from_name: &str, to: &mut Ccp, now: u64) {
        match o {
            Outgoing::Control { peer: _, data } => {
                let c = RouteControl::decode(&data).unwrap();
                let ok = to.on_control(from_name, &c, now).is_ok();
                from.control_result(peer_of(to), ok, now);
            }
            Outgoing::Update {
                peer: _,
                data,
                to: epoch,
            } => {
                let u = RouteUpdate::decode(&data).unwrap();
                let ok = to.on_update(from_name, &u, now).is_ok();
                from.update_result(peer_of(to), epoch, ok, now);
            }
        }
    }

    fn peer_of(c: &Ccp) -> &str {
        c.own.rsplit('.').next().unwrap()
    }

    #[test]
    fn two_nodes_learn_each_other_and_withdraw_on_link_down() {
        let mut a = node("test.a");
        let mut b = node("test.b");
        a.add_peer("b", Relation::Peer, true, true);
        b.add_peer("a", Relation::Peer, true, true);
        a.link_up("b", 0);
        b.link_up("a", 0);
        exchange(&mut a, "a", &mut b, "b", 1000);
        assert!(a.take_changed());
        let best = a.best();
        assert_eq!(best.len(), 1);
        assert_eq!(
            (best[0].prefix.as_str(), best[0].peer.as_str()),
            ("test.b", "b")
        );
        // b learned a; a's own address in a path from b would be a loop: never learned back.
        assert_eq!(b.best()[0].prefix, "test.a");
        // a re-exports b's route to nobody else here; a child appears at b.
        b.set_exports(&["test.b".into(), "test.b.kid".into()], &[]);
        exchange(&mut a, "a", &mut b, "b", 2200);
        assert_eq!(
            a.best()
                .iter()
                .map(|r| r.prefix.as_str())
                .collect::<Vec<_>>(),
            ["test.b", "test.b.kid"]
        );
        // The child goes: withdrawn at a.
        b.set_exports(&["test.b".into()], &[]);
        exchange(&mut a, "a", &mut b, "b", 3200);
        assert_eq!(a.best().len(), 1);
        a.link_down("b");
        assert!(a.take_changed());
        assert!(a.best().is_empty());
    }

    #[test]
    fn filters_loops_foreign_schemes_and_our_own_space() {
        let mut a = node("test.a");
        a.add_peer("b", Relation::Peer, true, true);
        a.link_up("b", 0);
        let route = |prefix: &'static str, path: Vec<&'static str>| Route {
            prefix,
            path,
            auth: [1; 32],
            props: vec![],
        };
        let u = RouteUpdate {
            table_id: [9; 16],
            current_epoch: 6,
            from_epoch: 0,
            to_epoch: 6,
            hold_down_ms: 45_000,
            speaker: "test.b",
            new_routes: vec![
                route("test.b", vec!["test.b"]),
                route("testnet.odd", vec!["test.b"]),
                route("g.other", vec!["test.b"]),
                route("test", vec!["test.b"]),
                route("test.a.kid", vec!["test.b"]),
                route("test.loop", vec!["test.b", "test.a"]),
            ],
            withdrawn: vec![],
        };
        a.on_update("b", &u, 10).unwrap();
        assert_eq!(
            a.learned_from("b")
                .iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>(),
            ["test.b"]
        );
    }

    #[test]
    fn a_gap_asks_again_and_stale_updates_are_ignored() {
        let mut a = node("test.a");
        a.add_peer("b", Relation::Peer, true, true);
        a.link_up("b", 0);
        let _ = a.due(0, |_| true);
        a.control_result("b", true, 0);
        let upd = |from, to, prefix: &'static str| RouteUpdate {
            table_id: [9; 16],
            current_epoch: to,
            from_epoch: from,
            to_epoch: to,
            hold_down_ms: 45_000,
            speaker: "test.b",
            new_routes: vec![Route {
                prefix,
                path: vec!["test.b"],
                auth: [0; 32],
                props: vec![],
            }],
            withdrawn: vec![],
        };
        a.on_update("b", &upd(0, 2, "test.b"), 10).unwrap();
        a.on_update("b", &upd(5, 6, "test.gap"), 20).unwrap();
        assert_eq!(a.learned_from("b").len(), 1, "the gap is not applied");
        let out = a.due(20, |_| true);
        let Outgoing::Control { data, .. } = &out[0] else {
            panic!("{out:?}")
        };
        let c = RouteControl::decode(data).unwrap();
        assert_eq!((c.last_known_table_id, c.last_known_epoch), ([9; 16], 2));
        a.on_update("b", &upd(0, 1, "test.stale"), 30).unwrap();
        assert_eq!(a.learned_from("b").len(), 1, "stale");
    }

    #[test]
    fn silent_peers_are_asked_again_then_forgotten() {
        let mut a = node("test.a");
        a.add_peer("b", Relation::Peer, false, true);
        a.link_up("b", 0);
        let _ = a.due(0, |_| true);
        a.control_result("b", true, 0);
        let u = RouteUpdate {
            table_id: [9; 16],
            current_epoch: 1,
            from_epoch: 0,
            to_epoch: 1,
            hold_down_ms: 45_000,
            speaker: "test.b",
            new_routes: vec![Route {
                prefix: "test.b",
                path: vec!["test.b"],
                auth: [0; 32],
                props: vec![],
            }],
            withdrawn: vec![],
        };
        a.on_update("b", &u, 1).unwrap();
        assert!(a.due(45_000, |_| true).is_empty());
        assert!(matches!(
            a.due(45_002, |_| true)[..],
            [Outgoing::Control { .. }]
        ));
        a.control_result("b", true, 45_003);
        a.take_changed();
        let _ = a.due(90_002, |_| true);
        assert!(
            a.take_changed() && a.best().is_empty(),
            "expired after two hold-downs"
        );
    }

    #[test]
    fn selection_prefers_child_then_shorter_path_then_id() {
        let mut a = node("test.a");
        for (id, rel) in [
            ("p1", Relation::Peer),
            ("p2", Relation::Peer),
            ("par", Relation::Parent),
            ("kid", Relation::Child),
        ] {
            a.add_peer(id, rel, true, true);
            a.link_up(id, 0);
        }
        let teach = |a: &mut Ccp, id: &str, path: Vec<&'static str>| {
            let u = RouteUpdate {
                table_id: [id.len() as u8; 16],
                current_epoch: 1,
                from_epoch: 0,
                to_epoch: 1,
                hold_down_ms: 45_000,
                speaker: "test.x",
                new_routes: vec![Route {
                    prefix: "test.x",
                    path,
                    auth: [0; 32],
                    props: vec![],
                }],
                withdrawn: vec![],
            };
            a.on_update(id, &u, 1).unwrap();
        };
        teach(&mut a, "par", vec!["test.x"]);
        assert_eq!(a.best()[0].peer, "par");
        teach(&mut a, "p2", vec!["test.y", "test.x"]);
        assert_eq!(a.best()[0].peer, "p2", "peer beats parent");
        teach(&mut a, "p1", vec!["test.y", "test.x"]);
        assert_eq!(a.best()[0].peer, "p1", "same path length: smaller id");
        teach(&mut a, "p2", vec!["test.x"]);
        assert_eq!(a.best()[0].peer, "p2", "shorter path");
        teach(&mut a, "kid", vec!["test.z", "test.y", "test.x"]);
        assert_eq!(a.best()[0].peer, "kid", "child beats all");
    }

    #[test]
    fn peers_never_get_their_own_routes_and_parents_no_peer_routes() {
        let mut a = node("test.a");
        a.add_peer("b", Relation::Peer, true, true);
        a.add_peer("up", Relation::Parent, true, true);
        let learned = Best {
            prefix: "test.b".into(),
            peer: "b".into(),
            relation: Relation::Peer,
            path: vec!["test.b".into()],
            auth: [3; 32],
        };
        a.set_exports(&["test.a".into()], &[learned]);
        for id in ["b", "up"] {
            a.link_up(id, 0);
            let sync = RouteControl {
                mode: MODE_SYNC,
                last_known_table_id: [0; 16],
                last_known_epoch: 0,
                features: vec![],
            };
            a.on_control(id, &sync, 0).unwrap();
        }
        for (peer, data, _) in updates(&a.due(1, |_| true)) {
            let u = RouteUpdate::decode(&data).unwrap();
            let new: Vec<&str> = u.new_routes.iter().map(|r| r.prefix).collect();
            assert_eq!(new, ["test.a"], "{peer}");
            assert_eq!(u.withdrawn, ["test.b"], "{peer}");
        }
        // Re-exported with our address first and the hashed auth.
        let e = a.exported("test.b").unwrap();
        assert_eq!(e.path, ["test.a", "test.b"]);
        assert_eq!(e.auth, <[u8; 32]>::from(Sha256::digest([3u8; 32])));
    }
}
