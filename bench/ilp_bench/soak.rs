//! `ilp-bench soak`: sender → A → B → C → fulfiller, three `ilp-connector` processes, while B
//! is SIGKILLed and restarted on its port every few seconds and the fulfiller stalls now and
//! then (`Mode::Stalls`: 1.5 s of every 3 s, longer than C's 0.7 s send timeout and grace).
//!
//! The sender speaks raw BTP (not our `Link`, which would hide a duplicate answer): it numbers
//! every Prepare itself, keeps `concurrency` in flight, and for every frame that comes back
//! checks the id: the first answer to an outstanding id counts as answered (by code), any
//! other answer to a known id is a duplicate, an id never sent is unknown. At the end every
//! id still outstanding (after a bound well past the packets' expiry) is unanswered.
//! Both must be 0. Also reported: peak RSS of each node (B: the largest incarnation).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ilp_connector::btp::client::{dial, parse_url};
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::{BtpPacket, Packet, PrepareFields, Timestamp};
use ilp_connector::testkit::{condition_for, run_local, Fulfiller, Mode};

use ilp_connector::btp::socket::Incoming;

use crate::{free_port, procstat, start_connector, Proc};

/// What a soak run found.
#[derive(Debug, Default, serde::Serialize)]
pub struct SoakReport {
    pub sent: u64,
    pub answered: u64,
    pub unanswered: u64,
    pub duplicated: u64,
    pub unknown: u64,
    pub by_code: BTreeMap<String, u64>,
    pub kills: usize,
    pub seconds: f64,
    pub peak_rss_mib: BTreeMap<String, f64>,
}

fn node_yaml(name: &str, port: u16, peers: &str, routes: &str, extra: &str) -> String {
    format!(
        "nodeId: connector-{name}\nilpAddress: test.{name}\nbtpServerPort: {port}\nlogLevel: error\nreconnectBackoffMs: [50, 100, 200]\n{extra}peers:\n{peers}{routes}"
    )
}

fn peak_mib(pid: u32) -> f64 {
    procstat::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

/// Runs the soak: at least `packets` Prepares and at least `kills` kills of B, one every
/// `kill_every`.
pub fn run(
    bin: &Path,
    packets: u64,
    kills: usize,
    kill_every: Duration,
    concurrency: usize,
) -> Result<SoakReport, String> {
    let bin = bin.to_path_buf();
    let fulfiller = Fulfiller::start("connector-c", "secret-cr", Mode::Stalls);
    let (a_port, b_port, c_port) = (free_port()?, free_port()?, free_port()?);
    let c_yaml = node_yaml(
        "c",
        c_port,
        &format!(
            "  - {{id: connector-b, relation: peer, authToken: secret-bc}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-cr}}\n",
            fulfiller.url()
        ),
        "",
        "sendTimeoutMs: 700\n",
    );
    let b_yaml = node_yaml(
        "b",
        b_port,
        &format!(
            "  - {{id: connector-a, relation: peer, authToken: secret-ab}}\n  - {{id: connector-c, relation: peer, url: \"ws://127.0.0.1:{c_port}\", authToken: secret-bc}}\n"
        ),
        "routes:\n  - {prefix: test.c, nextHop: connector-c}\n",
        "",
    );
    let a_yaml = node_yaml(
        "a",
        a_port,
        &format!(
            "  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: connector-b, relation: peer, url: \"ws://127.0.0.1:{b_port}\", authToken: secret-ab}}\n"
        ),
        "routes:\n  - {prefix: test.c, nextHop: connector-b}\n",
        "",
    );
    let (c, _) = start_connector(&bin, "soak-c", c_yaml)?;
    let (b, _) = start_connector(&bin, "soak-b", b_yaml.clone())?;
    let (a, _) = start_connector(&bin, "soak-a", a_yaml)?;
    // Let A and B dial their next hops.
    std::thread::sleep(Duration::from_millis(500));

    // The killer: SIGKILL B, restart it on its port, every `kill_every`, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, killed, bin) = (stop.clone(), killed.clone(), bin.clone());
        std::thread::spawn(move || -> Result<f64, String> {
            let mut b: Proc = b;
            let mut b_peak = 0.0f64;
            while !stop.load(Ordering::SeqCst) {
                let until = Instant::now() + kill_every;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                b_peak = b_peak.max(peak_mib(b.0.id()));
                let _ = b.0.kill();
                let _ = b.0.wait();
                killed.fetch_add(1, Ordering::SeqCst);
                // The port may take a moment to be free again.
                let mut tries = 0;
                b = loop {
                    match start_connector(&bin, "soak-b", b_yaml.clone()) {
                        Ok((p, _)) => break p,
                        Err(e) if tries >= 50 => return Err(format!("B did not restart: {e}")),
                        Err(_) => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                };
            }
            Ok(b_peak.max(peak_mib(b.0.id())))
        })
    };

    let url = format!("ws://127.0.0.1:{a_port}");
    let k2 = killed.clone();
    let sent_report = run_local(move || drive(url, packets, kills, k2, concurrency));
    stop.store(true, Ordering::SeqCst);
    let b_peak = killer.join().map_err(|_| "killer thread panicked")??;
    let mut report = sent_report?;
    report.kills = killed.load(Ordering::SeqCst);
    report.peak_rss_mib.insert("a".into(), peak_mib(a.0.id()));
    report.peak_rss_mib.insert("b".into(), b_peak);
    report.peak_rss_mib.insert("c".into(), peak_mib(c.0.id()));
    drop((a, c, fulfiller));
    Ok(report)
}

/// Expiry of every Prepare: well past the three hops' timeouts, well short of the run.
const EXPIRY_MS: i64 = 10_000;

/// The sender (see the module doc).
async fn drive(
    url: String,
    packets: u64,
    kills: usize,
    killed: Arc<AtomicUsize>,
    concurrency: usize,
) -> Result<SoakReport, String> {
    let target = parse_url(&url)?;
    let mut ws = dial(&target, "sender", "secret-sa", Duration::from_secs(5))
        .await
        .map_err(|e| format!("dial A: {e}"))?;
    let started = Instant::now();
    let mut report = SoakReport::default();
    // id → when it was sent; ids start at 1 and are never reused.
    let mut outstanding: HashMap<u32, Instant> = HashMap::new();
    let mut answered_ids: Vec<bool> = Vec::new();
    let mut next_id: u32 = 1;
    let mut last_progress = Instant::now();
    let done_sending = |sent: u64| sent >= packets && killed.load(Ordering::SeqCst) >= kills;
    loop {
        let sending = !done_sending(report.sent);
        if !sending && outstanding.is_empty() {
            break;
        }
        // No answer for this long (well past every expiry): what is outstanding never will be.
        if last_progress.elapsed() > Duration::from_millis(EXPIRY_MS as u64 + 5_000) {
            break;
        }
        if sending {
            let mut fed = 0;
            while outstanding.len() < concurrency && !done_sending(report.sent) {
                let id = next_id;
                next_id += 1;
                let data = id.to_be_bytes();
                let mut ilp = BytesMut::new();
                PrepareFields {
                    amount: 1,
                    expires_at: Timestamp::now().add_millis(EXPIRY_MS),
                    execution_condition: &condition_for(&data),
                    destination: b"test.c.receiver.soak",
                    data: &data,
                }
                .encode(&mut ilp);
                let mut frame = BytesMut::new();
                btp::encode_ilp(&mut frame, BtpType::Message, id, &ilp);
                ws.send_binary(&frame);
                outstanding.insert(id, Instant::now());
                answered_ids.push(false);
                report.sent += 1;
                fed += 1;
            }
            if fed > 0 {
                ws.flush().await.map_err(|e| format!("flush to A: {e}"))?;
            }
        }
        let next =
            glommio::timer::timeout(Duration::from_millis(200), async { Ok(ws.next().await) })
                .await;
        let msg = match next {
            Err(_) => continue,
            Ok(Ok(Incoming::Close)) => return Err("A closed the sender's connection".into()),
            Ok(Err(e)) => return Err(format!("read from A: {e}")),
            Ok(Ok(Incoming::Binary(bytes))) => bytes,
        };
        let Ok(p) = BtpPacket::decode(msg) else {
            report.unknown += 1;
            continue;
        };
        let id = p.request_id();
        last_progress = Instant::now();
        if outstanding.remove(&id).is_some() {
            report.answered += 1;
            if let Some(slot) = answered_ids.get_mut(id as usize - 1) {
                *slot = true;
            }
            let code = match (p.kind(), p.ilp().map(Packet::decode)) {
                (BtpType::Response, Some(Ok(Packet::Fulfill(_)))) => "fulfilled".to_owned(),
                (BtpType::Response, Some(Ok(Packet::Reject(r)))) => r.code().as_str().to_owned(),
                (BtpType::Error, _) => "btp-error".to_owned(),
                _ => "invalid".to_owned(),
            };
            *report.by_code.entry(code).or_default() += 1;
        } else if answered_ids
            .get((id as usize).wrapping_sub(1))
            .copied()
            .unwrap_or(false)
        {
            report.duplicated += 1;
        } else {
            report.unknown += 1;
        }
        if report.answered.is_multiple_of(100_000) {
            eprintln!(
                "soak: {} answered, {} kills, {:.0} s",
                report.answered,
                killed.load(Ordering::SeqCst),
                started.elapsed().as_secs_f64()
            );
        }
    }
    report.unanswered = outstanding.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
