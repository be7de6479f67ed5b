//! The admin HTTP port, bound to `adminHost` (default 127.0.0.1): hyper (HTTP/1.1,
//! keep-alive) on a current-thread tokio runtime on its own thread (`admin-http`), off the
//! shards. The endpoints are in [`routes`].
//!
//! Bounds (a local client may be hostile too): at most [`MAX_CONNECTIONS`] connections at once
//! (more are closed at accept), request headers within [`HEADER_TIMEOUT`], a body of at most
//! [`MAX_BODY`] within [`BODY_TIMEOUT`], a connection lives at most [`CONNECTION_LIFETIME`],
//! and at most [`MAX_WRITERS`] writes run at once (on the runtime's blocking pool, since a
//! write may wait for the shards or the disk; 503 beyond). Reads are answered on the runtime
//! thread and never wait, so `/health` answers whatever writes or idle clients do.

pub mod routes;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use self::routes::{Head, Reply};
use crate::btp::auth::Credential;
use crate::node::connector::{ConnectorNode, NodeShared, Sidecar, StartError};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Time to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (a peer definition is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Time to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept (keep-alive clients reconnect).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Write requests handled at once.
pub const MAX_WRITERS: usize = 4;

/// Starts a node with its admin port (`healthCheckPort`, if set).
pub fn start_node(config: crate::config::Config) -> Result<ConnectorNode, StartError> {
    ConnectorNode::start_with(config, |port, shared| {
        AdminServer::start(port, shared).map(|a| Box::new(a) as Box<dyn Sidecar>)
    })
}

/// What every request handler shares.
struct Ctx {
    shared: Arc<NodeShared>,
    /// Compared like BTP tokens: constant time over digests.
    admin_token: Option<Credential>,
    loopback: bool,
    writers: AtomicUsize,
}

pub struct AdminServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sidecar for AdminServer {
    fn port(&self) -> u16 {
        self.port
    }

    fn stop(mut self: Box<Self>) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AdminServer {
    pub fn start(port: u16, shared: Arc<NodeShared>) -> Result<AdminServer, String> {
        let host = shared.config.admin_host.as_deref().unwrap_or("127.0.0.1");
        let listener = std::net::TcpListener::bind((host, port)).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(MAX_WRITERS)
            .thread_name("admin-write")
            .build()
            .map_err(|e| e.to_string())?;
        let ctx = Arc::new(Ctx {
            admin_token: shared
                .config
                .admin_token
                .as_deref()
                .map(|t| Credential::new("admin", t)),
            loopback: addr.ip().is_loopback(),
            writers: AtomicUsize::new(0),
            shared,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || runtime.block_on(serve(listener, ctx, stop_rx)))
            .map_err(|e| e.to_string())?;
        Ok(AdminServer {
            port: addr.port(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// Accepts until `stop` fires; each connection is its own task.
async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<Ctx>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(nodeId = %ctx.shared.config.node_id, component = "admin", event = "admin_listen_failed", error = %e);
            return;
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = (&mut stop).await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok((stream, _))) => stream,
            Some(Err(_)) => {
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let (ctx, open) = (ctx.clone(), open.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn respond((status, ctype, body): Reply) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    ctx: Arc<Ctx>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let head = Head {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        authorization: header(hyper::header::AUTHORIZATION),
        content_type: header(hyper::header::CONTENT_TYPE),
    };
    if let Err(refused) = routes::authorize(ctx.admin_token.as_ref(), &head, ctx.loopback) {
        return Ok(respond(refused));
    }
    if routes::is_read(&head.method) {
        return Ok(respond(routes::read(&ctx.shared, &head)));
    }
    if ctx.writers.fetch_add(1, Ordering::SeqCst) >= MAX_WRITERS {
        ctx.writers.fetch_sub(1, Ordering::SeqCst);
        return Ok(respond(routes::json_error(
            503,
            "too many admin writes in progress",
        )));
    }
    let reply = write(&ctx, head, req.into_body()).await;
    ctx.writers.fetch_sub(1, Ordering::SeqCst);
    Ok(respond(reply))
}

/// Reads the body (bounded in size and time), then runs the write on the blocking pool.
async fn write(ctx: &Arc<Ctx>, head: Head, body: Incoming) -> Reply {
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Err(_) => return routes::json_error(408, "request body not received in time"),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return routes::json_error(413, format!("request body over {MAX_BODY} bytes"))
            }
            Ok(Err(e)) => return routes::json_error(400, format!("cannot read body: {e}")),
            Ok(Ok(b)) => b.to_bytes(),
        };
    let shared = ctx.shared.clone();
    tokio::task::spawn_blocking(move || routes::write(&shared, &head, &body))
        .await
        .unwrap_or_else(|e| routes::json_error(500, format!("admin write failed: {e}")))
}
