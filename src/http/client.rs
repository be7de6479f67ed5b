//! POSTing Prepares to one HTTP peer from one shard: a pool of at most `max_connections`
//! keep-alive HTTP/1.1 connections (no pipelining: one request per connection at a time), or
//! with `http2` one HTTP/2 connection carrying every request at once (h2c with prior
//! knowledge on `http://`, ALPN `h2` on `https://`).
//! Each send is bounded by the packet's deadline; a request still running then is dropped
//! with its connection (never re-sent: after the bytes left, a retry could pay twice).
//!
//! Outcomes: 200 with an ILP Fulfill or Reject → the body; a connection that cannot be made →
//! `LinkError::Connect` (T01); one lost mid-request → `LinkError::LinkLost` (T01); any other
//! status or a 200 without an ILP reply → `LinkError::Protocol` (T00); all connections busy
//! → `LinkError::QueueFull` (T02); the deadline → `LinkError::Timeout`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;

use super::io::{HyperIo, LocalExec};
use super::{CONTENT_TYPE, MAX_BODY};
use crate::btp::{within, LinkError};

/// Where and how to POST.
#[derive(Debug, Clone)]
pub struct Target {
    pub host_port: String,
    pub host: String,
    pub tls: bool,
    /// Path and query, e.g. `/accounts/us/ilp`.
    pub path: String,
    /// `Host` header value.
    pub authority: String,
}

/// Parses `http://host[:port][/path]` or `https://…`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let shown = crate::config::redact_url(url);
    let u = url::Url::parse(url).map_err(|e| format!("invalid url {shown:?}: {e}"))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported url scheme {other:?} (http, https)")),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "url {shown:?}: put the token in outgoingAuthToken, not in the url"
        ));
    }
    let (host, host_port) = crate::btp::client::host_and_port(&u, tls, &shown)?;
    let mut path = u.path().to_owned();
    if let Some(q) = u.query() {
        path = format!("{path}?{q}");
    }
    Ok(Target {
        authority: u.port().map_or(host.clone(), |_| host_port.clone()),
        host_port,
        host,
        tls,
        path,
    })
}

pub struct HttpPeerClient {
    target: Target,
    authorization: hyper::header::HeaderValue,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    open: Rc<Cell<usize>>,
    max_connections: usize,
    connect_timeout: Duration,
    ca_file: Option<String>,
    /// Counts every connection opened (`ilp_http_connections_opened_total`).
    opened: Arc<AtomicU64>,
    /// HTTP/2: one connection, requests multiplexed on it (h2c with prior knowledge on
    /// `http://`, ALPN `h2` on `https://`).
    http2: bool,
    h2: RefCell<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    /// One HTTP/2 connect at a time (the requests that wait for it then share it).
    h2_connecting: glommio::sync::Semaphore,
}

impl HttpPeerClient {
    pub fn new(
        target: Target,
        token: &str,
        max_connections: usize,
        connect_timeout: Duration,
        ca_file: Option<String>,
        opened: Arc<AtomicU64>,
        http2: bool,
    ) -> Result<HttpPeerClient, String> {
        let authorization = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        Ok(HttpPeerClient {
            target,
            authorization,
            idle: RefCell::default(),
            open: Rc::default(),
            max_connections,
            connect_timeout,
            ca_file,
            opened,
            http2,
            h2: RefCell::default(),
            h2_connecting: glommio::sync::Semaphore::new(1),
        })
    }

    /// Connections open now (idle or busy).
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, LinkError> {
        // An idle connection that is ready takes the request; one still finishing its last
        // exchange stays in the pool; a closed one is dropped.
        let idle: Vec<_> = self.idle.borrow_mut().drain(..).collect();
        let mut found = None;
        for mut s in idle {
            if s.is_closed() {
                continue;
            }
            if found.is_none() {
                match futures_lite::future::poll_once(s.ready()).await {
                    Some(Ok(())) => {
                        found = Some(s);
                        continue;
                    }
                    Some(Err(_)) => continue,
                    None => {}
                }
            }
            self.idle.borrow_mut().push(s);
        }
        if let Some(s) = found {
            return Ok(s);
        }
        if self.open.get() >= self.max_connections {
            return Err(LinkError::QueueFull);
        }
        let stream = self.connect(&[]).await?;
        let (sender, conn) = within(
            self.connect_timeout,
            hyper::client::conn::http1::handshake(HyperIo::new(stream)),
        )
        .await
        .ok_or_else(|| LinkError::Connect("HTTP handshake timed out".into()))?
        .map_err(|e| LinkError::Connect(e.to_string()))?;
        self.open.set(self.open.get() + 1);
        self.opened.fetch_add(1, Ordering::Relaxed);
        let open = self.open.clone();
        glommio::spawn_local(async move {
            let _ = conn.await;
            open.set(open.get().saturating_sub(1));
        })
        .detach();
        Ok(sender)
    }

    async fn connect(&self, alpn: &[&[u8]]) -> Result<crate::btp::tls::Stream, LinkError> {
        let t = &self.target;
        crate::btp::client::connect(
            &t.host_port,
            &t.host,
            t.tls,
            self.connect_timeout,
            self.ca_file.as_deref(),
            alpn,
        )
        .await
    }

    /// The HTTP/2 connection (made if there is none or it closed).
    async fn h2_sender(
        &self,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, LinkError> {
        if let Some(s) = self.h2.borrow().as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let _permit = self
            .h2_connecting
            .acquire_permit(1)
            .await
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        // Another request may have connected while this one waited.
        if let Some(s) = self.h2.borrow().as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = self.connect(&[b"h2"]).await?;
        let (sender, conn) = within(
            self.connect_timeout,
            hyper::client::conn::http2::handshake(LocalExec, HyperIo::new(stream)),
        )
        .await
        .ok_or_else(|| LinkError::Connect("HTTP/2 handshake timed out".into()))?
        .map_err(|e| LinkError::Connect(e.to_string()))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        glommio::spawn_local(async move {
            let _ = conn.await;
        })
        .detach();
        *self.h2.borrow_mut() = Some(sender.clone());
        Ok(sender)
    }

    /// POSTs `prepare`; the ILP answer's bytes, or why there is none (see the module doc).
    pub async fn send(&self, prepare: Bytes, deadline: Instant) -> Result<Bytes, LinkError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            let mut req = hyper::Request::post(self.target.path.as_str());
            if self.http2 {
                // HTTP/2 names the server in the :authority pseudo-header, from the URI.
                req = hyper::Request::post(format!(
                    "{}://{}{}",
                    if self.target.tls { "https" } else { "http" },
                    self.target.authority,
                    self.target.path
                ));
            } else {
                req = req.header(hyper::header::HOST, self.target.authority.as_str());
            }
            let req = req
                .header(hyper::header::AUTHORIZATION, self.authorization.clone())
                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(prepare))
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            let (resp, h1) = if self.http2 {
                let mut sender = self.h2_sender().await?;
                let resp = sender.send_request(req).await.map_err(|_| {
                    self.h2.borrow_mut().take();
                    LinkError::LinkLost
                })?;
                (resp, None)
            } else {
                let mut sender = self.connection().await?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|_| LinkError::LinkLost)?;
                (resp, Some(sender))
            };
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| LinkError::Protocol(format!("HTTP body: {e}")))?
                .to_bytes();
            // The connection served its request: back to the pool.
            if let Some(sender) = h1 {
                self.idle.borrow_mut().push(sender);
            }
            if status != hyper::StatusCode::OK {
                return Err(LinkError::Protocol(format!(
                    "HTTP {} from the next hop: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )));
            }
            if !matches!(body.first(), Some(13 | 14)) {
                return Err(LinkError::Protocol(
                    "HTTP 200 without an ILP Fulfill or Reject".into(),
                ));
            }
            Ok(body)
        };
        match within(left, attempt).await {
            Some(r) => r,
            None => Err(LinkError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/accounts/us/ilp").unwrap();
        assert_eq!(
            (t.host_port.as_str(), t.path.as_str(), t.tls),
            ("127.0.0.1:8080", "/accounts/us/ilp", false)
        );
        let t = parse_url("https://rafiki.example/").unwrap();
        assert_eq!(
            (t.host_port.as_str(), t.authority.as_str(), t.tls),
            ("rafiki.example:443", "rafiki.example", true)
        );
        assert!(parse_url("ws://x").is_err());
        let e = parse_url("http://u:secret@x/").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
