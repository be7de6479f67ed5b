//! The route protocol at run time, around the sans-IO state in `routing::ccp` (one per
//! node, behind a mutex: it is touched by CCP messages and a 150 ms tick, never per packet).
//!
//! - Incoming `peer.route.*` Prepares (already checked for condition and expiry by
//!   `rules::decide`) are decoded and applied by [`answer`]: a Fulfill of 32 zero bytes, or
//!   F00 with the JS connector's messages.
//! - Each shard runs [`run`]: every tick it notes links that came up or went down (the
//!   first link of a peer up → SYNC it; its last link down → what it taught us is withdrawn),
//!   rebuilds the routing table when learned routes changed (so a burst of updates costs one
//!   rebuild per tick), and sends the controls and updates that are due for the peers whose
//!   lowest-numbered live link is on this shard.
//! - Per peer: `sendRoutes` / `receiveRoutes`, by default on for `peer` and `parent`, off for
//!   `child`; `routeBroadcast: false` turns CCP off for the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::connector::NodeShared;
use super::rules::Refusal;
use crate::btp::link::Link;
use crate::codec::btp::{self as btpc, BtpType};
use crate::codec::ccp::{
    RouteControl, RouteUpdate, ROUTE_CONTROL_DESTINATION, ROUTE_UPDATE_DESTINATION,
};
use crate::codec::ildcp::{PEER_PROTOCOL_CONDITION, PEER_PROTOCOL_FULFILLMENT};
use crate::codec::{Address, ErrorCode, FulfillFields, Packet, Prepare, PrepareFields, Timestamp};
use crate::config::{PeerConfig, Relation};
use crate::routing::ccp::{self as state, Ccp, Outgoing};

/// How often each shard looks at CCP (JS's minimum gap between updates).
const TICK: Duration = Duration::from_millis(150);
/// A CCP Prepare expires this long after it is sent (as JS).
const EXPIRY_MS: i64 = 60_000;

/// Whether CCP runs with this peer: (relation, sendRoutes, receiveRoutes).
fn terms(enabled: bool, p: &PeerConfig) -> (state::Relation, bool, bool) {
    let (relation, default) = match p.relation {
        Relation::Parent => (state::Relation::Parent, true),
        Relation::Peer => (state::Relation::Peer, true),
        Relation::Child => (state::Relation::Child, false),
    };
    (
        relation,
        enabled && p.send_routes.unwrap_or(default),
        enabled && p.receive_routes.unwrap_or(default),
    )
}

/// The node's CCP state once its address is known: a fresh table id per start, and every
/// configured peer declared.
pub fn create(shared: &NodeShared, own: &Address) -> Ccp {
    let seed = format!(
        "{}/{}/{:?}",
        shared.config.node_id,
        std::process::id(),
        std::time::SystemTime::now()
    );
    let table_id: [u8; 16] = Sha256::digest(seed.as_bytes())[..16]
        .try_into()
        .unwrap_or([1; 16]);
    // Our routes' auth key: stable across restarts (the spec asks for that), derived from the
    // node id. Nobody verifies `auth`; it only has to be the same for the same prefix.
    let secret: [u8; 32] = Sha256::digest(format!(
        "ilp-connector routing secret/{}",
        shared.config.node_id
    ))
    .into();
    let timing = state::Timing {
        heartbeat_ms: shared.config.route_broadcast_interval_ms,
        hold_down_ms: shared.config.route_expiry_ms,
        ..state::Timing::default()
    };
    let mut ccp = Ccp::new(own.as_str(), table_id, secret, timing);
    for p in shared.peers.list() {
        let (r, send, receive) = terms(shared.config.route_broadcast, &p.config);
        ccp.add_peer(p.id(), r, send, receive);
    }
    ccp
}

/// A peer added at runtime.
pub fn peer_added(shared: &NodeShared, p: &PeerConfig) {
    if let Some(c) = shared
        .ccp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        let (r, send, receive) = terms(shared.config.route_broadcast, p);
        c.add_peer(&p.id, r, send, receive);
    }
}

/// A peer removed at runtime.
pub fn peer_removed(shared: &NodeShared, id: &str) {
    if let Some(c) = shared
        .ccp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        c.remove_peer(id);
    }
}

fn millis(shared: &NodeShared) -> u64 {
    shared.started.elapsed().as_millis() as u64
}

/// Answers a CCP message from `source`: the peer-protocol Fulfill, or the Reject.
pub fn answer(shared: &NodeShared, source: &str, prepare: &Prepare) -> Result<Bytes, Refusal> {
    let refuse = |m: String| Refusal::new(ErrorCode::F00_BAD_REQUEST, m);
    let now = millis(shared);
    let mut guard = shared.ccp.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ccp) = guard.as_mut() else {
        return Err(refuse("not ready for route messages yet".into()));
    };
    let result = match prepare.destination() {
        d if d == ROUTE_CONTROL_DESTINATION => RouteControl::decode(prepare.data())
            .map_err(|e| refuse(e.to_string()))
            .and_then(|c| {
                ccp.on_control(source, &c, now)
                    .map_err(|m| refuse(m.into()))
            }),
        d if d == ROUTE_UPDATE_DESTINATION => RouteUpdate::decode(prepare.data())
            .map_err(|e| refuse(e.to_string()))
            .and_then(|u| ccp.on_update(source, &u, now).map_err(|m| refuse(m.into()))),
        _ => Err(refuse(format!(
            "unrecognized ccp message. destination={}",
            prepare.destination_str()
        ))),
    };
    result?;
    let mut out = BytesMut::new();
    FulfillFields {
        fulfillment: &PEER_PROTOCOL_FULFILLMENT,
        data: &[],
    }
    .encode(&mut out);
    Ok(out.freeze())
}

/// The shard that speaks CCP with `peer`: the lowest-numbered one with a live link.
fn owner(shared: &NodeShared, peer: &str) -> Option<usize> {
    shared
        .peers
        .get(peer)?
        .links_per_shard()
        .iter()
        .position(|n| *n > 0)
}

/// One shard's CCP loop (see the module doc); ends when `stopping` holds.
pub async fn run(
    shared: Arc<NodeShared>,
    shard: usize,
    pick_link: impl Fn(&str) -> Option<Link>,
    stopping: impl Fn() -> bool,
) {
    let any = shared.config.route_broadcast
        && shared.config.peers.iter().any(|p| {
            let (_, s, r) = terms(true, p);
            s || r
        });
    if !any {
        return;
    }
    while !stopping() {
        crate::alarm::sleep(TICK).await;
        let now = millis(&shared);
        let (outgoing, changed) = {
            let mut guard = shared.ccp.lock().unwrap_or_else(|e| e.into_inner());
            let Some(ccp) = guard.as_mut() else { continue };
            for p in shared.peers.list() {
                if ccp.is_speaking_with(p.id()) {
                    ccp.set_link(p.id(), p.link_count() > 0, now);
                }
            }
            let out = ccp.due(now, |peer| owner(&shared, peer) == Some(shard));
            (out, ccp.take_changed())
        };
        if changed {
            if let Err(e) = super::routes::rebuild(&shared) {
                tracing::warn!(nodeId = %shared.config.node_id, component = "ccp", event = "routes_not_rebuilt", error = %e);
            }
        }
        for o in outgoing {
            let (peer, destination) = match &o {
                Outgoing::Control { peer, .. } => (peer.clone(), ROUTE_CONTROL_DESTINATION),
                Outgoing::Update { peer, .. } => (peer.clone(), ROUTE_UPDATE_DESTINATION),
            };
            let link = pick_link(&peer);
            let shared = shared.clone();
            glommio::spawn_local(send(shared, link, o, destination)).detach();
        }
    }
}

/// Sends one CCP message and reports the outcome to the state.
async fn send(
    shared: Arc<NodeShared>,
    link: Option<Link>,
    o: Outgoing,
    destination: &'static [u8],
) {
    let data = match &o {
        Outgoing::Control { data, .. } | Outgoing::Update { data, .. } => data,
    };
    let fulfilled = match link {
        Some(link) => {
            let mut ilp = BytesMut::new();
            PrepareFields {
                amount: 0,
                expires_at: Timestamp::now().add_millis(EXPIRY_MS),
                execution_condition: &PEER_PROTOCOL_CONDITION,
                destination,
                data,
            }
            .encode(&mut ilp);
            let mut frame = BytesMut::new();
            btpc::encode_ilp(&mut frame, BtpType::Message, 0, &ilp);
            let deadline = Instant::now() + Duration::from_millis(shared.config.send_timeout_ms);
            let answer = link.request_until(frame, deadline, 0).await;
            matches!(
                answer.ok().and_then(|r| r.ilp()).map(Packet::decode),
                Some(Ok(Packet::Fulfill(_)))
            )
        }
        None => false,
    };
    let now = millis(&shared);
    let mut guard = shared.ccp.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ccp) = guard.as_mut() {
        match &o {
            Outgoing::Control { peer, .. } => ccp.control_result(peer, fulfilled, now),
            Outgoing::Update { peer, to, .. } => ccp.update_result(peer, *to, fulfilled, now),
        }
    }
    drop(guard);
    if !fulfilled {
        tracing::debug!(nodeId = %shared.config.node_id, component = "ccp", event = "ccp_message_not_fulfilled",
            destination = %String::from_utf8_lossy(destination));
    }
}
