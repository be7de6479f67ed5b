//! The admin HTTP port (tiny_http, on its own thread, off the shards), bound to `adminHost`
//! (default 127.0.0.1). `/health` and `/metrics` are open; every other endpoint needs
//! `Authorization: Bearer <adminToken>` (compared in constant time). Without an admin token,
//! writes get 403 (so a web page in a browser on the host cannot add a peer), and the other
//! reads are served only on a loopback `adminHost`. Writes also need
//! `Content-Type: application/json` (a browser cannot send that cross-site without a
//! preflight we never answer).
//! - `GET /health`: 200 when ready, else 503, JSON;
//! - `GET /metrics`: Prometheus text;
//! - `GET /peers`: every peer with its relation and live links per shard (no secrets);
//! - `GET /routes`: the routing table (`prefix`, `nextHop`; the default route has prefix `""`);
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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::io::Read;

use crate::btp::auth::Credential;
use crate::config::PeerConfig;
use crate::node::connector::{add_peer, health, reload_tls, remove_peer, NodeShared};
use crate::node::metrics;
use crate::node::peers::PeerError;

/// Largest request body read (a peer definition is a few hundred bytes).
const MAX_BODY: u64 = 64 * 1024;

type Reply = (u16, &'static str, String);

fn json_error(status: u16, message: impl std::fmt::Display) -> Reply {
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
    let trie = shared.routing.snapshot();
    let mut list: Vec<serde_json::Value> = trie
        .routes()
        .iter()
        .map(|r| serde_json::json!({ "prefix": r.prefix(), "nextHop": r.next_hop() }))
        .collect();
    if let Some(d) = trie.default_route() {
        list.push(serde_json::json!({ "prefix": "", "nextHop": d.next_hop() }));
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

fn post_settlement(shared: &NodeShared, id: &str, req: &mut tiny_http::Request) -> Reply {
    let mut body = String::new();
    if let Err(e) = req.as_reader().take(MAX_BODY).read_to_string(&mut body) {
        return json_error(400, format!("cannot read body: {e}"));
    }
    let s: Settlement = match serde_json::from_str(&body) {
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

fn post_peer(shared: &NodeShared, req: &mut tiny_http::Request) -> Reply {
    let mut body = String::new();
    if let Err(e) = req.as_reader().take(MAX_BODY).read_to_string(&mut body) {
        return json_error(400, format!("cannot read body: {e}"));
    }
    let mut peer: PeerConfig = match serde_json::from_str(&body) {
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
fn is_read(method: &tiny_http::Method) -> bool {
    matches!(method, tiny_http::Method::Get | tiny_http::Method::Head)
}

/// Whether the request may go on; the refusal otherwise.
fn authorize(
    admin_token: Option<&Credential>,
    req: &tiny_http::Request,
    loopback: bool,
) -> Result<(), Reply> {
    let open = matches!(req.url(), "/health" | "/metrics")
        && matches!(req.method(), tiny_http::Method::Get);
    if open {
        return Ok(());
    }
    let write = !is_read(req.method());
    let header = |name: &str| {
        req.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    };
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
            let given = header("Authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
                .unwrap_or_default();
            if !token.matches(given.as_bytes()) {
                return Err(json_error(401, "missing or wrong bearer token"));
            }
        }
    }
    if write && matches!(req.method(), tiny_http::Method::Post) {
        let json = header("Content-Type").is_some_and(|c| {
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

fn route(
    shared: &NodeShared,
    admin_token: Option<&Credential>,
    req: &mut tiny_http::Request,
    loopback: bool,
) -> Reply {
    if let Err(refused) = authorize(admin_token, req, loopback) {
        return refused;
    }
    let url = req.url().to_owned();
    match (req.method(), url.as_str()) {
        (tiny_http::Method::Get, "/health") => {
            let h = health(shared);
            let code = if h.status == "ready" { 200 } else { 503 };
            (
                code,
                "application/json",
                serde_json::to_string(&h).unwrap_or_default(),
            )
        }
        (tiny_http::Method::Get, "/metrics") => (
            200,
            "text/plain; version=0.0.4",
            metrics::render(
                &shared.metrics,
                &shared.link_counters,
                &shared.peers,
                &shared.identity,
                &shared.book,
            ),
        ),
        (tiny_http::Method::Get, "/accounts") => accounts_json(shared, None),
        (tiny_http::Method::Get, path) if path.starts_with("/accounts/") => {
            accounts_json(shared, Some(&path["/accounts/".len()..]))
        }
        (tiny_http::Method::Post, path)
            if path.starts_with("/accounts/") && path.ends_with("/settlements") =>
        {
            let id = &path["/accounts/".len()..path.len() - "/settlements".len()];
            post_settlement(shared, id, req)
        }
        (tiny_http::Method::Get, "/peers") => peers_json(shared),
        (tiny_http::Method::Get, "/routes") => routes_json(shared),
        (tiny_http::Method::Post, "/tls/reload") => match reload_tls(shared) {
            Ok(()) => (200, "application/json", "{}".into()),
            Err(e) => json_error(500, e),
        },
        (tiny_http::Method::Post, "/peers") => post_peer(shared, req),
        (tiny_http::Method::Delete, path) if path.starts_with("/peers/") => {
            match remove_peer(shared, &path["/peers/".len()..]) {
                Ok(()) => (204, "application/json", String::new()),
                Err(e) => json_error(404, e),
            }
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    }
}

/// Write requests handled at once (each on its own thread, reading its body).
const MAX_WRITERS: usize = 4;

fn respond(req: tiny_http::Request, (status, ctype, body): Reply) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes());
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(h) = header {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
}

pub struct AdminServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    pub(crate) fn start(port: u16, shared: Arc<NodeShared>) -> Result<AdminServer, String> {
        let host = shared.config.admin_host.as_deref().unwrap_or("127.0.0.1");
        let server = tiny_http::Server::http((host, port)).map_err(|e| e.to_string())?;
        let loopback = server
            .server_addr()
            .to_ip()
            .is_some_and(|a| a.ip().is_loopback());
        let port = server.server_addr().to_ip().map_or(port, |a| a.port());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let writers = Arc::new(AtomicUsize::new(0));
        // Compared like BTP tokens: constant time over digests.
        let admin_token = shared
            .config
            .admin_token
            .as_deref()
            .map(|t| Arc::new(Credential::new("admin", t)));
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    if is_read(req.method()) {
                        let reply = route(&shared, admin_token.as_deref(), &mut req, loopback);
                        respond(req, reply);
                        continue;
                    }
                    // A write reads a body, which a client may never send: off this thread
                    // (so /health keeps answering), at most MAX_WRITERS at once.
                    if writers.fetch_add(1, Ordering::SeqCst) >= MAX_WRITERS {
                        writers.fetch_sub(1, Ordering::SeqCst);
                        respond(req, json_error(503, "too many admin writes in progress"));
                        continue;
                    }
                    let (node, done, token) =
                        (shared.clone(), writers.clone(), admin_token.clone());
                    let spawned = std::thread::Builder::new()
                        .name("admin-write".into())
                        .spawn(move || {
                            let reply = route(&node, token.as_deref(), &mut req, loopback);
                            respond(req, reply);
                            done.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        writers.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(AdminServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
