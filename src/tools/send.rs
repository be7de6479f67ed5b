//! `ilp-connector send`: Prepares to a destination through a node, as a child dialling it
//! (`--url btp+ws://USER:TOKEN@HOST:PORT`). Each carries its own data (the sequence number
//! first), with the condition `sha256(sha256(data))` that `receive` and the test fulfiller
//! fulfil. One packet: the decoded answer; several: a summary (answers by code, latency
//! percentiles), with a progress line on stderr every second.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{exit, printable};
use crate::codec::Packet;
use crate::testkit::{run_local, SenderLink};

/// The arguments of `ilp-connector send`.
#[derive(Debug, Clone, clap::Args)]
pub struct Send {
    /// The node and our account on it: btp+ws://USER:TOKEN@HOST:PORT
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub destination: String,
    #[arg(long, default_value_t = 1)]
    pub amount: u64,
    /// How many Prepares (more than one prints a summary instead of the answer).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Prepares in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 30_000)]
    pub expiry_ms: i64,
    /// Bytes of data in each Prepare (at least 8: the sequence number).
    #[arg(long, default_value_t = 32)]
    pub data_size: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One answer, as printed.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fulfillment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    triggered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    data_hex: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_text: Option<String>,
    round_trip_us: u64,
}

impl Answer {
    fn of(p: &Packet, rtt: Duration) -> Answer {
        let us = rtt.as_micros() as u64;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match p {
            Packet::Fulfill(f) => Answer {
                kind: "fulfill",
                fulfillment: Some(hex::encode(f.fulfillment())),
                code: None,
                triggered_by: None,
                message: None,
                data_hex: hex::encode(f.data()),
                data_text: printable(f.data()).map(str::to_owned),
                round_trip_us: us,
            },
            Packet::Reject(r) => Answer {
                kind: "reject",
                fulfillment: None,
                code: Some(format!("{} {}", r.code().as_str(), r.code().name())),
                triggered_by: Some(text(r.triggered_by())),
                message: Some(text(r.message())),
                data_hex: hex::encode(r.data()),
                data_text: printable(r.data()).map(str::to_owned),
                round_trip_us: us,
            },
            Packet::Prepare(_) => Answer {
                kind: "prepare (not an answer)",
                fulfillment: None,
                code: None,
                triggered_by: None,
                message: None,
                data_hex: String::new(),
                data_text: None,
                round_trip_us: us,
            },
        }
    }

    fn print_text(&self) {
        println!("{}", self.kind);
        for (k, v) in [
            ("fulfillment", &self.fulfillment),
            ("code", &self.code),
            ("triggeredBy", &self.triggered_by),
            ("message", &self.message),
        ] {
            if let Some(v) = v {
                println!("  {k}: {v}");
            }
        }
        println!(
            "  data: {}",
            if self.data_hex.is_empty() {
                "(none)"
            } else {
                &self.data_hex
            }
        );
        if let Some(t) = &self.data_text {
            println!("  data as text: {t}");
        }
        println!("  round trip: {:.3} ms", self.round_trip_us as f64 / 1000.0);
    }
}

/// Totals of a run of several packets.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    sent: u64,
    fulfilled: u64,
    /// Rejects by code, and `error` for packets that got no answer (link failures).
    answers: BTreeMap<String, u64>,
    seconds: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// The data of packet `seq`: its sequence number, then a filler, `size` bytes in all (at least 8).
fn data_for(seq: u64, size: usize) -> Vec<u8> {
    let mut d = vec![0x2e; size.max(8)];
    d[..8].copy_from_slice(&seq.to_be_bytes());
    d
}

/// Dials and authenticates (the URL carries the account and token).
async fn connect(url: &str) -> Result<SenderLink, String> {
    SenderLink::connect(url, "", "")
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", crate::config::redact_url(url)))
}

pub fn run(args: Send) -> u8 {
    if let Err(e) = crate::btp::client::parse_url(&args.url) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    if args.count == 0 || args.concurrency == 0 {
        eprintln!("error: --count and --concurrency must be at least 1");
        return exit::USAGE;
    }
    if args.count == 1 {
        one(args)
    } else {
        many(args)
    }
}

fn one(args: Send) -> u8 {
    let a = args.clone();
    let result = run_local(move || async move {
        let s = connect(&a.url).await?;
        let data = data_for(0, a.data_size);
        let t = Instant::now();
        let p = s
            .send(&a.destination, a.amount, a.expiry_ms, &data)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        Ok::<_, String>((p, t.elapsed()))
    });
    match result {
        Ok((p, rtt)) => {
            let answer = Answer::of(&p, rtt);
            if args.json {
                println!("{}", serde_json::to_string(&answer).unwrap_or_default());
            } else {
                answer.print_text();
            }
            if matches!(p, Packet::Fulfill(_)) {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}

fn many(args: Send) -> u8 {
    let a = args.clone();
    let result = run_local(move || async move {
        let s = Rc::new(connect(&a.url).await?);
        let hist = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?,
        ));
        let summary = Rc::new(RefCell::new(Summary::default()));
        let next = Rc::new(std::cell::Cell::new(0u64));
        let started = Instant::now();
        let workers: Vec<_> = (0..a.concurrency.min(a.count as usize))
            .map(|_| {
                let (s, hist, summary, next, a) = (
                    s.clone(),
                    hist.clone(),
                    summary.clone(),
                    next.clone(),
                    a.clone(),
                );
                glommio::spawn_local(async move {
                    loop {
                        let seq = next.get();
                        if seq >= a.count {
                            break;
                        }
                        next.set(seq + 1);
                        let data = data_for(seq, a.data_size);
                        let t = Instant::now();
                        let r = s.send(&a.destination, a.amount, a.expiry_ms, &data).await;
                        let us = t.elapsed().as_micros() as u64;
                        let mut sum = summary.borrow_mut();
                        sum.sent += 1;
                        let key = match r {
                            Ok(Packet::Fulfill(_)) => {
                                sum.fulfilled += 1;
                                let _ = hist.borrow_mut().record(us.max(1));
                                continue;
                            }
                            Ok(Packet::Reject(r)) => r.code().as_str().to_owned(),
                            Ok(Packet::Prepare(_)) | Err(_) => "error".to_owned(),
                        };
                        *sum.answers.entry(key).or_default() += 1;
                    }
                })
            })
            .collect();
        let progress = {
            let summary = summary.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    let s = summary.borrow();
                    eprintln!(
                        "… {:.0} s: {} sent, {} fulfilled",
                        started.elapsed().as_secs_f64(),
                        s.sent,
                        s.fulfilled
                    );
                }
            })
        };
        for w in workers {
            w.await;
        }
        drop(progress);
        let mut sum = std::mem::take(&mut *summary.borrow_mut());
        let h = hist.borrow();
        sum.answers.insert("fulfilled".into(), sum.fulfilled);
        sum.answers.retain(|_, n| *n > 0);
        sum.seconds = started.elapsed().as_secs_f64();
        (sum.p50_us, sum.p90_us, sum.p99_us, sum.max_us) = (
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        );
        Ok::<_, String>(sum)
    });
    match result {
        Ok(sum) => {
            if args.json {
                println!("{}", serde_json::to_string(&sum).unwrap_or_default());
            } else {
                println!(
                    "sent {} in {:.2} s ({:.0}/s): {} fulfilled",
                    sum.sent,
                    sum.seconds,
                    sum.sent as f64 / sum.seconds.max(1e-9),
                    sum.fulfilled
                );
                for (code, n) in &sum.answers {
                    println!("  {code}: {n}");
                }
                println!(
                    "  round trip of the fulfilled (µs): p50 {} p90 {} p99 {} max {}",
                    sum.p50_us, sum.p90_us, sum.p99_us, sum.max_us
                );
            }
            if sum.fulfilled == args.count {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}
