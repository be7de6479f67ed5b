//! `ilp-connector receive`: a receiver for the test protocol (fulfilment `sha256(data)`, the
//! destination hooks `reject-XXX` and `delay-MS`; see `testkit`). Either it dials a node as a
//! child (`--url`, optionally asking its address by ILDCP) or a node dials it (`--listen`).
//! Every packet is logged at DEBUG; a count goes to stderr every second while it changes.
//! Runs until SIGINT/SIGTERM (exit 0) or until its dialled link is lost (exit 1).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::exit;
use crate::btp::auth::Credential;
use crate::btp::client::{dial, parse_url};
use crate::btp::deadlines::Deadlines;
use crate::btp::link::{self, Link, LinkConfig};
use crate::btp::server::{accept_peer, admit_all};
use crate::btp::IncomingHandler;
use crate::codec::Prepare;
use crate::node::identity;
use crate::testkit::{close_when_stopped, hooks, receiver_answer, respond_after, run_local};

#[derive(Debug, Clone)]
pub enum Receive {
    /// Dial a node as its child.
    Dial {
        url: String,
        address_from_ildcp: bool,
    },
    /// Let a node dial us: accept `user` with `token` on 127.0.0.1:`port` (0: any free port).
    Listen {
        port: u16,
        user: String,
        token: String,
    },
}

/// Fulfilled and rejected so far.
#[derive(Default)]
struct Counts {
    fulfilled: Cell<u64>,
    rejected: Cell<u64>,
}

fn handler(address: Rc<RefCell<Vec<u8>>>, counts: Rc<Counts>) -> IncomingHandler {
    Rc::new(move |link: &Link, packet: crate::codec::BtpPacket| {
        let Some(Ok(prepare)) = packet.ilp().map(Prepare::decode) else {
            return;
        };
        let hooks = hooks(prepare.destination());
        let (ilp, fulfilled) = receiver_answer(&prepare, &hooks, &address.borrow(), true);
        let c = if fulfilled {
            &counts.fulfilled
        } else {
            &counts.rejected
        };
        c.set(c.get() + 1);
        tracing::debug!(component = "receive", event = "packet", destination = %prepare.destination_str(),
            amount = prepare.amount(), fulfilled);
        respond_after(
            link.clone(),
            packet.request_id(),
            &ilp,
            hooks.delay.unwrap_or_default(),
        );
    })
}

/// Prints the counts to stderr every second while they change, until `stop`.
async fn report(counts: Rc<Counts>, stop: Arc<AtomicBool>) {
    let mut last = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let now = (counts.fulfilled.get(), counts.rejected.get());
        if now != last && now.0 + now.1 > 0 {
            eprintln!(
                "received {}: {} fulfilled, {} rejected",
                now.0 + now.1,
                now.0,
                now.1
            );
            last = now;
            glommio::timer::sleep(Duration::from_millis(900)).await;
        }
    }
}

pub fn run(args: Receive) -> u8 {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::FAILED;
        }
    }
    if let Receive::Dial { url, .. } = &args {
        if let Err(e) = parse_url(url) {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    }
    run_local(move || async move {
        let counts = Rc::new(Counts::default());
        glommio::spawn_local(report(counts.clone(), stop.clone())).detach();
        match args {
            Receive::Dial {
                url,
                address_from_ildcp,
            } => dialled(&url, address_from_ildcp, counts, stop).await,
            Receive::Listen { port, user, token } => {
                listening(port, &user, &token, counts, stop).await
            }
        }
    })
}

/// Runs `link` on `ws` until the link ends or `stop` is set.
async fn serve_link(
    ws: crate::btp::tls::Ws,
    link: Link,
    handler: IncomingHandler,
    stop: Arc<AtomicBool>,
) {
    close_when_stopped(&link, stop);
    link::run(ws, link, handler).await;
}

async fn dialled(url: &str, ildcp: bool, counts: Rc<Counts>, stop: Arc<AtomicBool>) -> u8 {
    let Ok(target) = parse_url(url) else {
        return exit::USAGE;
    };
    let shown = crate::config::redact_url(url);
    let ws = match dial(&target, "", "", Duration::from_secs(5)).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("error: cannot connect to {shown}: {e}");
            return exit::FAILED;
        }
    };
    let deadlines = Deadlines::new();
    let link = Link::new("node", LinkConfig::default(), deadlines.clone());
    let l2 = link.clone();
    glommio::spawn_local(async move { deadlines.run(move || !l2.is_open()).await }).detach();
    // Our address names us in our Rejects: empty until ILDCP (if asked) tells it.
    let address = Rc::new(RefCell::new(Vec::new()));
    let running = glommio::spawn_local(serve_link(
        ws,
        link.clone(),
        handler(address.clone(), counts),
        stop.clone(),
    ));
    if ildcp {
        match identity::ask(&link, Duration::from_secs(5)).await {
            Ok(own) => {
                println!(
                    "receiving at {} ({}, scale {})",
                    own.address, own.asset_code, own.asset_scale
                );
                *address.borrow_mut() = own.address.as_bytes().to_vec();
            }
            Err(e) => {
                eprintln!("error: ILDCP from {shown}: {e}");
                link.close();
                running.await;
                return exit::FAILED;
            }
        }
    } else {
        println!("connected to {shown}");
    }
    running.await;
    if stop.load(Ordering::Relaxed) {
        exit::OK
    } else {
        eprintln!("error: the link to {shown} was lost");
        exit::FAILED
    }
}

async fn listening(
    port: u16,
    user: &str,
    token: &str,
    counts: Rc<Counts>,
    stop: Arc<AtomicBool>,
) -> u8 {
    let listener = match glommio::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return exit::FAILED;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening on port {port} for {user}");
    let creds = Rc::new(vec![Credential::new(user, token)]);
    let deadlines = Deadlines::new();
    let handler = handler(Rc::default(), counts);
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            None
        })
        .await;
        let Some(accepted) = next else {
            return exit::OK;
        };
        let Ok(stream) = accepted else { continue };
        let (creds, deadlines, handler, stop) = (
            creds.clone(),
            deadlines.clone(),
            handler.clone(),
            stop.clone(),
        );
        glommio::spawn_local(async move {
            match accept_peer(stream, None, &creds, Duration::from_secs(5), admit_all).await {
                Ok((peer, ws)) => {
                    eprintln!("{peer} connected");
                    let link = Link::new(&peer, LinkConfig::default(), deadlines);
                    serve_link(ws, link, handler, stop).await;
                }
                Err(e) => eprintln!("refused a connection: {e}"),
            }
        })
        .detach();
    }
}
