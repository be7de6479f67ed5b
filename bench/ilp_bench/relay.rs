//! The relay baseline: a byte-level WebSocket relay with the same framing and no ILP work.
//! Each accepted WebSocket gets a WebSocket to the target; binary messages are copied both
//! ways unchanged (batched: several fed, one flush). This is the floor for one hop.
//!
//! Two of them, with the same WebSocket code (async-tungstenite) and the same batching:
//! [`run`] on glommio (io_uring), as the connector runs, and [`run_epoll`] on a current-thread
//! tokio runtime (epoll): the baseline a user would otherwise pick.

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt, StreamExt};

/// `host:port` of a `ws://` target.
fn target_addr(target: &str) -> Option<String> {
    let url = url::Url::parse(target).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(80)
    ))
}

/// Relays every connection on `listener` to `target` (`ws://host:port`) until the process ends.
pub async fn run(listener: glommio::net::TcpListener, target: String) {
    while let Ok(stream) = listener.accept().await {
        let target = target.clone();
        glommio::spawn_local(async move {
            let Ok(inbound) = async_tungstenite::accept_async(stream).await else {
                return;
            };
            let Some(addr) = target_addr(&target) else {
                return;
            };
            let Ok(Ok(tcp)) = glommio::timer::timeout(Duration::from_secs(5), async {
                Ok(glommio::net::TcpStream::connect(addr.as_str()).await)
            })
            .await
            else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let Ok((outbound, _)) = async_tungstenite::client_async(target.as_str(), tcp).await
            else {
                return;
            };
            pump(inbound, outbound).await;
        })
        .detach();
    }
}

/// The same relay on a current-thread tokio runtime (epoll); prints `relay port N` once
/// listening and runs until the process ends.
pub fn run_epoll(target: String) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        println!("relay port {port}");
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(inbound) = async_tungstenite::tokio::accept_async(stream).await else {
                    return;
                };
                let Some(addr) = target_addr(&target) else {
                    return;
                };
                let Ok(Ok(tcp)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(addr.as_str()),
                )
                .await
                else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let Ok((outbound, _)) =
                    async_tungstenite::tokio::client_async(target.as_str(), tcp).await
                else {
                    return;
                };
                pump(inbound, outbound).await;
            });
        }
        Ok(())
    })
}

enum Side<T> {
    In(T),
    Out(T),
}

async fn pump<S>(
    mut a: async_tungstenite::WebSocketStream<S>,
    mut b: async_tungstenite::WebSocketStream<S>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    loop {
        let next = futures_lite::future::or(async { Side::In(a.next().await) }, async {
            Side::Out(b.next().await)
        })
        .await;
        let ok = match next {
            Side::In(Some(Ok(m))) => forward(m, &mut a, &mut b).await,
            Side::Out(Some(Ok(m))) => forward(m, &mut b, &mut a).await,
            _ => false,
        };
        if !ok {
            return;
        }
    }
}

/// Feeds `first` and whatever else `from` has ready (up to 64 messages), then flushes once,
/// as the connector's links do.
async fn forward<S>(
    first: Message,
    from: &mut async_tungstenite::WebSocketStream<S>,
    to: &mut async_tungstenite::WebSocketStream<S>,
) -> bool
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(msg) = next.take() {
        let fed_ok = match msg {
            Message::Binary(data) => to.feed(Message::Binary(data)).await.is_ok(),
            Message::Close(_) => false,
            _ => true,
        };
        if !fed_ok {
            return false;
        }
        fed += 1;
        if fed < 64 {
            next = match futures_lite::future::poll_once(from.next()).await {
                Some(Some(Ok(m))) => Some(m),
                Some(Some(Err(_))) | Some(None) => return false,
                None => None,
            };
        }
    }
    to.flush().await.is_ok()
}
