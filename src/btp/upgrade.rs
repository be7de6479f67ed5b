//! The WebSocket opening handshake (RFC 6455 §4), done by tungstenite, then the stream handed
//! to our [`Socket`] for the data phase.
//!
//! As a client, tungstenite may read past the end of the server's response (a server can send
//! its first frames right behind its 101), and keeps those bytes in a buffer it does not give
//! back. So a client's handshake runs over a [`Recorder`] that keeps every byte read through
//! it, and the bytes past the HTTP response, found with the parser tungstenite itself uses
//! (httparse, with its header limit), start the Socket's read buffer: nothing the peer sent
//! is lost or read twice. As a server there is nothing to recover: tungstenite refuses a
//! request with bytes behind it (a client must wait for the 101).
//!
//! Invariant: a client handshake that reads more than [`MAX_HANDSHAKE`] bytes fails (the
//! recording is bounded like everything else a peer can grow).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_tungstenite::tungstenite::handshake::server::Callback;
use futures_lite::{AsyncRead, AsyncWrite};

use super::socket::{Role, Socket};
use super::LinkError;

/// Most bytes a handshake may read (requests and responses are a few hundred bytes).
pub const MAX_HANDSHAKE: usize = 16 * 1024;

/// tungstenite's limit on header lines (`handshake::headers::MAX_HEADERS`): parsing with the
/// same limit finds the same end of the message.
const MAX_HEADERS: usize = 124;

/// Dials the WebSocket at `url` over `io` (already connected, TLS done if any).
pub async fn connect<S>(url: &str, io: S) -> Result<Socket<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ws, _) = async_tungstenite::client_async(url, Recorder::new(io))
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let Recorder { io, seen } = ws.into_inner();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Response::new(&mut headers).parse(&seen) {
        Ok(httparse::Status::Complete(n)) => Ok(Socket::new(io, Role::Client, &seen[n..])),
        // tungstenite accepted this response, so it parses: anything else is our bug.
        _ => Err(LinkError::Protocol(
            "handshake accepted but its end not found".into(),
        )),
    }
}

/// Accepts a WebSocket over `io`; `callback` sees the request and may refuse it.
pub async fn accept<S, C>(io: S, callback: C) -> Result<Socket<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Callback + Unpin,
{
    let ws = async_tungstenite::accept_hdr_async(io, callback)
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    // tungstenite refused any bytes behind the request (`JunkAfterRequest`).
    Ok(Socket::new(ws.into_inner(), Role::Server, &[]))
}

/// Passes reads and writes through, keeping a copy of every byte read (up to
/// [`MAX_HANDSHAKE`]).
struct Recorder<S> {
    io: S,
    seen: Vec<u8>,
}

impl<S> Recorder<S> {
    fn new(io: S) -> Self {
        Recorder {
            io,
            seen: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let room = MAX_HANDSHAKE.saturating_sub(me.seen.len());
        if room == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "WebSocket handshake too long",
            )));
        }
        let len = buf.len().min(room);
        let read = Pin::new(&mut me.io).poll_read(cx, &mut buf[..len]);
        if let Poll::Ready(Ok(n)) = read {
            me.seen.extend_from_slice(&buf[..n]);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btp::socket::Incoming;
    use crate::codec::websocket::{encode_frame, Opcode};
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    /// A server that sends its first frame in the same write as its 101: the frame reaches
    /// the client's Socket although tungstenite read it during the handshake.
    #[test]
    fn bytes_behind_the_handshake_reach_the_socket() {
        crate::testkit::run_local(|| async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = glommio::spawn_local(async move {
                let mut tcp = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.ends_with(b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap()
                    .trim()
                    .to_owned();
                let accept =
                    async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes();
                encode_frame(&mut out, Opcode::Binary, b"early", None);
                tcp.write_all(&out).await.unwrap();
                // Then the client's frame, masked.
                let mut frame = Vec::new();
                while frame.len() < 2 + 4 + 4 {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    frame.extend_from_slice(&buf[..n]);
                }
                frame
            });
            let tcp = glommio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut s = connect(&format!("ws://127.0.0.1:{port}/"), tcp)
                .await
                .unwrap();
            let first = crate::btp::within(std::time::Duration::from_secs(5), s.next()).await;
            assert!(
                matches!(&first, Some(Ok(Incoming::Binary(b))) if &b[..] == b"early"),
                "{first:?}"
            );
            s.send_binary(b"back");
            s.flush().await.unwrap();
            let frame = server.await;
            assert_eq!(frame[..2], [0x82, 0x84]);
        });
    }
}
