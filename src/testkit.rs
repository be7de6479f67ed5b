//! Real BTP endpoints for tests, the demo and the load generator: a [`Fulfiller`] (a BTP
//! server that answers every Prepare) and [`SenderLink`] (a dialled link that sends Prepares).
//!
//! Test protocol: the fulfillment for a Prepare is `sha256(data)`, so a sender uses
//! [`condition_for`]`(data)` = `sha256(sha256(data))`.

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
use crate::btp::server::accept_peer;
use crate::btp::{IncomingHandler, LinkError};
use crate::codec::btp::{self, BtpType};
use crate::codec::{
    ErrorCode, FulfillFields, Packet, Prepare, PrepareFields, RejectFields, Timestamp,
};

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
}

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
        let thread = std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .expect("executor");
            ex.run(async move {
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
                            accept_peer(stream, &creds, Duration::from_secs(5)).await
                        else {
                            return;
                        };
                        let (link, rx) = Link::new(&peer, LinkConfig::default(), deadlines);
                        link::run(ws, link, rx, answer_handler(mode)).await;
                    })
                    .detach();
                }
            });
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
        let thread = std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .expect("executor");
            ex.run(async move {
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
                let (link, rx) = Link::new("connector", LinkConfig::default(), Deadlines::new());
                let closer = link.clone();
                glommio::spawn_local(async move {
                    while !stop2.load(Ordering::Relaxed) && closer.is_open() {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                    closer.close();
                })
                .detach();
                link::run(ws, link, rx, answer_handler(mode)).await;
            });
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

fn answer_handler(mode: Mode) -> IncomingHandler {
    Rc::new(move |link: Link, packet: crate::codec::BtpPacket| {
        if mode == Mode::Silent {
            return;
        }
        let Some(Ok(prepare)) = packet.ilp().map(Prepare::decode) else {
            return;
        };
        let mut ilp = BytesMut::new();
        match mode {
            Mode::Fulfill | Mode::WrongFulfillment => {
                let mut f: [u8; 32] = Sha256::digest(prepare.data()).into();
                if mode == Mode::WrongFulfillment {
                    f[0] ^= 1;
                }
                FulfillFields {
                    fulfillment: &f,
                    data: b"",
                }
                .encode(&mut ilp);
            }
            _ => RejectFields {
                code: ErrorCode::F99_APPLICATION_ERROR,
                triggered_by: b"test.fulfiller",
                message: b"rejected by the test fulfiller",
                data: b"",
            }
            .encode(&mut ilp),
        }
        let mut frame = BytesMut::new();
        btp::encode_ilp(&mut frame, BtpType::Response, packet.request_id(), &ilp);
        let frame = frame.freeze();
        glommio::spawn_local(async move {
            let _ = link.send(frame).await;
        })
        .detach();
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
        let (link, rx) = Link::new("connector", LinkConfig::default(), deadlines.clone());
        let l2 = link.clone();
        glommio::spawn_local(async move {
            let ignore: IncomingHandler = Rc::new(|_, _| {});
            link::run(ws, l2, rx, ignore).await;
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
