//! Real BTP endpoints for tests, the demo and the load generator: a [`Fulfiller`] (a BTP
//! server, or a dialling peer, that answers every Prepare), [`SenderLink`] (a dialled link
//! that sends Prepares) and [`ThreeNodes`] (the A → B → C network of the demo and tests).
//!
//! Test protocol: the fulfillment for a Prepare is `sha256(data)`, so a sender uses
//! [`condition_for`]`(data)` = `sha256(sha256(data))`. Hooks in the destination test error
//! paths ([`hooks`]): a segment `reject-XXX` is answered with a Reject of code XXX, and
//! `delay-MS` delays the answer by MS milliseconds (at most a minute). `ilp-connector receive`
//! answers the same way. [`admin_text`] and [`metric`] read a node's admin port.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::btp::auth::Credential;
use crate::btp::client::{dial, parse_url};
use crate::btp::deadlines::Deadlines;
use crate::btp::link::{self, Link, LinkConfig};
use crate::btp::server::{accept_peer, admit_all};
use crate::btp::{IncomingHandler, LinkError};
use crate::codec::btp::{self, BtpType};
use crate::codec::{
    ErrorCode, FulfillFields, Packet, Prepare, PrepareFields, RejectFields, Timestamp,
};
use crate::config::Config;
use crate::node::connector::ConnectorNode;

/// The body of `GET path` on a node's admin port (bounded: 5 s). Panics if the node has no
/// admin port or the request fails: for tests.
pub fn admin_text(node: &ConnectorNode, path: &str) -> String {
    let port = node.admin_port().expect("the node has an admin port");
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = ureq::get(&url)
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .into_string()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A counter or gauge from a node's `/metrics` by its full series name (labels included),
/// 0 while it is not there.
pub fn metric(node: &ConnectorNode, series: &str) -> u64 {
    admin_text(node, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `sha256(sha256(data))`: the condition a [`Fulfiller`] can fulfil.
pub fn condition_for(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}

/// How a [`Fulfiller`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fulfill,
    /// Answers with a fulfillment that does not match.
    WrongFulfillment,
    /// Never answers.
    Silent,
    /// Rejects with F99 from `test.fulfiller`.
    Reject,
    /// Fulfils, but stalls every [`STALL_PERIOD`] for [`STALL_LENGTH`]: answers due in a
    /// stall go out when it ends (a next hop that hangs now and then).
    Stalls,
}

/// See [`Mode::Stalls`].
pub const STALL_PERIOD: Duration = Duration::from_millis(3000);
/// See [`Mode::Stalls`].
pub const STALL_LENGTH: Duration = Duration::from_millis(1500);

/// A BTP server on 127.0.0.1 that answers Prepares; runs its own executor thread.
pub struct Fulfiller {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fulfiller {
    /// Accepts peers that authenticate as `user` with `token`.
    pub fn start(user: &str, token: &str, mode: Mode) -> Fulfiller {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let creds = vec![Credential::new(user, token)];
        let stop2 = stop.clone();
        let thread = executor_thread(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let _ = tx.send(listener.local_addr().map(|a| a.port()).unwrap_or(0));
            let deadlines = Deadlines::new();
            let creds = Rc::new(creds);
            loop {
                let next =
                    futures_lite::future::or(async { Some(listener.accept().await) }, async {
                        while !stop2.load(Ordering::Relaxed) {
                            glommio::timer::sleep(Duration::from_millis(20)).await;
                        }
                        None
                    })
                    .await;
                let Some(Ok(stream)) = next else { break };
                let (creds, deadlines) = (creds.clone(), deadlines.clone());
                glommio::spawn_local(async move {
                    let Ok((peer, ws)) =
                        accept_peer(stream, None, &creds, Duration::from_secs(5), admit_all).await
                    else {
                        return;
                    };
                    let link = Link::new(&peer, LinkConfig::default(), deadlines);
                    link::run(ws, link, answer_handler(mode)).await;
                })
                .detach();
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(0);
        Fulfiller {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// A fulfiller that dials `url` instead (a peer the connector only sees inbound), as
    /// `user` with `token`. `port` is 0. Returns once the link is authenticated.
    pub fn dial(url: &str, user: &str, token: &str, mode: Mode) -> Result<Fulfiller, LinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (url, user, token) = (url.to_owned(), user.to_owned(), token.to_owned());
        let stop2 = stop.clone();
        let thread = executor_thread(move || async move {
            let target = match parse_url(&url) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(Err(LinkError::Connect(e)));
                    return;
                }
            };
            let ws = match dial(&target, &user, &token, Duration::from_secs(5)).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            let link = Link::new("connector", LinkConfig::default(), Deadlines::new());
            close_when_stopped(&link, stop2);
            link::run(ws, link, answer_handler(mode)).await;
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Fulfiller {
                port: 0,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LinkError::Connect("dial did not finish in 10 s".into())),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Fulfiller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the destination's hooks ask for (see the module doc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    pub reject: Option<ErrorCode>,
    pub delay: Option<Duration>,
}

/// The hooks in `destination` (the last of each kind wins; malformed ones are ignored).
pub fn hooks(destination: &[u8]) -> Hooks {
    let mut h = Hooks::default();
    for seg in destination.split(|b| *b == b'.') {
        if let Some(code) = seg.strip_prefix(b"reject-") {
            if let Ok(c) = <[u8; 3]>::try_from(code) {
                h.reject = Some(ErrorCode(c));
            }
        } else if let Some(ms) = seg.strip_prefix(b"delay-") {
            if let Some(ms) = std::str::from_utf8(ms)
                .ok()
                .and_then(|m| m.parse::<u64>().ok())
            {
                h.delay = Some(Duration::from_millis(ms.min(60_000)));
            }
        }
    }
    h
}

/// The answer of a receiver that knows the test protocol, given the destination's `hooks`:
/// the hooks' Reject, else the Fulfill with `sha256(data)`, if that fulfils the Prepare's
/// condition (or `check_condition` is off), else F05. `triggered_by` names the receiver in its
/// Rejects. Returns the ILP packet and whether it is a Fulfill.
pub fn receiver_answer(
    prepare: &Prepare,
    hooks: &Hooks,
    triggered_by: &[u8],
    check_condition: bool,
) -> (BytesMut, bool) {
    let mut ilp = BytesMut::new();
    let reject = |code: ErrorCode, message: &[u8], ilp: &mut BytesMut| {
        RejectFields {
            code,
            triggered_by,
            message,
            data: b"",
        }
        .encode(ilp)
    };
    if let Some(code) = hooks.reject {
        reject(code, b"rejected as the destination asked", &mut ilp);
        return (ilp, false);
    }
    let f: [u8; 32] = Sha256::digest(prepare.data()).into();
    if check_condition && Sha256::digest(f).as_slice() != prepare.execution_condition() {
        reject(
            ErrorCode::F05_WRONG_CONDITION,
            b"cannot fulfil: the condition is not sha256(sha256(data))",
            &mut ilp,
        );
        return (ilp, false);
    }
    FulfillFields {
        fulfillment: &f,
        data: b"",
    }
    .encode(&mut ilp);
    (ilp, true)
}

/// Sends `ilp` as the RESPONSE to request `request_id` on `link`, after `wait` (at once if
/// zero).
pub fn respond_after(link: Link, request_id: u32, ilp: &[u8], wait: Duration) {
    let mut frame = BytesMut::new();
    btp::encode_ilp(&mut frame, BtpType::Response, request_id, ilp);
    let frame = frame.freeze();
    if wait.is_zero() {
        let _ = link.send(frame);
    } else {
        glommio::spawn_local(async move {
            glommio::timer::sleep(wait).await;
            let _ = link.send(frame);
        })
        .detach();
    }
}

/// Closes `link` once `stop` is set (checked every 20 ms; the task ends with the link).
pub fn close_when_stopped(link: &Link, stop: Arc<AtomicBool>) {
    let closer = link.clone();
    glommio::spawn_local(async move {
        while !stop.load(Ordering::Relaxed) && closer.is_open() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        closer.close();
    })
    .detach();
}

fn answer_handler(mode: Mode) -> IncomingHandler {
    Rc::new(move |link: &Link, packet: crate::codec::BtpPacket| {
        if mode == Mode::Silent {
            return;
        }
        let Some(Ok(prepare)) = packet.ilp().map(Prepare::decode) else {
            return;
        };
        let hooks = hooks(prepare.destination());
        let ilp = match mode {
            Mode::Fulfill | Mode::Stalls => {
                receiver_answer(&prepare, &hooks, b"test.fulfiller", false).0
            }
            Mode::WrongFulfillment => {
                let mut f: [u8; 32] = Sha256::digest(prepare.data()).into();
                f[0] ^= 1;
                let mut ilp = BytesMut::new();
                FulfillFields {
                    fulfillment: &f,
                    data: b"",
                }
                .encode(&mut ilp);
                ilp
            }
            _ => {
                let mut ilp = BytesMut::new();
                RejectFields {
                    code: ErrorCode::F99_APPLICATION_ERROR,
                    triggered_by: b"test.fulfiller",
                    message: b"rejected by the test fulfiller",
                    data: b"",
                }
                .encode(&mut ilp);
                ilp
            }
        };
        let mut wait = hooks.delay.unwrap_or_default();
        let now_ms = Timestamp::now().unix_millis() as u128;
        let phase = (now_ms % STALL_PERIOD.as_millis()) as u64;
        let stall_ms = STALL_LENGTH.as_millis() as u64;
        if mode == Mode::Stalls && phase < stall_ms {
            wait = wait.max(Duration::from_millis(stall_ms - phase));
        }
        respond_after(link.clone(), packet.request_id(), &ilp, wait);
    })
}

/// A dialled link for sending Prepares (use inside a glommio executor).
pub struct SenderLink {
    pub link: Link,
}

impl SenderLink {
    pub async fn connect(url: &str, user: &str, token: &str) -> Result<SenderLink, LinkError> {
        let target = parse_url(url).map_err(LinkError::Connect)?;
        let ws = dial(&target, user, token, Duration::from_secs(5)).await?;
        let deadlines = Deadlines::new();
        // A client may queue as many requests as it may have pending.
        let cfg = LinkConfig {
            queue_capacity: LinkConfig::default().max_pending,
            max_queued_bytes: 1 << 30,
            ..LinkConfig::default()
        };
        let link = Link::new("connector", cfg, deadlines.clone());
        let l2 = link.clone();
        glommio::spawn_local(async move {
            let ignore: IncomingHandler = Rc::new(|_, _| {});
            link::run(ws, l2, ignore).await;
        })
        .detach();
        let l3 = link.clone();
        glommio::spawn_local(async move { deadlines.run(move || !l3.is_open()).await }).detach();
        Ok(SenderLink { link })
    }

    /// Sends a Prepare fulfillable by a [`Fulfiller`] and returns the ILP answer.
    pub async fn send(
        &self,
        destination: &str,
        amount: u64,
        expires_in_ms: i64,
        data: &[u8],
    ) -> Result<Packet, LinkError> {
        let cond = condition_for(data);
        let mut ilp = BytesMut::new();
        PrepareFields {
            amount,
            expires_at: Timestamp::now().add_millis(expires_in_ms),
            execution_condition: &cond,
            destination: destination.as_bytes(),
            data,
        }
        .encode(&mut ilp);
        self.send_raw(&ilp).await
    }

    /// Sends any ILP bytes in a MESSAGE and decodes the answer.
    pub async fn send_raw(&self, ilp: &[u8]) -> Result<Packet, LinkError> {
        let mut frame = BytesMut::new();
        btp::encode_ilp(&mut frame, BtpType::Message, 0, ilp);
        let resp = self.link.request(frame, None).await?;
        let bytes: Bytes = resp
            .ilp()
            .ok_or_else(|| LinkError::Protocol("answer without ilp entry".into()))?;
        Packet::decode(bytes).map_err(|e| LinkError::Protocol(e.to_string()))
    }
}

/// An answer as tests compare it: `fulfilled`, or the Reject's code and `triggeredBy`
/// (`F99 test.fulfiller`).
pub fn outcome(answer: &Packet) -> String {
    match answer {
        Packet::Fulfill(_) => "fulfilled".to_owned(),
        Packet::Reject(r) => format!(
            "{} {}",
            r.code().as_str(),
            String::from_utf8_lossy(r.triggered_by())
        ),
        Packet::Prepare(_) => panic!("a Prepare as the answer"),
    }
}

/// A thread running `f` on its own glommio executor until the future ends.
fn executor_thread<F>(f: impl FnOnce() -> F + Send + 'static) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + 'static,
{
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(f());
    })
}

/// Runs `f` on a fresh single-thread glommio executor and returns its result.
pub fn run_local<T: Send + 'static, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// The demo and test network: sender → A → B → C → receiver, each connector on a free port.
/// The sender dials A as child `sender` (token `secret-sa`); A dials B, B dials C; C dials
/// the [`Fulfiller`] (child `receiver`, address `test.c.receiver`).
pub struct ThreeNodes {
    pub a: ConnectorNode,
    pub b: ConnectorNode,
    pub c: ConnectorNode,
    pub fulfiller: Fulfiller,
}

impl ThreeNodes {
    /// Starts the network and waits (bounded) until every node is ready. `c_send_timeout_ms`
    /// is C's send deadline to the fulfiller.
    pub fn start(mode: Mode, c_send_timeout_ms: u64) -> Result<ThreeNodes, String> {
        let fulfiller = Fulfiller::start("connector-c", "secret-cr", mode);
        let c = start_node("C", &Self::c_yaml(&fulfiller.url(), c_send_timeout_ms))?;
        let b = start_node("B", &Self::b_yaml(c.btp_port(), 0))?;
        let a = start_node("A", &Self::a_yaml(b.btp_port()))?;
        Ok(ThreeNodes { a, b, c, fulfiller })
    }

    /// A's BTP URL for the sender.
    pub fn sender_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.a.btp_port())
    }

    /// Dials A at `url` (from [`ThreeNodes::sender_url`]) as its child `sender`; call inside
    /// a glommio executor.
    pub async fn connect_sender(url: &str) -> Result<SenderLink, LinkError> {
        SenderLink::connect(url, "sender", "secret-sa").await
    }

    /// Restarts B on its old port (after `self.b.stop()`).
    pub fn restart_b(&mut self, b_port: u16) -> Result<(), String> {
        self.b = start_node("B", &Self::b_yaml(self.c.btp_port(), b_port))?;
        Ok(())
    }

    pub fn c_yaml(fulfiller_url: &str, send_timeout_ms: u64) -> String {
        format!(
            "nodeId: connector-c\nilpAddress: test.c\nbtpServerPort: 0\nsendTimeoutMs: {send_timeout_ms}\npeers:\n  - {{id: connector-b, relation: peer, authToken: secret-bc}}\n  - {{id: receiver, relation: child, url: \"{fulfiller_url}\", authToken: secret-cr}}\n"
        )
    }

    pub fn b_yaml(c_port: u16, b_port: u16) -> String {
        format!(
            "nodeId: connector-b\nilpAddress: test.b\nbtpServerPort: {b_port}\nreconnectBackoffMs: [100, 200]\npeers:\n  - {{id: connector-a, relation: peer, authToken: secret-ab}}\n  - {{id: connector-c, relation: peer, url: \"ws://127.0.0.1:{c_port}\", authToken: secret-bc}}\nroutes:\n  - {{prefix: test.c, nextHop: connector-c}}\n"
        )
    }

    pub fn a_yaml(b_port: u16) -> String {
        format!(
            "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\nhealthCheckPort: 0\nreconnectBackoffMs: [100, 200]\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: connector-b, relation: peer, url: \"ws://127.0.0.1:{b_port}\", authToken: secret-ab}}\nroutes:\n  - {{prefix: test.c, nextHop: connector-b}}\n  - {{prefix: test.b, nextHop: connector-b}}\n"
        )
    }
}

fn start_node(name: &str, yaml: &str) -> Result<ConnectorNode, String> {
    let config = Config::from_yaml(yaml).map_err(|e| format!("config of {name}: {e}"))?;
    let node = crate::admin::start_node(config).map_err(|e| format!("cannot start {name}: {e}"))?;
    if !node.wait_ready(Duration::from_secs(10)) {
        return Err(format!("connector {name} did not become ready"));
    }
    Ok(node)
}
