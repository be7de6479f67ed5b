//! The admin port's endpoints, as plain functions of a request [`Head`] (and body) to a
//! [`Reply`]; the HTTP server around them is `super` (hyper).
//! `/health` and `/metrics` are open; every other endpoint needs
//! `Authorization: Bearer <adminToken>` (compared in constant time). Without an admin token,
//! writes get 403 (so a web page in a browser on the host cannot add a peer), and the other
//! reads are served only on a loopback `adminHost`. Writes also need
//! `Content-Type: application/json` (a browser cannot send that cross-site without a
//! preflight we never answer).
//! - `GET /health`: 200 when ready, else 503, JSON;
//! - `GET /metrics`: Prometheus text;
//! - `GET /peers`: every peer with its relation and live links per shard (no secrets);
//! - `GET /routes`: the routing table (`prefix`, `nextHop`, `origin`: config, child, learned
//!   (with the CCP `path`) or default; the default route has prefix `""`);
//! - `POST /peers` with a JSON peer (the YAML peer keys: `id`, `relation`, `url`, `authToken`,
//!   …): adds it at runtime (201; 409 if it exists, 400 if invalid);
//! - `DELETE /peers/<id>`: removes it, closing its links (204; 404 if unknown);
//! - `POST /tls/reload`: re-reads `btpServerTls`'s files (as SIGHUP does; 500 and the old
//!   certificate kept if they do not load);
//! - `GET /accounts`, `GET /accounts/<id>`: each peer's asset, `maxPacketAmount` and, when
//!   accounted, balance, reserved amounts, limits and the settlement flag (amounts as
//!   strings: they may exceed 2^53);
//! - `POST /accounts/<id>/settlements` with `{"amount": "<signed integer>",
//!   "idempotencyKey": "…"}`: adds `amount` to the balance once per key, journaled first
//!   (200 with the balance; `"duplicate": true` when the key was seen).

use hyper::Method;

use crate::btp::auth::Credential;
use crate::config::PeerConfig;
use crate::node::connector::{add_peer, health, reload_tls, remove_peer, NodeShared};
use crate::node::metrics;
use crate::node::peers::PeerError;

/// Status, content type, body.
pub type Reply = (u16, &'static str, String);

/// What the endpoints read of a request besides its body.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
}

pub fn json_error(status: u16, message: impl std::fmt::Display) -> Reply {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    (status, "application/json", body)
}

fn peers_json(shared: &NodeShared) -> Reply {
    let list: Vec<serde_json::Value> = shared
        .peers
        .list()
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id(),
                "relation": format!("{:?}", p.config.relation).to_lowercase(),
                "url": p.config.url.as_deref().map(crate::config::redact_url),
                "linksPerShard": p.links_per_shard(),
            })
        })
        .collect();
    (
        200,
        "application/json",
        serde_json::Value::from(list).to_string(),
    )
}

fn routes_json(shared: &NodeShared) -> Reply {
    use crate::node::routes::{desired, Origin};
    let d = desired(shared);
    let mut list: Vec<serde_json::Value> = d
        .routes
        .iter()
        .map(|(prefix, hop, origin)| match origin {
            Origin::Config => serde_json::json!({ "prefix": prefix, "nextHop": hop, "origin": "config" }),
            Origin::Child => serde_json::json!({ "prefix": prefix, "nextHop": hop, "origin": "child" }),
            Origin::Learned { path } => {
                serde_json::json!({ "prefix": prefix, "nextHop": hop, "origin": "learned", "path": path })
            }
        })
        .collect();
    if let Some(hop) = d.default_route {
        list.push(serde_json::json!({ "prefix": "", "nextHop": hop, "origin": "default" }));
    }
    (
        200,
        "application/json",
        serde_json::Value::from(list).to_string(),
    )
}

fn account_json(shared: &NodeShared, p: &PeerConfig) -> serde_json::Value {
    let own = shared.identity.get();
    let asset = shared
        .config
        .peer_asset(p, own.map(|o| (o.asset_code.as_str(), o.asset_scale)));
    let mut v = serde_json::json!({
        "id": p.id,
        "assetCode": asset.as_ref().map(|a| a.code.clone()),
        "assetScale": asset.as_ref().map(|a| a.scale),
        "maxPacketAmount": p.max_packet_amount().map(|m| m.to_string()),
        "accounted": false,
    });
    if let Some(a) = shared.book.get(&p.id) {
        let s = |v: Option<i64>| v.map(|v| v.to_string());
        v["accounted"] = true.into();
        v["balance"] = a.balance().to_string().into();
        v["reservedIn"] = a.reserved_in().to_string().into();
        v["reservedOut"] = a.reserved_out().to_string().into();
        v["minimum"] = s(a.limits.minimum).into();
        v["maximum"] = s(a.limits.maximum).into();
        v["settleThreshold"] = s(a.limits.settle_threshold).into();
        v["settleTo"] = s(a.limits.settle_to).into();
        v["needsSettlement"] = a.needs_settlement().into();
    }
    v
}

fn accounts_json(shared: &NodeShared, id: Option<&str>) -> Reply {
    let peers = shared.peers.list();
    let body = match id {
        None => serde_json::Value::from(
            peers
                .iter()
                .map(|p| account_json(shared, &p.config))
                .collect::<Vec<_>>(),
        ),
        Some(id) => match peers.iter().find(|p| p.id() == id) {
            Some(p) => account_json(shared, &p.config),
            None => return json_error(404, format!("no peer {id:?}")),
        },
    };
    (200, "application/json", body.to_string())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settlement {
    amount: crate::accounts::settings::Int,
    idempotency_key: String,
}

fn post_settlement(shared: &NodeShared, id: &str, body: &[u8]) -> Reply {
    let s: Settlement = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => return json_error(400, format!("invalid settlement: {e}")),
    };
    let Ok(amount) = i64::try_from(s.amount.0) else {
        return json_error(400, "amount is outside ±2^63");
    };
    use crate::accounts::{SettleError, Settled};
    match shared.book.settle(id, amount, &s.idempotency_key) {
        Ok(Settled::Applied { balance }) => (
            200,
            "application/json",
            serde_json::json!({ "balance": balance.to_string(), "duplicate": false }).to_string(),
        ),
        Ok(Settled::Duplicate { balance }) => (
            200,
            "application/json",
            serde_json::json!({ "balance": balance.to_string(), "duplicate": true }).to_string(),
        ),
        Err(e @ SettleError::UnknownPeer(_)) => json_error(404, e),
        Err(e @ SettleError::Invalid(_)) => json_error(400, e),
        Err(e @ SettleError::Journal(_)) => {
            tracing::error!(nodeId = %shared.config.node_id, component = "accounts", event = "settlement_not_journaled", error = %e);
            json_error(500, e)
        }
    }
}

fn post_peer(shared: &NodeShared, body: &[u8]) -> Reply {
    let mut peer: PeerConfig = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return json_error(400, format!("invalid peer: {e}")),
    };
    if let Err(e) = peer.read_token_file("peer") {
        return json_error(400, e);
    }
    match add_peer(shared, peer) {
        Ok(()) => (201, "application/json", "{}".into()),
        Err(e @ PeerError::Exists(_)) => json_error(409, e),
        Err(e) => json_error(400, e),
    }
}

/// GET and HEAD read; everything else writes (and may carry a body).
pub fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Whether the request may go on; the refusal otherwise.
pub fn authorize(
    admin_token: Option<&Credential>,
    head: &Head,
    loopback: bool,
) -> Result<(), Reply> {
    let open = matches!(head.path.as_str(), "/health" | "/metrics") && head.method == Method::GET;
    if open {
        return Ok(());
    }
    let write = !is_read(&head.method);
    match &admin_token {
        None if write => {
            return Err(json_error(
                403,
                "no adminToken is configured, so the admin port is read-only",
            ))
        }
        None if !loopback => {
            return Err(json_error(
                403,
                "no adminToken is configured: only /health and /metrics are served off loopback",
            ))
        }
        None => {}
        Some(token) => {
            let given = head
                .authorization
                .as_deref()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !token.matches(given.as_bytes()) {
                return Err(json_error(401, "missing or wrong bearer token"));
            }
        }
    }
    if head.method == Method::POST {
        let json = head.content_type.as_deref().is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(json_error(415, "Content-Type must be application/json"));
        }
    }
    Ok(())
}

/// Answers an authorized read (quick: nothing here waits).
pub fn read(shared: &NodeShared, head: &Head) -> Reply {
    match head.path.as_str() {
        "/health" => {
            let h = health(shared);
            let code = if h.status == "ready" { 200 } else { 503 };
            (
                code,
                "application/json",
                serde_json::to_string(&h).unwrap_or_default(),
            )
        }
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics::render(
                &shared.metrics,
                &shared.link_counters,
                &shared.peers,
                &shared.identity,
                &shared.book,
                &metrics::RoutesReport {
                    learned: shared
                        .routes_learned
                        .load(std::sync::atomic::Ordering::Relaxed),
                    ccp: shared
                        .ccp
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .map(|c| c.counters())
                        .unwrap_or_default(),
                },
            ),
        ),
        "/accounts" => accounts_json(shared, None),
        path if path.starts_with("/accounts/") => {
            accounts_json(shared, Some(&path["/accounts/".len()..]))
        }
        "/peers" => peers_json(shared),
        "/routes" => routes_json(shared),
        _ => not_found(),
    }
}

/// Answers an authorized write with its body. May block (a peer change waits until every
/// shard has applied it, a settlement until its journal record is durable): the server runs
/// it on its blocking pool.
pub fn write(shared: &NodeShared, head: &Head, body: &[u8]) -> Reply {
    match (&head.method, head.path.as_str()) {
        (&Method::POST, "/tls/reload") => match reload_tls(shared) {
            Ok(()) => (200, "application/json", "{}".into()),
            Err(e) => json_error(500, e),
        },
        (&Method::POST, "/peers") => post_peer(shared, body),
        (&Method::POST, path)
            if path.starts_with("/accounts/") && path.ends_with("/settlements") =>
        {
            let id = &path["/accounts/".len()..path.len() - "/settlements".len()];
            post_settlement(shared, id, body)
        }
        (&Method::DELETE, path) if path.starts_with("/peers/") => {
            match remove_peer(shared, &path["/peers/".len()..]) {
                Ok(()) => (204, "application/json", String::new()),
                Err(e) => json_error(404, e),
            }
        }
        _ => not_found(),
    }
}

fn not_found() -> Reply {
    (404, "text/plain", "not found\n".to_owned())
}
