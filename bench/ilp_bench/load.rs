//! The load generator's sender: `links` dialled BTP links, `concurrency` packets in flight
//! spread over them, a warm-up, then a measured phase; latency per packet into an
//! hdrhistogram (µs).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use bytes::BytesMut;
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use ilp_connector::btp::client::{dial, parse_url, DialTarget};
use ilp_connector::btp::deadlines::Deadlines;
use ilp_connector::btp::link::{self, Link, LinkConfig};
use ilp_connector::btp::IncomingHandler;
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::{Packet, PrepareFields, Timestamp};
use ilp_connector::testkit::condition_for;

#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub user: String,
    pub token: String,
    pub destination: String,
    pub concurrency: usize,
    pub links: usize,
    pub data_size: usize,
    pub warmup: Duration,
    /// Measured phase: this long, unless `count` is set.
    pub duration: Duration,
    pub count: Option<u64>,
    pub progress: bool,
    /// A different payload and condition per Prepare (see `--unique`).
    pub unique: bool,
    /// Keep only links that land on this shard of the target (see [`Placement`]).
    pub place: Option<Placement>,
}

/// Which shard of a multi-shard target the sender's links must land on. The kernel spreads
/// connections over the shards' SO_REUSEPORT sockets by a hash we do not control, so a link
/// that lands elsewhere is closed and dialled again; the target's `/metrics`
/// (`ilp_peer_links{peer,shard}`) says where each one landed.
#[derive(Debug, Clone)]
pub struct Placement {
    pub admin_port: u16,
    /// The sender's account on the target.
    pub peer: String,
    pub shard: usize,
}

/// `GET /metrics` from the admin port on 127.0.0.1 (blocking; setup and reporting only).
pub fn fetch_metrics(admin_port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port))
        .map_err(|e| format!("admin port {admin_port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The value of the metric line that starts with `prefix` (name and labels), or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Links of `peer` on each shard of the target (shards 0..8 looked up).
fn links_per_shard(admin_port: u16, peer: &str) -> Result<Vec<f64>, String> {
    let text = fetch_metrics(admin_port)?;
    Ok((0..8)
        .map(|s| {
            metric(
                &text,
                &format!("ilp_peer_links{{peer=\"{peer}\",shard=\"{s}\"}}"),
            )
        })
        .collect())
}

/// Polls `links_per_shard` until `done` holds of it, for at most 2 s.
async fn wait_links(place: &Placement, done: impl Fn(&[f64]) -> bool) -> Result<Vec<f64>, String> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let now = links_per_shard(place.admin_port, &place.peer)?;
        if done(&now) || Instant::now() > until {
            return Ok(now);
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Dials `target` until the link lands on `place.shard` (at most 64 tries).
async fn dial_placed(
    target: &DialTarget,
    load: &Load,
    place: &Placement,
) -> Result<WebSocketStream<TcpStream>, String> {
    for _ in 0..64 {
        let before = links_per_shard(place.admin_port, &place.peer)?;
        let ws = dial(target, &load.user, &load.token, Duration::from_secs(5))
            .await
            .map_err(|e| format!("dial {}: {e}", load.url))?;
        let after = wait_links(place, |now| now.iter().sum::<f64>() > before.iter().sum()).await?;
        if after.get(place.shard) > before.get(place.shard) {
            return Ok(ws);
        }
        drop(ws);
        wait_links(place, |now| now == before.as_slice()).await?;
    }
    Err(format!(
        "no link landed on shard {} in 64 dials",
        place.shard
    ))
}

pub struct Outcome {
    pub fulfilled: u64,
    pub rejected: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

/// Runs the load on the current glommio executor. `on_measure` is called once, when the
/// measured phase starts (to sample the connector's CPU time).
pub async fn run(load: Load, on_measure: impl FnOnce()) -> Result<Outcome, String> {
    let target = parse_url(&load.url)?;
    let mut links = Vec::new();
    for _ in 0..load.links.max(1) {
        let ws = match &load.place {
            Some(place) => dial_placed(&target, &load, place).await?,
            None => dial(&target, &load.user, &load.token, Duration::from_secs(5))
                .await
                .map_err(|e| format!("dial {}: {e}", load.url))?,
        };
        let deadlines = Deadlines::new();
        let cfg = LinkConfig {
            max_pending: 1 << 20,
            queue_capacity: 1 << 20,
            ..LinkConfig::default()
        };
        let l = Link::new("target", cfg, deadlines.clone());
        let ignore: IncomingHandler = Rc::new(|_, _| {});
        glommio::spawn_local(link::run(ws, l.clone(), ignore)).detach();
        let l2 = l.clone();
        glommio::spawn_local(async move { deadlines.run(move || !l2.is_open()).await }).detach();
        links.push(l);
    }
    let data = vec![0x5au8; load.data_size];
    let condition = condition_for(&data);
    probe(&links[0], &load.destination, &data, &condition).await?;

    // 0 = warm-up, 1 = measuring, 2 = done.
    let phase = Rc::new(Cell::new(0u8));
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let counts = Rc::new(Cell::new((0u64, 0u64, 0u64)));
    let sent = Rc::new(Cell::new(0u64));
    let workers: Vec<_> = (0..load.concurrency)
        .map(|i| {
            let link = links[i % links.len()].clone();
            let (phase, hist, counts, sent) =
                (phase.clone(), hist.clone(), counts.clone(), sent.clone());
            let (mut data, destination, count) =
                (data.clone(), load.destination.clone(), load.count);
            let unique = load.unique;
            glommio::spawn_local(async move {
                let mut ilp = BytesMut::with_capacity(256);
                let mut condition = condition;
                let mut n: u64 = 0;
                if unique && data.len() < 16 {
                    data.resize(16, 0x5a);
                }
                while phase.get() < 2 {
                    if phase.get() == 1 {
                        if let Some(c) = count {
                            if sent.get() >= c {
                                break;
                            }
                        }
                        sent.set(sent.get() + 1);
                    }
                    if unique {
                        // Worker index and sequence number: never the same payload twice.
                        n += 1;
                        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        data[8..16].copy_from_slice(&n.to_be_bytes());
                        condition = condition_for(&data);
                    }
                    ilp.clear();
                    PrepareFields {
                        amount: 1,
                        expires_at: Timestamp::now().add_millis(30_000),
                        execution_condition: &condition,
                        destination: destination.as_bytes(),
                        data: &data,
                    }
                    .encode(&mut ilp);
                    let mut frame = BytesMut::with_capacity(ilp.len() + 32);
                    btp::encode_ilp(&mut frame, BtpType::Message, 0, &ilp);
                    let measuring = phase.get() == 1;
                    let started = Instant::now();
                    let result = link.request(frame, None).await;
                    if !measuring || phase.get() != 1 {
                        continue;
                    }
                    let us = started.elapsed().as_micros() as u64;
                    let (mut f, mut r, mut e) = counts.get();
                    match result.map(|p| p.ilp().map(Packet::decode)) {
                        Ok(Some(Ok(Packet::Fulfill(_)))) => {
                            f += 1;
                            let _ = hist.borrow_mut().record(us.max(1));
                        }
                        Ok(Some(Ok(Packet::Reject(_)))) => r += 1,
                        _ => e += 1,
                    }
                    counts.set((f, r, e));
                }
            })
        })
        .collect();

    glommio::timer::sleep(load.warmup).await;
    on_measure();
    phase.set(1);
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let done = match load.count {
            Some(c) => {
                let (f, r, e) = counts.get();
                f + r + e >= c
            }
            None => started.elapsed() >= load.duration,
        };
        if load.progress && last_report.elapsed() >= Duration::from_secs(1) {
            let (f, r, e) = counts.get();
            eprintln!(
                "  … {:.0} s: {f} fulfilled, {r} rejected, {e} errors",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if done {
            break;
        }
    }
    let elapsed = started.elapsed();
    phase.set(2);
    for w in workers {
        w.await;
    }
    for l in &links {
        l.close();
    }
    let (fulfilled, rejected, errors) = counts.get();
    let latency_us = hist.borrow().clone();
    Ok(Outcome {
        fulfilled,
        rejected,
        errors,
        elapsed,
        latency_us,
    })
}

/// Sends one packet at a time until one is fulfilled (the path is up), for at most 10 s.
async fn probe(
    link: &Link,
    destination: &str,
    data: &[u8],
    condition: &[u8; 32],
) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < until {
        let mut ilp = BytesMut::new();
        PrepareFields {
            amount: 1,
            expires_at: Timestamp::now().add_millis(30_000),
            execution_condition: condition,
            destination: destination.as_bytes(),
            data,
        }
        .encode(&mut ilp);
        let mut frame = BytesMut::new();
        btp::encode_ilp(&mut frame, BtpType::Message, 0, &ilp);
        match link
            .request(frame, None)
            .await
            .map(|p| p.ilp().map(Packet::decode))
        {
            Ok(Some(Ok(Packet::Fulfill(_)))) => return Ok(()),
            Ok(Some(Ok(Packet::Reject(r)))) => last = format!("rejected {}", r.code().as_str()),
            Ok(_) => last = "answer without a valid ILP packet".into(),
            Err(e) => last = e.to_string(),
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "the path to {destination} never fulfilled a probe: {last}"
    ))
}
