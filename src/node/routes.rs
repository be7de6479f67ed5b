//! The routing table from its sources, in one place (every change — start, a peer added or
//! removed, our address learned, routes learned by CCP — rebuilds it here and publishes it
//! as one version): configured `routes` win; then each child's `<our address>.<id>` (once the
//! address is known); then the best route learned by CCP per prefix; the default route is
//! `defaultRoute`, else the parent we learn our address from. A route whose next hop is not a
//! peer (any more) is left out. What we then advertise by CCP is our address, our children's,
//! and the learned routes that made it into the table.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::connector::NodeShared;
use crate::config::Relation;
use crate::routing::ccp::Best;
use crate::routing::RouteError;

/// Where a route in the table comes from (for `/routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Config,
    Child,
    /// Learned by CCP from a peer, with the path it was advertised with.
    Learned {
        path: Vec<String>,
    },
}

/// The table as it should be.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// (prefix, next hop, origin), one per prefix.
    pub routes: Vec<(String, String, Origin)>,
    pub default_route: Option<String>,
}

/// Computes the table from its sources (locks the CCP state briefly).
pub fn desired(shared: &NodeShared) -> Desired {
    let learned = shared
        .ccp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|c| c.best())
        .unwrap_or_default();
    compute(shared, learned).0
}

/// The table, and the learned routes that made it in (what CCP re-advertises).
fn compute(shared: &NodeShared, learned: Vec<Best>) -> (Desired, Vec<Best>) {
    let peers = shared.peers.list();
    let ids: HashSet<&str> = peers.iter().map(|p| p.id()).collect();
    let mut out = Desired::default();
    let mut seen = HashSet::new();
    for r in &shared.config.routes {
        if ids.contains(r.next_hop.as_str()) && seen.insert(r.prefix.clone()) {
            out.routes
                .push((r.prefix.clone(), r.next_hop.clone(), Origin::Config));
        }
    }
    if let Some(address) = shared.identity.address() {
        for p in peers
            .iter()
            .filter(|p| p.config.relation == Relation::Child)
        {
            let prefix = format!("{address}.{}", p.id());
            if seen.insert(prefix.clone()) {
                out.routes.push((prefix, p.id().to_owned(), Origin::Child));
            }
        }
    }
    let mut used = Vec::new();
    for b in learned {
        if ids.contains(b.peer.as_str()) && seen.insert(b.prefix.clone()) {
            out.routes.push((
                b.prefix.clone(),
                b.peer.clone(),
                Origin::Learned {
                    path: b.path.clone(),
                },
            ));
            used.push(b);
        }
    }
    out.default_route = shared
        .config
        .default_route
        .clone()
        .or_else(|| shared.identity.parent().map(str::to_owned))
        .filter(|d| ids.contains(d.as_str()));
    (out, used)
}

/// Rebuilds and publishes the table, and updates what CCP advertises to match it.
pub fn rebuild(shared: &NodeShared) -> Result<(), RouteError> {
    let mut ccp = shared.ccp.lock().unwrap_or_else(|e| e.into_inner());
    let learned = ccp.as_ref().map(|c| c.best()).unwrap_or_default();
    let (d, used) = compute(shared, learned);
    shared.routing.replace_all(
        d.routes.iter().map(|(p, h, _)| (p.as_str(), h.as_str())),
        d.default_route.as_deref(),
    )?;
    shared.routes_learned.store(used.len(), Ordering::Relaxed);
    if let (Some(c), Some(address)) = (ccp.as_mut(), shared.identity.address()) {
        let mut local = vec![address.to_string()];
        local.extend(
            d.routes
                .iter()
                .filter(|(_, _, o)| *o == Origin::Child)
                .map(|(p, _, _)| p.clone()),
        );
        c.set_exports(&local, &used);
    }
    Ok(())
}
