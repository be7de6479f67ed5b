//! hyper's I/O traits over our link stream (plain TCP or TLS on glommio). Reads go through a
//! small stack buffer into hyper's cursor, so no `unsafe` is needed for its uninitialised
//! buffer (one copy of each read, on a path that also parses HTTP).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

use crate::btp::tls::Stream;

/// A [`Stream`] as hyper I/O; with `seen`, every read that brings bytes notes the time (the
/// server's idle watchdog reads it); `prefix` is read first (bytes the server already read to
/// tell HTTP/2 from HTTP/1.1).
pub struct HyperIo {
    stream: Stream,
    seen: Option<Rc<Cell<Instant>>>,
    prefix: Vec<u8>,
}

impl HyperIo {
    pub fn new(stream: Stream) -> HyperIo {
        HyperIo {
            stream,
            seen: None,
            prefix: Vec::new(),
        }
    }

    pub fn watched(stream: Stream, seen: Rc<Cell<Instant>>, prefix: Vec<u8>) -> HyperIo {
        HyperIo {
            stream,
            seen: Some(seen),
            prefix,
        }
    }
}

/// Spawns hyper's HTTP/2 tasks on the shard's executor (they need not be `Send`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(async move {
            fut.await;
        })
        .detach();
    }
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let mut tmp = [0u8; 8192];
        let want = buf.remaining().min(tmp.len());
        match Pin::new(&mut self.stream).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                if let (Some(seen), true) = (&self.seen, n > 0) {
                    seen.set(Instant::now());
                }
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
