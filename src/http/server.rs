//! The HTTP side of the BTP port's job: accepts ILP-over-HTTP peers on `httpServerPort`
//! (every shard binds it, SO_REUSEPORT), HTTP/1.1 keep-alive or HTTP/2 (ALPN `h2` over TLS, or
//! h2c with prior knowledge, told by its preface), one task per connection (no thread); with `httpServerTls`, HTTPS only (rustls; the handshake within [`BODY_TIMEOUT`]). Per request: `POST` (any path); `Authorization: Bearer <token>` or the bare token
//! picks the peer (constant time, the same uniform failure as BTP: 401 "invalid
//! authorization"); a body of at most [`MAX_BODY`] bytes (413 beyond) read within
//! [`BODY_TIMEOUT`]; then the handler's ILP answer is the 200 body. A body that is not a
//! Prepare gets 200 with an F01 Reject (from the forwarding path), as the JS plugin answers.
//! `GET` answers 200 "OK" without auth (a health check, as the JS plugin does).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections per shard (more are closed at accept); a
//! connection that brings no bytes for `idle` while no request of it is being answered is
//! closed (keep-alive clients idle that long, and clients that stall halfway through their
//! headers; hyper's own header timer needs a `Send` timer glommio does not have), checked
//! every [`IDLE_CHECK`] or `idle`, whichever is shorter.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use futures_rustls::rustls::ServerConfig;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::io::{HyperIo, LocalExec};
use super::{CONTENT_TYPE, MAX_BODY};
use crate::btp::auth::Credential;
use crate::btp::tls::Stream;
use crate::btp::within;

/// Connections served at once per shard.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection's idle time is checked, at most.
pub const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Answers one Prepare from a peer: `(peer id, body)` → the ILP answer.
pub type Handler = Rc<dyn Fn(String, Bytes) -> Pin<Box<dyn Future<Output = Bytes>>>>;
/// The credentials in force now (peers change at runtime).
pub type Credentials = Rc<dyn Fn() -> Rc<Vec<Credential>>>;

/// Serves `listener` until `stopped` resolves.
pub async fn serve(
    listener: glommio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    handler: Handler,
    creds: Credentials,
    idle: Duration,
    stopped: impl Future<Output = ()>,
) {
    let open = Rc::new(Cell::new(0usize));
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            (&mut stopped).await;
            None
        })
        .await;
        let stream = match next {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(_)) => {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.set(open.get() + 1);
        let (handler, creds, open) = (handler.clone(), creds.clone(), open.clone());
        let tls = tls.clone();
        glommio::spawn_local(async move {
            serve_connection(stream, tls, handler, creds, idle).await;
            open.set(open.get().saturating_sub(1));
        })
        .detach();
    }
}

/// The bytes an HTTP/2 client with prior knowledge (h2c) sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1.1 (anything else);
/// returns what was read, to be read again by hyper.
async fn sniff_h2(stream: &mut Stream) -> Option<(bool, Vec<u8>)> {
    use futures_lite::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = within(BODY_TIMEOUT, stream.read(&mut buf)).await?.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let m = got.len().min(H2_PREFACE.len());
        if got[..m] != H2_PREFACE[..m] {
            return Some((false, got));
        }
        if got.len() >= H2_PREFACE.len() {
            return Some((true, got));
        }
    }
}

/// One connection: TLS if configured, HTTP/2 if ALPN chose `h2` or the client opened with
/// the h2c preface, else HTTP/1.1 keep-alive; until the client is done or idle.
async fn serve_connection(
    stream: glommio::net::TcpStream,
    tls: Option<Arc<ServerConfig>>,
    handler: Handler,
    creds: Credentials,
    idle: Duration,
) {
    let mut stream = match tls {
        None => Stream::Plain(stream),
        Some(config) => {
            let accept = futures_rustls::TlsAcceptor::from(config).accept(stream);
            match within(BODY_TIMEOUT, accept).await {
                Some(Ok(s)) => Stream::Server(Box::new(s)),
                _ => return,
            }
        }
    };
    let alpn_h2 = match &stream {
        Stream::Server(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        _ => false,
    };
    let (h2, prefix) = if alpn_h2 {
        (true, Vec::new())
    } else {
        match sniff_h2(&mut stream).await {
            Some(found) => found,
            None => return,
        }
    };
    let seen = Rc::new(Cell::new(Instant::now()));
    let busy = Rc::new(Cell::new(0usize));
    let answering = busy.clone();
    let service = hyper::service::service_fn(move |req| {
        let (handler, creds, busy) = (handler.clone(), creds.clone(), answering.clone());
        async move {
            busy.set(busy.get() + 1);
            let r = handle(req, &handler, &creds).await;
            busy.set(busy.get().saturating_sub(1));
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let io = HyperIo::watched(stream, seen.clone(), prefix);
    let serve = async {
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(LocalExec)
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await;
        }
    };
    futures_lite::future::or(serve, until_idle(seen, busy, idle)).await;
}

/// Ends once the connection has brought no bytes for `idle` while nothing of it is being
/// answered.
async fn until_idle(seen: Rc<Cell<Instant>>, busy: Rc<Cell<usize>>, idle: Duration) {
    loop {
        crate::alarm::sleep(IDLE_CHECK.min(idle)).await;
        if busy.get() == 0 && seen.get().elapsed() >= idle {
            return;
        }
    }
}

fn reply(status: u16, content_type: &str, body: Bytes) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The peer whose token the request carries (`Bearer <token>`, or the bare token).
pub fn peer_of(authorization: Option<&str>, creds: &[Credential]) -> Option<String> {
    let given = authorization?.trim();
    let token = given
        .strip_prefix("Bearer ")
        .or_else(|| given.strip_prefix("bearer "))
        .unwrap_or(given);
    // Every credential is compared, so the time does not tell which one matched.
    let digest = Credential::digest(token.as_bytes());
    let mut found = None;
    for c in creds {
        if c.matches_digest(&digest) && found.is_none() {
            found = Some(c.peer_id.clone());
        }
    }
    found
}

async fn handle(
    req: hyper::Request<Incoming>,
    handler: &Handler,
    creds: &Credentials,
) -> hyper::Response<Full<Bytes>> {
    if req.method() == hyper::Method::GET {
        return reply(200, "text/plain", Bytes::from_static(b"OK"));
    }
    if req.method() != hyper::Method::POST {
        return reply(
            405,
            "text/plain",
            Bytes::from_static(b"POST an ILP Prepare"),
        );
    }
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(peer) = peer_of(auth, &creds()) else {
        return reply(
            401,
            "text/plain",
            Bytes::from_static(b"invalid authorization"),
        );
    };
    let body = match within(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        None => {
            return reply(
                408,
                "text/plain",
                Bytes::from_static(b"body not received in time"),
            )
        }
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(413, "text/plain", Bytes::from_static(b"body too large"))
        }
        Some(Err(_)) => return reply(400, "text/plain", Bytes::from_static(b"cannot read body")),
        Some(Ok(b)) => b.to_bytes(),
    };
    let answer = handler(peer, body).await;
    reply(200, CONTENT_TYPE, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pick_the_peer() {
        let creds = vec![
            Credential::new("a", "token-a"),
            Credential::new("b", "token-b"),
        ];
        assert_eq!(
            peer_of(Some("Bearer token-b"), &creds).as_deref(),
            Some("b")
        );
        assert_eq!(peer_of(Some("token-a"), &creds).as_deref(), Some("a"));
        assert_eq!(peer_of(Some("Bearer nope"), &creds), None);
        assert_eq!(peer_of(Some(""), &creds), None);
        assert_eq!(peer_of(None, &creds), None);
    }
}
