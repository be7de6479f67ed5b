//! Accepting peers on one shard: bind (SO_REUSEPORT, so every shard binds the same port),
//! accept, upgrade to WebSocket on `/` or `/accounts/<user>/ilp/btp`, then authenticate the
//! first frame. The handshake and the auth together are bounded by one timeout. A peer that
//! authenticates is then *admitted* (a check of the caller's, e.g. its connection limit)
//! before it is told it succeeded. On any failure a BTP ERROR (F00) is sent and the socket
//! closed.

use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use bytes::BytesMut;
use glommio::net::TcpStream;

use super::auth::{authenticate, user_from_path, AuthRefusal, Credential};
use super::socket::Incoming;
use super::tls::{Stream, Ws};
use super::{upgrade, within, LinkError};
use futures_rustls::rustls::ServerConfig;
use std::sync::Arc;

/// Admits every peer that authenticates (for callers without connection limits), offering
/// nothing about links.
pub fn admit_all(_peer: &str) -> Result<Option<usize>, String> {
    Ok(None)
}

/// Auth RESPONSE entry by which our server tells a dialling peer how many links it accepts
/// for the peer's account (decimal text). A peer that does not send it (the JS reference,
/// interledger-rs) keeps one socket per account, so a client opens only one link.
pub const LINKS_ENTRY: &[u8] = b"ilp-connector-links";
use crate::codec::btp::{self, BtpBody, ProtocolData};
use crate::codec::{BtpPacket, GeneralizedTime, Timestamp};

/// Upgrades (through TLS first when `tls` is given) and authenticates an accepted socket, all
/// within `auth_timeout`; returns the peer id and the WebSocket.
// The WebSocket callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
pub async fn accept_peer(
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    creds: &[Credential],
    auth_timeout: Duration,
    admit: impl FnOnce(&str) -> Result<Option<usize>, String>,
) -> Result<(String, Ws), LinkError> {
    within(auth_timeout, accept_within(stream, tls, creds, admit))
        .await
        .unwrap_or_else(|| {
            Err(LinkError::Auth(
                "handshake and auth not done in time".into(),
            ))
        })
}

#[allow(clippy::result_large_err)]
async fn accept_within(
    tcp: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    creds: &[Credential],
    admit: impl FnOnce(&str) -> Result<Option<usize>, String>,
) -> Result<(String, Ws), LinkError> {
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        Some(config) => Stream::Server(Box::new(
            futures_rustls::TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map_err(|e| LinkError::Connect(format!("TLS: {e}")))?,
        )),
        None => Stream::Plain(tcp),
    };
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        let p = req.uri().path();
        if p == "/" || user_from_path(p).is_some() {
            path = p.to_owned();
            Ok(resp)
        } else {
            let mut r = async_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                Some("not found".into()),
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            Err(r)
        }
    };
    let mut ws = upgrade::accept(stream, callback).await?;
    let Ok(Incoming::Binary(first)) = ws.next().await else {
        let _ = ws.close().await;
        return Err(LinkError::Auth("closed before the auth frame".into()));
    };
    // Err: (our error, what the peer is told)
    let (request_id, verdict) = match BtpPacket::decode(first) {
        Ok(p) => (
            p.request_id(),
            authenticate(&p, user_from_path(&path), creds)
                .map(str::to_owned)
                .map_err(|e| {
                    let ours = match e {
                        AuthRefusal::NotAuth => LinkError::Auth(e.to_string()),
                        _ => LinkError::BadCredentials(e.to_string()),
                    };
                    (ours, e.wire_message().to_owned())
                }),
        ),
        Err(e) => (
            0,
            Err((
                LinkError::Auth(format!("unparsable auth frame: {e}")),
                "unparsable auth frame".to_owned(),
            )),
        ),
    };
    let verdict = verdict.and_then(|peer| {
        admit(&peer)
            .map(|links| (peer, links))
            .map_err(|e| (LinkError::Auth(e.clone()), e))
    });
    let mut out = BytesMut::new();
    match verdict {
        Ok((peer, links)) => {
            let text = links.map(|n| n.to_string());
            let offer = text.as_ref().map(|t| ProtocolData {
                name: LINKS_ENTRY,
                content_type: btp::CONTENT_TEXT_UTF8,
                data: t.as_bytes(),
            });
            btp::encode(&mut out, request_id, BtpBody::Response, offer.as_slice());
            ws.send_binary(&out);
            ws.flush()
                .await
                .map_err(|e| LinkError::Connect(e.to_string()))?;
            Ok((peer, ws))
        }
        Err((ours, told)) => {
            btp::encode_error(
                &mut out,
                request_id,
                b"F00",
                GeneralizedTime::from(Timestamp::now()),
                told.as_bytes(),
            );
            ws.send_binary(&out);
            let _ = ws.close().await;
            Err(ours)
        }
    }
}
