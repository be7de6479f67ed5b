//! Dialling a peer: name resolution (off the shard thread, bounded), TCP connect (bounded),
//! WebSocket upgrade, auth MESSAGE, wait for the RESPONSE (bounded). Reconnecting with backoff is the node's job ([`crate::node`]).
//!
//! URLs: `btp+ws://user:token@host:port/path` (user and token from the URL) or `ws://...`
//! with a configured token; without a user in the URL we send `default_user` (our node id).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use glommio::net::TcpStream;

use super::socket::Incoming;
use super::tls::{Stream, Ws};
use super::{upgrade, within, LinkError};
use crate::codec::btp::encode_auth;
use crate::codec::{BtpPacket, BtpType};

/// A parsed dial target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    /// `ws://host:port/path` (or `wss://…`) without user info.
    pub ws_url: String,
    pub host_port: String,
    /// The host name, for TLS (SNI and certificate check).
    pub host: String,
    /// `wss`: TLS over the TCP connection.
    pub tls: bool,
    pub username: Option<String>,
    pub token: Option<String>,
}

/// Parses `btp+ws://[user[:token]@]host[:port][/path]`, `ws://...`, and the same with `wss`
/// (TLS; default port 443).
pub fn parse_url(url: &str) -> Result<DialTarget, String> {
    let stripped = url.strip_prefix("btp+").unwrap_or(url);
    // Errors name the URL without its userinfo: it carries the token.
    let shown = crate::config::redact_url(url);
    let mut u = url::Url::parse(stripped).map_err(|e| format!("invalid url {shown:?}: {e}"))?;
    let tls = match u.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(format!(
                "unsupported url scheme {other:?} (ws, wss, btp+ws, btp+wss)"
            ))
        }
    };
    let (host, host_port) = host_and_port(&u, tls, &shown)?;
    let username = Some(u.username().to_owned()).filter(|s| !s.is_empty());
    let token = u.password().map(str::to_owned);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    Ok(DialTarget {
        ws_url: u.to_string(),
        host_port,
        host,
        tls,
        username,
        token,
    })
}

/// The host (without IPv6 brackets) and `host:port` to connect to (port 443 with TLS, else
/// 80, when the URL has none). `shown`: the URL as errors may show it.
pub fn host_and_port(u: &url::Url, tls: bool, shown: &str) -> Result<(String, String), String> {
    let host = u
        .host_str()
        .ok_or_else(|| format!("url {shown:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = u.port().unwrap_or(if tls { 443 } else { 80 });
    let host_port = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((host, host_port))
}

/// Resolves `host:port` off the shard thread (glommio's blocking pool), bounded by
/// `timeout`: a resolver that does not answer must not freeze the shard's traffic.
/// A literal IP address is used as it is.
pub async fn resolve(host_port: &str, timeout: Duration) -> Result<SocketAddr, LinkError> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let name = host_port.to_owned();
    let lookup = glommio::executor().spawn_blocking(move || {
        name.to_socket_addrs()
            .map(|mut a| a.next())
            .map_err(|e| e.to_string())
    });
    match within(timeout, lookup).await {
        Some(Ok(Some(addr))) => Ok(addr),
        Some(Ok(None)) => Err(LinkError::Connect(format!(
            "{host_port} resolves to nothing"
        ))),
        Some(Err(e)) => Err(LinkError::Connect(format!(
            "cannot resolve {host_port}: {e}"
        ))),
        None => Err(LinkError::Connect(format!(
            "resolving {host_port} took longer than {} ms",
            timeout.as_millis()
        ))),
    }
}

/// TCP connect (and TLS, checking `host`'s certificate against the system roots and
/// `ca_file`, offering the `alpn` protocols if any), each step bounded by `timeout`. Shared
/// by BTP and HTTP links.
pub async fn connect(
    host_port: &str,
    host: &str,
    tls: bool,
    timeout: Duration,
    ca_file: Option<&str>,
    alpn: &[&[u8]],
) -> Result<Stream, LinkError> {
    let addr = resolve(host_port, timeout).await?;
    let tcp = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Stream::Plain(tcp));
    }
    let mut config = super::tls::client_config(ca_file).map_err(LinkError::Connect)?;
    if !alpn.is_empty() {
        let mut c = (*config).clone();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config = std::sync::Arc::new(c);
    }
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| LinkError::Connect(format!("{host}: {e}")))?;
    let tls = within(
        timeout,
        futures_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .ok_or_else(|| LinkError::Connect("TLS handshake timed out".into()))?
    .map_err(|e| LinkError::Connect(format!("TLS: {e}")))?;
    Ok(Stream::Client(Box::new(tls)))
}

/// Connects and authenticates; returns the open WebSocket.
pub async fn dial(
    target: &DialTarget,
    default_user: &str,
    token: &str,
    timeout: Duration,
) -> Result<Ws, LinkError> {
    dial_with_ca(target, default_user, token, timeout, None)
        .await
        .map(|(ws, _)| ws)
}

/// As [`dial`], also returning how many links the peer said it accepts for our account (its
/// [`LINKS_ENTRY`](super::server::LINKS_ENTRY) in the auth RESPONSE), if it said; a `wss`
/// target's certificate is checked against the system roots and the certificates in
/// `ca_file` (PEM).
pub async fn dial_with_ca(
    target: &DialTarget,
    default_user: &str,
    token: &str,
    timeout: Duration,
    ca_file: Option<&str>,
) -> Result<(Ws, Option<usize>), LinkError> {
    let stream = connect(
        &target.host_port,
        &target.host,
        target.tls,
        timeout,
        ca_file,
        &[],
    )
    .await?;
    let mut ws = within(timeout, upgrade::connect(target.ws_url.as_str(), stream))
        .await
        .ok_or_else(|| LinkError::Connect("websocket handshake timed out".into()))??;

    let user = target.username.as_deref().unwrap_or(default_user);
    let token = target.token.as_deref().unwrap_or(token);
    let mut frame = BytesMut::new();
    let auth_id = 1;
    encode_auth(&mut frame, auth_id, user.as_bytes(), token.as_bytes());
    ws.send_binary(&frame);
    let answer = within(timeout, async {
        ws.flush()
            .await
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        match ws.next().await {
            Ok(Incoming::Binary(b)) => Ok(b),
            Ok(Incoming::Close) => Err(LinkError::Auth("closed during auth".into())),
            Err(e) => Err(LinkError::Connect(e.to_string())),
        }
    })
    .await
    .ok_or_else(|| LinkError::Auth("no auth answer in time".into()))??;
    let p = BtpPacket::decode(answer).map_err(|e| LinkError::Auth(e.to_string()))?;
    match (p.kind(), p.request_id()) {
        (BtpType::Response, id) if id == auth_id => {
            let links = p
                .entry(super::server::LINKS_ENTRY)
                .and_then(|e| std::str::from_utf8(e.data).ok()?.trim().parse().ok())
                .filter(|n| *n >= 1);
            Ok((ws, links))
        }
        (BtpType::Error, _) => {
            let reason = p
                .error()
                .map(|e| String::from_utf8_lossy(e.data).into_owned())
                .unwrap_or_default();
            Err(LinkError::Auth(reason))
        }
        _ => Err(LinkError::Auth("unexpected answer to auth".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("btp+ws://alice:s3cret@127.0.0.1:3002/path").unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:3002/path");
        assert_eq!(t.host_port, "127.0.0.1:3002");
        assert_eq!(t.username.as_deref(), Some("alice"));
        assert_eq!(t.token.as_deref(), Some("s3cret"));
        let t = parse_url("ws://localhost:9").unwrap();
        assert_eq!((t.username, t.token), (None, None));
        assert!(parse_url("http://x").is_err());
        let t = parse_url("btp+wss://a:b@node.example:7768").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.ws_url.as_str()),
            ("node.example", "wss://node.example:7768/")
        );
        assert_eq!(parse_url("wss://h").unwrap().host_port, "h:443");
        assert!(parse_url("nonsense").is_err());
    }

    #[test]
    fn resolve_off_the_shard() {
        let (literal, named) = crate::testkit::run_local(|| async {
            let t = Duration::from_secs(5);
            (
                resolve("127.0.0.1:9", t).await,
                resolve("localhost:9", t).await,
            )
        });
        assert_eq!(literal.unwrap().to_string(), "127.0.0.1:9");
        assert!(named.unwrap().ip().is_loopback());
    }
}
