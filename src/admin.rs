//! The admin HTTP port (tiny_http, on its own thread, off the shards): `GET /health` (200 when
//! ready, else 503, JSON) and `GET /metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::node::connector::{health, NodeShared};
use crate::node::metrics;

pub struct AdminServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    pub(crate) fn start(port: u16, shared: Arc<NodeShared>) -> Result<AdminServer, String> {
        let server = tiny_http::Server::http(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let port = server.server_addr().to_ip().map_or(port, |a| a.port());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let (status, ctype, body) = match (req.method(), req.url()) {
                        (tiny_http::Method::Get, "/health") => {
                            let h = health(&shared);
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
                            metrics::render(&shared.metrics, &shared.peers),
                        ),
                        _ => (404, "text/plain", "not found\n".to_owned()),
                    };
                    let header =
                        tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes());
                    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                    if let Ok(h) = header {
                        resp = resp.with_header(h);
                    }
                    let _ = req.respond(resp);
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
