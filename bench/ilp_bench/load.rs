//! The load generator's sender: `links` dialled BTP links, `concurrency` packets in flight
//! spread over them, a warm-up, then a measured phase; latency per packet into an
//! hdrhistogram (µs).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use ilp_connector::btp::client::{dial_with_ca, parse_url, DialTarget};
use ilp_connector::btp::deadlines::Deadlines;
use ilp_connector::btp::link::{self, Link, LinkConfig};
use ilp_connector::btp::tls::Ws;
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
    /// Open loop: send this many Prepares per second whatever the answers (`concurrency` is
    /// then unused).
    pub rate: Option<f64>,
    /// Extra CA certificates (PEM) to trust for a `wss` target.
    pub ca_file: Option<String>,
    /// Whether the caller counts the target's system calls (see `--syscalls`).
    pub count_syscalls: bool,
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
async fn dial_placed(target: &DialTarget, load: &Load, place: &Placement) -> Result<Ws, String> {
    for _ in 0..64 {
        let before = links_per_shard(place.admin_port, &place.peer)?;
        let (ws, _) = dial_with_ca(
            target,
            &load.user,
            &load.token,
            Duration::from_secs(5),
            load.ca_file.as_deref(),
        )
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
            None => dial_with_ca(
                &target,
                &load.user,
                &load.token,
                Duration::from_secs(5),
                load.ca_file.as_deref(),
            )
            .await
            .map(|(ws, _)| ws)
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

    let tally = Rc::new(Tally {
        phase: Cell::new(0),
        hist: RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ),
        counts: Cell::new((0, 0, 0)),
        sent: Cell::new(0),
        count: load.count,
    });
    let drivers: Vec<_> = match load.rate {
        None => (0..load.concurrency)
            .map(|i| {
                let (link, tally) = (links[i % links.len()].clone(), tally.clone());
                let payload = Payload::new(&load, i as u64, &data, condition);
                let destination = load.destination.clone();
                glommio::spawn_local(closed_loop(link, tally, payload, destination))
            })
            .collect(),
        Some(rate) => {
            let (links, tally) = (links.clone(), tally.clone());
            let payload = Payload::new(&load, 0, &data, condition);
            let destination = load.destination.clone();
            vec![glommio::spawn_local(open_loop(
                links,
                tally,
                payload,
                rate,
                destination,
            ))]
        }
    };

    glommio::timer::sleep(load.warmup).await;
    on_measure();
    tally.phase.set(1);
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let done = match load.count {
            Some(c) => {
                let (f, r, e) = tally.counts.get();
                f + r + e >= c
            }
            None => started.elapsed() >= load.duration,
        };
        if load.progress && last_report.elapsed() >= Duration::from_secs(1) {
            let (f, r, e) = tally.counts.get();
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
    tally.phase.set(2);
    for d in drivers {
        d.await;
    }
    for l in &links {
        l.close();
    }
    let (fulfilled, rejected, errors) = tally.counts.get();
    let latency_us = tally.hist.borrow().clone();
    Ok(Outcome {
        fulfilled,
        rejected,
        errors,
        elapsed,
        latency_us,
    })
}

/// What the drivers share: the phase (0 = warm-up, 1 = measuring, 2 = done), the latency
/// histogram and the answers counted in the measured phase.
struct Tally {
    phase: Cell<u8>,
    hist: RefCell<Histogram<u64>>,
    /// (fulfilled, rejected, errors)
    counts: Cell<(u64, u64, u64)>,
    /// Prepares sent in the measured phase.
    sent: Cell<u64>,
    count: Option<u64>,
}

impl Tally {
    /// Whether another Prepare may be sent now (counts it if it is a measured one).
    fn may_send(&self) -> bool {
        match self.phase.get() {
            0 => true,
            1 => {
                if self.count.is_some_and(|c| self.sent.get() >= c) {
                    return false;
                }
                self.sent.set(self.sent.get() + 1);
                true
            }
            _ => false,
        }
    }

    /// Records an answer that took `us` (from the send, or its scheduled time in open loop),
    /// if the packet was sent in the measured phase and the phase is still on.
    fn record(
        &self,
        measured: bool,
        us: u64,
        result: Result<ilp_connector::codec::BtpPacket, ilp_connector::btp::LinkError>,
    ) {
        if !measured || self.phase.get() != 1 {
            return;
        }
        let (mut f, mut r, mut e) = self.counts.get();
        match result.map(|p| p.ilp().map(Packet::decode)) {
            Ok(Some(Ok(Packet::Fulfill(_)))) => {
                f += 1;
                let _ = self.hist.borrow_mut().record(us.max(1));
            }
            Ok(Some(Ok(Packet::Reject(_)))) => r += 1,
            _ => e += 1,
        }
        self.counts.set((f, r, e));
    }
}

/// The data and condition of successive Prepares: the same every time, or (`--unique`) the
/// driver's index and a sequence number in the first 16 bytes, never the same payload twice.
struct Payload {
    data: Vec<u8>,
    condition: [u8; 32],
    unique: Option<(u64, u64)>,
}

impl Payload {
    fn new(load: &Load, driver: u64, data: &[u8], condition: [u8; 32]) -> Payload {
        let mut data = data.to_vec();
        if load.unique && data.len() < 16 {
            data.resize(16, 0x5a);
        }
        Payload {
            data,
            condition,
            unique: load.unique.then_some((driver, 0)),
        }
    }

    /// The BTP MESSAGE of the next Prepare to `destination`.
    fn next_frame(&mut self, destination: &str, ilp: &mut BytesMut) -> BytesMut {
        if let Some((driver, n)) = &mut self.unique {
            *n += 1;
            self.data[..8].copy_from_slice(&driver.to_be_bytes());
            self.data[8..16].copy_from_slice(&n.to_be_bytes());
            self.condition = condition_for(&self.data);
        }
        ilp.clear();
        PrepareFields {
            amount: 1,
            expires_at: Timestamp::now().add_millis(30_000),
            execution_condition: &self.condition,
            destination: destination.as_bytes(),
            data: &self.data,
        }
        .encode(ilp);
        let mut frame = BytesMut::with_capacity(ilp.len() + 32);
        btp::encode_ilp(&mut frame, BtpType::Message, 0, ilp);
        frame
    }
}

/// One of `concurrency` workers: sends, waits for the answer, sends the next.
async fn closed_loop(link: Link, tally: Rc<Tally>, mut payload: Payload, destination: String) {
    let mut ilp = BytesMut::with_capacity(256);
    while tally.may_send() {
        let frame = payload.next_frame(&destination, &mut ilp);
        let measured = tally.phase.get() == 1;
        let started = Instant::now();
        let result = link.request(frame, None).await;
        tally.record(measured, started.elapsed().as_micros() as u64, result);
    }
}

/// Sends at `rate` Prepares per second whatever the answers (spread over `links`), each at
/// its scheduled time or, if the sender fell behind, at once; latency counts from the
/// scheduled time, so a stalled connector cannot hide its stall (no coordinated omission).
async fn open_loop(
    links: Vec<Link>,
    tally: Rc<Tally>,
    mut payload: Payload,
    rate: f64,
    destination: String,
) {
    let mut ilp = BytesMut::with_capacity(256);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let outstanding = Rc::new(Cell::new(0u64));
    'sending: loop {
        let now = Instant::now();
        let mut due = start + interval.mul_f64(sent as f64);
        while due <= now {
            if !tally.may_send() {
                break 'sending;
            }
            let frame = payload.next_frame(&destination, &mut ilp);
            let link = links[sent as usize % links.len()].clone();
            let (tally2, outstanding2) = (tally.clone(), outstanding.clone());
            let (measured, scheduled) = (tally.phase.get() == 1, due);
            outstanding.set(outstanding.get() + 1);
            glommio::spawn_local(async move {
                let result = link.request(frame, None).await;
                tally2.record(measured, scheduled.elapsed().as_micros() as u64, result);
                outstanding2.set(outstanding2.get() - 1);
            })
            .detach();
            sent += 1;
            due = start + interval.mul_f64(sent as f64);
        }
        glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    // The answers still on their way (bounded: the links time requests out).
    let until = Instant::now() + Duration::from_secs(35);
    while outstanding.get() > 0 && Instant::now() < until {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
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
