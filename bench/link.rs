//! Link throughput: pipelined BTP request/response pairs over one WebSocket link on
//! 127.0.0.1, using the real link task, deadlines, auth and framing.
//!
//! Two layouts:
//! - `one-core`: client and server links on one executor (one core does both ends' work);
//! - `two-cores`: the server on core 1, the client on core 0 (each core does one end).
//!
//! Run: `cargo bench --bench link` (env `PAIRS`, default 1 000 000; `WINDOW`, default 256).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ilp_connector::btp::auth::Credential;
use ilp_connector::btp::client::{dial, parse_url};
use ilp_connector::btp::deadlines::Deadlines;
use ilp_connector::btp::link::{self, Link, LinkConfig};
use ilp_connector::btp::server::{accept_peer, admit_all};
use ilp_connector::btp::IncomingHandler;
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::{BtpPacket, FulfillFields, PrepareFields, Timestamp};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answers every MESSAGE at once with a Fulfill (no task per request).
fn answer_handler() -> IncomingHandler {
    let mut fulfill = BytesMut::new();
    FulfillFields {
        fulfillment: &[7; 32],
        data: b"",
    }
    .encode(&mut fulfill);
    let fulfill = fulfill.freeze();
    Rc::new(move |link: &Link, p: BtpPacket| {
        let mut frame = BytesMut::with_capacity(64);
        btp::encode_ilp(&mut frame, BtpType::Response, p.request_id(), &fulfill);
        let _ = link.send(frame.freeze());
    })
}

/// Accepts links on `listener` forever, answering with [`answer_handler`].
async fn serve(listener: glommio::net::TcpListener) {
    let creds = Rc::new(vec![Credential::new("bench", "token")]);
    while let Ok(stream) = listener.accept().await {
        let creds = creds.clone();
        glommio::spawn_local(async move {
            let Ok((peer, ws)) =
                accept_peer(stream, None, &creds, Duration::from_secs(5), admit_all).await
            else {
                return;
            };
            let l = Link::new(&peer, LinkConfig::default(), Deadlines::new());
            link::run(ws, l, answer_handler()).await;
        })
        .detach();
    }
}

/// Dials `port` and runs `pairs` requests with `window` in flight; returns the elapsed time.
async fn drive(port: u16, pairs: usize, window: usize) -> Duration {
    let target = parse_url(&format!("ws://127.0.0.1:{port}")).expect("url");
    let ws = dial(&target, "bench", "token", Duration::from_secs(5))
        .await
        .expect("dial");
    let deadlines = Deadlines::new();
    let cfg = LinkConfig {
        queue_capacity: 1 << 20,
        ..LinkConfig::default()
    };
    let l = Link::new("server", cfg, deadlines.clone());
    let ignore: IncomingHandler = Rc::new(|_, _| {});
    glommio::spawn_local(link::run(ws, l.clone(), ignore)).detach();
    let l2 = l.clone();
    glommio::spawn_local(async move { deadlines.run(move || !l2.is_open()).await }).detach();

    let mut ilp = BytesMut::new();
    PrepareFields {
        amount: 1,
        expires_at: Timestamp::now().add_millis(600_000),
        execution_condition: &[1; 32],
        destination: b"g.us-fed.acmebank.alice.x7q2a3",
        data: &[0xab; 32],
    }
    .encode(&mut ilp);
    let mut template = BytesMut::new();
    btp::encode_ilp(&mut template, BtpType::Message, 0, &ilp);
    let template = template.freeze();

    let remaining = Rc::new(std::cell::Cell::new(pairs));
    let started = Instant::now();
    let workers: Vec<_> = (0..window)
        .map(|_| {
            let (l, remaining, template) = (l.clone(), remaining.clone(), template.clone());
            glommio::spawn_local(async move {
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    let frame = BytesMut::from(&template[..]);
                    l.request(frame, None).await.expect("answer");
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
    let took = started.elapsed();
    l.close();
    took
}

fn report(layout: &str, pairs: usize, window: usize, took: Duration) {
    println!(
        "link {layout:<10} pairs {pairs} window {window}: {:.3} s, {:.0} pairs/s",
        took.as_secs_f64(),
        pairs as f64 / took.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let pairs = env_usize("PAIRS", 1_000_000);
    let window = env_usize("WINDOW", 256);

    // One core: both ends on one executor.
    let took = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("addr").port();
            glommio::spawn_local(serve(listener)).detach();
            drive(port, pairs / 10, window).await; // warm-up
            drive(port, pairs, window).await
        })
        .expect("executor")
        .join()
        .expect("join");
    report("one-core", pairs, window, took);

    // Two cores: server on core 1, client on core 0.
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(1))
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let _ = tx.send(listener.local_addr().expect("addr").port());
            serve(listener).await
        })
        .expect("executor");
    let port = rx.recv().expect("port");
    let took = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .spawn(move || async move {
            drive(port, pairs / 10, window).await;
            drive(port, pairs, window).await
        })
        .expect("executor")
        .join()
        .expect("join");
    report("two-cores", pairs, window, took);
    // The server executor runs until the process exits.
    std::process::exit(0);
}
