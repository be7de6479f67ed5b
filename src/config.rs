//! Node configuration: YAML (serde_yaml_ng, a maintained fork of the deprecated serde_yaml),
//! unknown keys refused, then validated; environment overrides applied on top.
//!
//! Env overrides: `NODE_ID`, `BTP_SERVER_PORT`, `LOG_LEVEL`, and per peer
//! `BTP_PEER_<ID>_SECRET` (id upper-cased, `-` → `_`). Secrets never reach `Debug` output.

use serde::Deserialize;

use crate::accounts::convert::{
    Asset, Decimal, Factor, DEFAULT_ASSET_CODE, DEFAULT_ASSET_SCALE, MAX_SCALE,
};
use crate::accounts::settings::{
    BalanceConfig, Dec, Int, JournalConfig, RateLimitConfig, Rates, ThroughputConfig,
};
use crate::codec::Address;
use crate::routing::Route;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Yaml(String),
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    Peer,
    Child,
    Parent,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    pub id: String,
    pub relation: Relation,
    /// Set when we dial this peer.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    /// A file holding the token (systemd credentials, Kubernetes secrets); read at load, one
    /// trailing newline dropped. Replaces `authToken`; the env variable replaces both.
    #[serde(default)]
    pub auth_token_file: Option<String>,
    /// Asset for ILDCP answers to a child; unset: our own asset (learned from our parent, or
    /// XRP with scale 9).
    #[serde(default)]
    pub asset_code: Option<String>,
    #[serde(default)]
    pub asset_scale: Option<u8>,
    /// Links to keep to a peer we dial: `auto` (one, from the peer's home shard, and one
    /// per shard when the peer's auth answer says it accepts several) or a fixed count.
    #[serde(default)]
    pub links: Links,
    /// Largest amount accepted in one Prepare from this peer (its units): above it, F08.
    #[serde(default)]
    pub max_packet_amount: Option<Int>,
    /// Balance limits (see `accounts`); absent: the peer is not accounted (unlimited).
    #[serde(default)]
    pub balance: Option<BalanceConfig>,
    /// Prepares per second from this peer; over it, T05.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Amount per second from this peer; over it, T04.
    #[serde(default)]
    pub throughput: Option<ThroughputConfig>,
    /// Route protocol (CCP): advertise our routes to this peer. Default: yes for `peer` and
    /// `parent`, no for `child` (as the JS connector).
    #[serde(default)]
    pub send_routes: Option<bool>,
    /// Route protocol: take routes from this peer. Same defaults.
    #[serde(default)]
    pub receive_routes: Option<bool>,
    /// ILP-over-HTTP peers (`url: http://…` / `https://…`): the bearer token we send; default
    /// `authToken` (which stays the token the peer must present to us).
    #[serde(default)]
    pub outgoing_auth_token: Option<String>,
    /// ILP-over-HTTP peers: speak HTTP/2 to it (one multiplexed connection) instead of
    /// HTTP/1.1 (one connection per request in flight).
    #[serde(default)]
    pub http2: bool,
}

/// How many links to keep to a dialled peer (see [`PeerConfig::links`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "LinksRepr")]
pub enum Links {
    #[default]
    Auto,
    Fixed(usize),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LinksRepr {
    Count(usize),
    Word(String),
}

impl TryFrom<LinksRepr> for Links {
    type Error = String;
    fn try_from(r: LinksRepr) -> Result<Links, String> {
        match r {
            LinksRepr::Count(n) if n >= 1 => Ok(Links::Fixed(n)),
            LinksRepr::Word(w) if w == "auto" => Ok(Links::Auto),
            _ => Err("links must be auto or a count of at least 1".into()),
        }
    }
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("id", &self.id)
            .field("relation", &self.relation)
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl PeerConfig {
    /// Reads `authTokenFile` into `authToken`.
    pub fn read_token_file(&mut self, key: &str) -> Result<(), ConfigError> {
        if let Some(path) = &self.auth_token_file {
            self.auth_token = Some(read_secret_file(path, &format!("{key}.authTokenFile"))?);
        }
        Ok(())
    }

    /// Checks one peer on its own (a peer added at runtime gets the same checks as config).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as("peer")
    }

    fn validate_as(&self, key: &str) -> Result<(), ConfigError> {
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_~-".contains(c))
        {
            return Err(invalid(
                format!("{key}.id"),
                format!("{:?} must be a non-empty address segment", self.id),
            ));
        }
        let url_token = match &self.url {
            Some(url) if self.is_http() => {
                crate::http::client::parse_url(url)
                    .map_err(|e| invalid(format!("{key}.url"), e))?;
                None
            }
            Some(url) => {
                crate::btp::client::parse_url(url)
                    .map_err(|e| invalid(format!("{key}.url"), e))?
                    .token
            }
            None => None,
        };
        if self
            .outgoing_auth_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid(
                format!("{key}.outgoingAuthToken"),
                "must not be empty",
            ));
        }
        // Every link is authenticated by a token: an empty one (an unset variable in a
        // compose file) would let anyone in, or log us in nowhere.
        let blank = |t: &Option<String>| t.as_deref().is_none_or(|t| t.trim().is_empty());
        if self.auth_token.is_some() && blank(&self.auth_token) {
            return Err(invalid(
                format!("{key}.authToken"),
                format!(
                    "the token of peer {:?} is empty (from the config, env {} or authTokenFile)",
                    self.id,
                    secret_env_name(&self.id)
                ),
            ));
        }
        if blank(&self.auth_token) && blank(&url_token) {
            return Err(invalid(
                format!("{key}.authToken"),
                format!(
                    "peer {:?} needs a token: authToken, authTokenFile, env {}{}",
                    self.id,
                    secret_env_name(&self.id),
                    if self.url.is_some() {
                        " or the url's password"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(Int(m)) = self.max_packet_amount {
            if u64::try_from(m).is_err() {
                return Err(invalid(
                    format!("{key}.maxPacketAmount"),
                    format!("{m} is not an amount (0 to 2^64 − 1)"),
                ));
            }
        }
        if let Some(b) = &self.balance {
            b.limits()
                .map_err(|e| invalid(format!("{key}.balance"), e))?;
        }
        if let Some(r) = &self.rate_limit {
            if r.packets_per_second == 0 || r.burst == Some(0) {
                return Err(invalid(
                    format!("{key}.rateLimit"),
                    "packetsPerSecond and burst must be positive",
                ));
            }
        }
        if let Some(t) = &self.throughput {
            t.amount_per_second()
                .map_err(|e| invalid(format!("{key}.throughput.amountPerSecond"), e))?;
        }
        if self.asset_scale.is_some_and(|s| s > MAX_SCALE) {
            return Err(invalid(
                format!("{key}.assetScale"),
                format!("at most {MAX_SCALE}"),
            ));
        }
        Ok(())
    }

    /// Whether we reach this peer by ILP-over-HTTP (`url` is `http://` or `https://`).
    pub fn is_http(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
    }

    /// The BTP URL we dial, if we dial this peer over BTP.
    pub fn btp_url(&self) -> Option<&str> {
        self.url.as_deref().filter(|_| !self.is_http())
    }

    /// `maxPacketAmount` as an amount (checked by `validate`).
    pub fn max_packet_amount(&self) -> Option<u64> {
        self.max_packet_amount
            .and_then(|Int(m)| u64::try_from(m).ok())
    }
}

/// A secret from a file (systemd credentials, Kubernetes secrets), one trailing newline
/// dropped; emptiness is checked with the other secrets.
fn read_secret_file(path: &str, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {path}: {e}")))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    Ok(secret.strip_suffix('\r').unwrap_or(secret).to_owned())
}

/// A URL with its whole userinfo (user and password) replaced, for logs, errors and the admin
/// port. The userinfo runs to the *last* `@` after the scheme: a password may itself contain
/// `@` or `:` (redacting part of a path with an `@` in it is the safe mistake).
pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return match url.rfind('@') {
            Some(at) => format!("<redacted>{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    match url[start..].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub next_hop: String,
}

/// Either a shard count or explicit cores.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub node_id: String,
    /// Our ILP address. Optional with a parent: it is then learned from the parent by ILDCP
    /// (see [`Config::ildcp_parent`]).
    #[serde(default)]
    pub ilp_address: Option<String>,
    /// Without `ilpAddress`, the parent (peer id) to learn our address from by ILDCP; needed
    /// only when there are several parents.
    #[serde(default)]
    pub ildcp_from: Option<String>,
    #[serde(default)]
    pub btp_server_port: u16,
    #[serde(default)]
    pub btp_server_host: Option<String>,
    /// ILP-over-HTTP server port (peers POST Prepares to it); none: no HTTP server.
    #[serde(default)]
    pub http_server_port: Option<u16>,
    /// Where the HTTP server listens (default 127.0.0.1).
    #[serde(default)]
    pub http_server_host: Option<String>,
    /// TLS for the HTTP port (then it serves `https` only).
    #[serde(default)]
    pub http_server_tls: Option<TlsFiles>,
    /// An HTTP connection that sends nothing this long while none of its requests is being
    /// answered is closed (idle keep-alive, or stalled halfway through its headers).
    #[serde(default = "d_http_idle")]
    pub http_idle_timeout_ms: u64,
    /// Serve BTP over TLS only (`wss`), with this certificate chain and key (PEM files).
    #[serde(default)]
    pub btp_server_tls: Option<TlsFiles>,
    /// Extra CA certificates (PEM) trusted, besides the system's, when dialling `wss` peers.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    #[serde(default)]
    pub health_check_port: Option<u16>,
    /// Where the admin port listens (default 127.0.0.1).
    #[serde(default)]
    pub admin_host: Option<String>,
    /// Bearer token for every admin endpoint except `/health` and `/metrics` (env
    /// `ADMIN_TOKEN`, or `adminTokenFile`). Without one, writes are refused (403) and reads
    /// other than those two are served only on a loopback `adminHost`.
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<String>,
    #[serde(default)]
    pub shards: Option<usize>,
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Next hop for destinations no route matches.
    #[serde(default)]
    pub default_route: Option<String>,
    #[serde(default = "d_send_timeout")]
    pub send_timeout_ms: u64,
    #[serde(default = "d_margin")]
    pub expiry_margin_ms: u64,
    #[serde(default = "d_max_hold")]
    pub max_hold_time_ms: u64,
    #[serde(default = "d_auth_timeout")]
    pub auth_timeout_ms: u64,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_ping")]
    pub ping_interval_ms: u64,
    #[serde(default = "d_pong")]
    pub pong_timeout_ms: u64,
    #[serde(default = "d_backoff")]
    pub reconnect_backoff_ms: Vec<u64>,
    /// Stop dialling after this many failed attempts in a row; absent = keep trying at the cap.
    #[serde(default)]
    pub reconnect_max_attempts: Option<u32>,
    /// How long `start` reports `starting` while dialling peers.
    #[serde(default = "d_ready_timeout")]
    pub ready_timeout_ms: u64,
    /// How long `stop` lets in-flight packets finish.
    #[serde(default = "d_drain")]
    pub drain_timeout_ms: u64,
    #[serde(default = "d_max_conn")]
    pub max_connections_per_peer: usize,
    #[serde(default = "d_max_in_flight")]
    pub max_in_flight_per_link: usize,
    /// Spin this long polling for I/O before an idle shard sleeps (0 = sleep at once).
    /// Trades idle CPU for wake-up latency; see tuning.md.
    #[serde(default)]
    pub spin_before_park_us: u64,
    /// Prepares a shard handles at once; more are refused with T03 (connector busy).
    #[serde(default = "d_max_in_flight_shard")]
    pub max_in_flight_per_shard: usize,
    /// Prepares one peer may have in flight on one shard; more are refused with T05 (rate
    /// limited: the sender itself is over its share, other peers are untouched).
    #[serde(default = "d_max_in_flight_peer")]
    pub max_in_flight_per_peer: usize,
    /// A write to a peer's socket that makes no progress this long kills the link.
    #[serde(default = "d_write_timeout")]
    pub write_timeout_ms: u64,
    /// Connections on one shard still in the WebSocket handshake or auth; more are closed
    /// at once.
    #[serde(default = "d_max_unauth")]
    pub max_unauthenticated_per_shard: usize,
    /// A peer at `maxConnectionsPerPeer` gets in anyway by replacing its oldest link on the
    /// shard it reached, if that link has been silent this long (a half-open leftover).
    #[serde(default = "d_replace_silent")]
    pub replace_silent_link_ms: u64,
    /// Failed BTP logins from one IP address within a minute (per shard) after which its
    /// connections are closed before the handshake until that minute ends.
    #[serde(default = "d_max_auth_failures")]
    pub max_auth_failures_per_ip: u32,
    /// Our asset, and every peer's unless it has its own (default: learned from the parent,
    /// else XRP with scale 9).
    #[serde(default)]
    pub asset_code: Option<String>,
    #[serde(default)]
    pub asset_scale: Option<u8>,
    /// Value of one unit of each asset code in a common base, for peers in different assets.
    #[serde(default)]
    pub rates: Rates,
    /// Share of the converted amount the connector keeps between different assets (0 ≤ s < 1).
    #[serde(default)]
    pub spread: Option<Dec>,
    /// Where balances are journaled; required when a peer has `balance`.
    #[serde(default)]
    pub journal: Option<JournalConfig>,
    /// The route protocol (CCP) with peers and parents; off: static routes only.
    #[serde(default = "d_true")]
    pub route_broadcast: bool,
    /// CCP: a heartbeat update goes to each listening peer this long after the last one.
    #[serde(default = "d_route_broadcast_interval")]
    pub route_broadcast_interval_ms: u64,
    /// CCP: the hold-down time we advertise; a peer silent for twice its own hold-down
    /// loses the routes it taught us.
    #[serde(default = "d_route_expiry")]
    pub route_expiry_ms: u32,
}

fn d_true() -> bool {
    true
}
fn d_http_idle() -> u64 {
    30_000
}
fn d_route_broadcast_interval() -> u64 {
    30_000
}
fn d_route_expiry() -> u32 {
    45_000
}

fn default_log_level() -> String {
    "info".into()
}
fn d_send_timeout() -> u64 {
    10_000
}
fn d_margin() -> u64 {
    1_000
}
fn d_max_hold() -> u64 {
    30_000
}
fn d_auth_timeout() -> u64 {
    5_000
}
fn d_connect_timeout() -> u64 {
    5_000
}
fn d_ping() -> u64 {
    30_000
}
fn d_pong() -> u64 {
    10_000
}
fn d_backoff() -> Vec<u64> {
    vec![1_000, 2_000, 4_000, 8_000, 16_000]
}
fn d_ready_timeout() -> u64 {
    10_000
}
fn d_drain() -> u64 {
    5_000
}
fn d_max_conn() -> usize {
    4
}
fn d_max_in_flight() -> usize {
    65_536
}
fn d_max_in_flight_shard() -> usize {
    100_000
}
fn d_max_in_flight_peer() -> usize {
    10_000
}
fn d_write_timeout() -> u64 {
    5_000
}
fn d_max_unauth() -> usize {
    256
}
fn d_max_auth_failures() -> u32 {
    20
}
fn d_replace_silent() -> u64 {
    5_000
}

impl Config {
    /// Parses and validates YAML text (no env overrides).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let cfg = Self::parse(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// YAML → `Config`, unknown keys refused; not yet validated.
    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        for (i, p) in cfg.peers.iter_mut().enumerate() {
            p.read_token_file(&format!("peers[{i}]"))?;
        }
        if let Some(path) = &cfg.admin_token_file {
            cfg.admin_token = Some(read_secret_file(path, "adminTokenFile")?);
        }
        Ok(cfg)
    }

    /// Reads a file, applies the environment overrides, validates.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = get("ILP_ADDRESS") {
            self.ilp_address = Some(v);
        }
        if let Some(v) = get("ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = get("BTP_SERVER_PORT") {
            self.btp_server_port = v
                .parse()
                .map_err(|_| invalid("BTP_SERVER_PORT", format!("{v:?} is not a port")))?;
        }
        if let Some(v) = get("LOG_LEVEL") {
            self.log_level = v;
        }
        for p in &mut self.peers {
            if let Some(secret) = get(&secret_env_name(&p.id)) {
                p.auth_token = Some(secret);
            }
        }
        Ok(())
    }

    /// Without `ilpAddress`: the parent our address is learned from (`ildcpFrom`, else the one
    /// peer with `relation: parent`); `None` when `ilpAddress` is set.
    pub fn ildcp_parent(&self) -> Result<Option<&str>, ConfigError> {
        if self.ilp_address.is_some() {
            return Ok(None);
        }
        let parents: Vec<&PeerConfig> = self
            .peers
            .iter()
            .filter(|p| p.relation == Relation::Parent)
            .collect();
        match (&self.ildcp_from, parents.as_slice()) {
            (Some(id), _) => match parents.iter().find(|p| p.id == *id) {
                Some(p) => Ok(Some(p.id.as_str())),
                None => Err(invalid(
                    "ildcpFrom",
                    format!("{id:?} is not a peer with relation: parent"),
                )),
            },
            (None, [only]) => Ok(Some(only.id.as_str())),
            (None, []) => Err(invalid(
                "ilpAddress",
                "missing: set it, or add a peer with relation: parent to learn it from (ILDCP)",
            )),
            (None, _) => Err(invalid(
                "ilpAddress",
                "missing and there are several parents: set ildcpFrom to the one to learn it from",
            )),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() {
            return Err(invalid("nodeId", "must not be empty"));
        }
        match &self.ilp_address {
            Some(a) => {
                Address::new(a.clone())
                    .map_err(|e| invalid("ilpAddress", format!("{a:?}: {e}")))?;
                if self.ildcp_from.is_some() {
                    return Err(invalid(
                        "ildcpFrom",
                        "only used without ilpAddress (the address is then learned from that parent)",
                    ));
                }
            }
            None => {
                self.ildcp_parent()?;
            }
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid(
                "adminToken",
                "is empty (from the config, env ADMIN_TOKEN or adminTokenFile)",
            ));
        }
        if let Some(t) = &self.http_server_tls {
            crate::btp::tls::server_config(&t.cert_file, &t.key_file)
                .map_err(|e| invalid("httpServerTls", e))?;
        }
        if let Some(t) = &self.btp_server_tls {
            crate::btp::tls::server_config(&t.cert_file, &t.key_file)
                .map_err(|e| invalid("btpServerTls", e))?;
        }
        if let Some(ca) = &self.tls_ca_file {
            crate::btp::tls::client_config(Some(ca)).map_err(|e| invalid("tlsCaFile", e))?;
        }
        if !matches!(
            self.log_level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(invalid(
                "logLevel",
                format!("{:?} (trace, debug, info, warn, error)", self.log_level),
            ));
        }
        if self.shards == Some(0) {
            return Err(invalid("shards", "must be at least 1"));
        }
        if self.cores.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(invalid("cores", "must list at least one core"));
        }
        if self.shards.is_some() && self.cores.is_some() {
            return Err(invalid("shards", "give shards or cores, not both"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            p.validate_as(&key)?;
            if !seen.insert(p.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("duplicate peer {:?}", p.id),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            Route::new(&r.prefix, &r.next_hop)
                .map_err(|e| invalid(format!("routes[{i}].prefix"), e.to_string()))?;
            if !seen.contains(r.next_hop.as_str()) {
                return Err(invalid(
                    format!("routes[{i}].nextHop"),
                    format!("{:?} is not a configured peer", r.next_hop),
                ));
            }
        }
        if let Some(d) = &self.default_route {
            if !seen.contains(d.as_str()) {
                return Err(invalid(
                    "defaultRoute",
                    format!("{d:?} is not a configured peer"),
                ));
            }
        }
        self.validate_accounts()?;
        if self.reconnect_backoff_ms.is_empty() {
            return Err(invalid(
                "reconnectBackoffMs",
                "must list at least one delay",
            ));
        }
        for (key, v) in [
            ("sendTimeoutMs", self.send_timeout_ms),
            ("writeTimeoutMs", self.write_timeout_ms),
            ("authTimeoutMs", self.auth_timeout_ms),
            ("maxInFlightPerPeer", self.max_in_flight_per_peer as u64),
            ("maxInFlightPerShard", self.max_in_flight_per_shard as u64),
            (
                "maxConnectionsPerPeer",
                self.max_connections_per_peer as u64,
            ),
            (
                "maxUnauthenticatedPerShard",
                self.max_unauthenticated_per_shard as u64,
            ),
            (
                "maxAuthFailuresPerIp",
                u64::from(self.max_auth_failures_per_ip),
            ),
            ("routeBroadcastIntervalMs", self.route_broadcast_interval_ms),
            ("httpIdleTimeoutMs", self.http_idle_timeout_ms),
            ("routeExpiryMs", u64::from(self.route_expiry_ms)),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        Ok(())
    }

    /// Accounting: `spread` below 1, scales in range, a journal when any peer has a
    /// balance, and a rate for every pair of different assets a packet could cross.
    fn validate_accounts(&self) -> Result<(), ConfigError> {
        let spread = self.spread();
        if !spread.below_one() {
            return Err(invalid("spread", "must be at least 0 and below 1"));
        }
        if self.asset_scale.is_some_and(|s| s > MAX_SCALE) {
            return Err(invalid("assetScale", format!("at most {MAX_SCALE}")));
        }
        if self.journal.is_none() {
            if let Some(p) = self.peers.iter().find(|p| p.balance.is_some()) {
                return Err(invalid(
                    "journal.dir",
                    format!(
                        "peer {:?} has a balance: set journal.dir, where balances are kept across restarts",
                        p.id
                    ),
                ));
            }
        }
        if let Some(j) = &self.journal {
            if j.dir.trim().is_empty() {
                return Err(invalid("journal.dir", "must not be empty"));
            }
            if j.sync_interval_ms == 0 {
                return Err(invalid("journal.syncIntervalMs", "must be positive"));
            }
        }
        let rates: std::collections::BTreeMap<String, Decimal> = self
            .rates
            .iter()
            .map(|(k, Dec(v))| (k.clone(), *v))
            .collect();
        let assets: Vec<(&str, Asset)> = self
            .peers
            .iter()
            .filter_map(|p| self.peer_asset(p, None).map(|a| (p.id.as_str(), a)))
            .collect();
        for (i, (a, x)) in assets.iter().enumerate() {
            for (b, y) in &assets[i + 1..] {
                for (from, to) in [(x, y), (y, x)] {
                    Factor::between(from, to, &rates, spread)
                        .map_err(|e| invalid("rates", format!("peers {a:?} and {b:?}: {e}")))?;
                }
            }
        }
        Ok(())
    }

    /// The connector's spread (0 when not set).
    pub fn spread(&self) -> Decimal {
        self.spread.map_or(Decimal::ZERO, |Dec(d)| d)
    }

    /// A peer's asset: its own `assetCode`/`assetScale`, else the node's, else `learned`
    /// (the asset our parent gave us by ILDCP), else — with a configured `ilpAddress` — XRP
    /// with scale 9. `None` while it depends on what the parent has not told us yet.
    pub fn peer_asset(&self, p: &PeerConfig, learned: Option<(&str, u8)>) -> Option<Asset> {
        let fallback = match (learned, self.ilp_address.is_some()) {
            (Some((code, scale)), _) => Some((code, scale)),
            (None, true) => Some((DEFAULT_ASSET_CODE, DEFAULT_ASSET_SCALE)),
            (None, false) => None,
        };
        let code = p
            .asset_code
            .clone()
            .or_else(|| self.asset_code.clone())
            .or_else(|| fallback.map(|f| f.0.to_owned()))?;
        let scale = p
            .asset_scale
            .or(self.asset_scale)
            .or(fallback.map(|f| f.1))?;
        Some(Asset { code, scale })
    }

    pub fn shard_count(&self) -> usize {
        self.cores
            .as_ref()
            .map_or(self.shards.unwrap_or(1), Vec::len)
    }
}

/// `BTP_PEER_<ID>_SECRET` with the id upper-cased and `-` → `_`.
pub fn secret_env_name(peer_id: &str) -> String {
    format!(
        "BTP_PEER_{}_SECRET",
        peer_id.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\npeers:\n  - id: connector-b\n    relation: peer\n    url: ws://127.0.0.1:3002\n    authToken: s\nroutes:\n  - prefix: test.c\n    nextHop: connector-b\n";

    #[test]
    fn minimal_config_and_env() {
        let mut c = Config::from_yaml(MIN).unwrap();
        assert_eq!(c.send_timeout_ms, 10_000);
        assert_eq!(c.shard_count(), 1);
        c.apply_env(|k| match k {
            "BTP_PEER_CONNECTOR_B_SECRET" => Some("env-secret".into()),
            "BTP_SERVER_PORT" => Some("4000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.peers[0].auth_token.as_deref(), Some("env-secret"));
        assert_eq!(c.btp_server_port, 4000);
        assert!(!format!("{:?}", c).contains("env-secret"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_yaml(&format!("{MIN}bogus: 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line"), "{e}");
        let e = Config::from_yaml(&MIN.replace("test.c", "nope.c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].prefix"), "{e}");
        let e = Config::from_yaml(&MIN.replace("nextHop: connector-b", "nextHop: x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].nextHop"), "{e}");
        let e = Config::from_yaml(&MIN.replace("ilpAddress: test.a", "ilpAddress: a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ilpAddress"), "{e}");
    }

    #[test]
    fn address_from_the_parent() {
        let up = |id: &str| {
            format!("  - {{id: {id}, relation: parent, url: \"ws://127.0.0.1:1\", authToken: t}}\n")
        };
        let kid = "  - {id: kid, relation: child, authToken: t}\n";
        // One parent: the address comes from it.
        let c = Config::from_yaml(&format!("nodeId: n\npeers:\n{}{kid}", up("b"))).unwrap();
        assert_eq!(c.ildcp_parent().unwrap(), Some("b"));
        // No parent: refused, in one line that says what to do.
        let e = Config::from_yaml(&format!("nodeId: n\npeers:\n{kid}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ilpAddress") && e.contains("parent") && !e.contains('\n'),
            "{e}"
        );
        // Several parents: ildcpFrom chooses; without it, refused.
        let two = format!("nodeId: n\npeers:\n{}{}", up("b"), up("x"));
        let e = Config::from_yaml(&two).unwrap_err().to_string();
        assert!(e.contains("ildcpFrom"), "{e}");
        let c = Config::from_yaml(&format!("{two}ildcpFrom: x\n")).unwrap();
        assert_eq!(c.ildcp_parent().unwrap(), Some("x"));
        let e = Config::from_yaml(&format!("{two}ildcpFrom: kid\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a peer with relation: parent"), "{e}");
        // ildcpFrom next to an address is a mistake.
        let e = Config::from_yaml(&format!(
            "nodeId: n\nilpAddress: test.n\nildcpFrom: b\npeers:\n{}",
            up("b")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("ildcpFrom"), "{e}");
        // A configured address needs no parent.
        let c =
            Config::from_yaml(&format!("nodeId: n\nilpAddress: test.n\npeers:\n{kid}")).unwrap();
        assert_eq!(c.ildcp_parent().unwrap(), None);
    }

    #[test]
    fn redaction() {
        for (url, shown) in [
            ("btp+ws://u:pw@h:1/p", "btp+ws://<redacted>@h:1/p"),
            ("ws://h:1", "ws://h:1"),
            // The two leaks: a ':' and an '@' inside the password.
            ("btp+ws://u:pa:ss-topsecret@h:1", "btp+ws://<redacted>@h:1"),
            ("btp+ws://u:p@ss-topsecret@h:1", "btp+ws://<redacted>@h:1"),
            ("btp+ws://u@h:1", "btp+ws://<redacted>@h:1"),
            ("u:secret@h", "<redacted>@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // An unparsable URL is named without its password.
        let e = Config::from_yaml(
            "nodeId: n\nilpAddress: test.n\npeers:\n  - {id: p, relation: peer, url: \"btp+ws://u:topsecret@[bad\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("topsecret") && e.contains("url"), "{e}");
    }

    #[test]
    fn empty_or_missing_secrets_are_config_errors() {
        let with = |peer: &str| format!("nodeId: n\nilpAddress: test.n\npeers:\n  - {peer}\n");
        for peer in [
            "{id: bank, relation: child, authToken: \"\"}",
            "{id: bank, relation: child, authToken: \"  \"}",
            "{id: bank, relation: child}",
            "{id: bank, relation: peer, url: \"ws://h:1\"}",
        ] {
            let e = Config::from_yaml(&with(peer)).unwrap_err().to_string();
            assert!(e.contains("authToken") && e.contains("bank"), "{peer}: {e}");
        }
        // A token in the url is enough for a peer we dial.
        Config::from_yaml(&with(
            "{id: bank, relation: peer, url: \"btp+ws://me:tok@h:1\"}",
        ))
        .unwrap();
        // An empty env variable (an unset compose variable) replacing a good token is refused.
        let mut c = Config::parse(&with("{id: bank, relation: child, authToken: good}")).unwrap();
        c.apply_env(|k| (k == "BTP_PEER_BANK_SECRET").then(String::new))
            .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("empty"));
        // authTokenFile: read, one newline dropped; an empty file or a missing one is refused.
        let dir = std::env::temp_dir().join(format!("ilp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, empty) = (dir.join("good"), dir.join("empty"));
        std::fs::write(&good, "s3cret\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let file = |f: &std::path::Path| {
            with(&format!(
                "{{id: bank, relation: child, authTokenFile: {}}}",
                f.display()
            ))
        };
        let c = Config::from_yaml(&file(&good)).unwrap();
        assert_eq!(c.peers[0].auth_token.as_deref(), Some("s3cret"));
        assert!(Config::from_yaml(&file(&empty))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = Config::from_yaml(&file(&dir.join("missing")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("authTokenFile") && e.contains("cannot read"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        // The admin token too.
        let e = Config::from_yaml(&format!(
            "{}adminToken: \" \"\n",
            with("{id: bank, relation: child, authToken: t}")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("adminToken"), "{e}");
    }
}
