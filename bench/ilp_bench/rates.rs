//! `ilp-bench rates`: the open-loop table. Each target runs at fixed offered rates (latency
//! from each Prepare's scheduled send time), then closed loop at concurrency 1 (latency) and
//! 64 (saturation):
//! - `relay`: the byte relay on glommio (io_uring), as the connector runs;
//! - `relay-epoll`: the same relay on a current-thread tokio runtime (epoll);
//! - `1-hop`: our connector (one shard) between the sender and the fulfiller;
//! - `js-1-hop` (target `js`): the reference JS connector, at the rates it can take.
//!
//! Every row gives the target's CPU, system calls (`--syscalls`) and context switches per
//! packet, so what io_uring buys or costs at each rate is a number, not a guess.

use std::path::Path;
use std::process::Command;

use ilp_connector::testkit::{Fulfiller, Mode};

use super::{measure, spawn_with_port, start_connector, Proc, Row, Timing};

/// The JS connector tops out near 16 000 packets/s here: higher offered rates only queue.
const JS_MAX_RATE: f64 = 20_000.0;

/// One target: its process(es) and the URL the sender dials.
struct Target {
    label: &'static str,
    procs: Vec<Proc>,
    url: String,
    destination: String,
    max_rate: f64,
}

fn relay(me: &Path, f: &Fulfiller, epoll: bool) -> Result<Target, String> {
    let mut cmd = Command::new(me);
    cmd.args(["relay", "--to", &f.url()]);
    if epoll {
        cmd.arg("--epoll");
    }
    let (p, port) = spawn_with_port(cmd, "relay")?;
    Ok(Target {
        label: if epoll { "relay-epoll" } else { "relay" },
        procs: vec![p],
        url: format!("ws://127.0.0.1:{port}"),
        destination: "test.x.bench".into(),
        max_rate: f64::INFINITY,
    })
}

fn ours(bin: &Path, f: &Fulfiller) -> Result<Target, String> {
    let yaml = format!(
        "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\nshards: 1\nlogLevel: warn\nmaxInFlightPerShard: 1000000\npeers:\n  - {{id: sender, relation: child, authToken: bench-token}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
        f.url()
    );
    let (p, port) = start_connector(&bin.to_path_buf(), "a", yaml)?;
    Ok(Target {
        label: "1-hop",
        procs: vec![p],
        url: format!("ws://127.0.0.1:{port}"),
        destination: "test.a.receiver.bench".into(),
        max_rate: f64::INFINITY,
    })
}

/// The reference connector from `bench/js` (run `npm ci` there first), one hop.
fn js(f: &Fulfiller) -> Result<Target, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/js");
    let main = root.join("node_modules/ilp-connector/dist/index.js");
    if !main.exists() {
        return Err(format!(
            "{} missing: run `npm ci` in bench/js",
            main.display()
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let rate = r#"{"refillPeriod":1000,"refillCount":100000000,"capacity":100000000}"#;
    let accounts = format!(
        r#"{{"sender":{{"relation":"child","assetCode":"XRP","assetScale":9,"plugin":"ilp-plugin-btp","rateLimit":{rate},"options":{{"listener":{{"port":{port},"secret":"bench-token"}}}}}},
            "receiver":{{"relation":"child","assetCode":"XRP","assetScale":9,"plugin":"ilp-plugin-btp","rateLimit":{rate},"options":{{"server":"btp+ws://{}:secret-r@127.0.0.1:{}"}}}}}}"#,
        "connector-a", f.port
    );
    let child = Command::new("node")
        .arg(&main)
        .env("CONNECTOR_ILP_ADDRESS", "test.js")
        .env("CONNECTOR_BACKEND", "one-to-one")
        .env("CONNECTOR_SPREAD", "0")
        .env(
            "CONNECTOR_ROUTES",
            r#"[{"targetPrefix":"test.js.receiver","peerId":"receiver"}]"#,
        )
        .env("CONNECTOR_ACCOUNTS", accounts)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start node: {e}"))?;
    let proc = Proc(child);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > until {
            return Err("the JS connector never listened".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(Target {
        label: "js-1-hop",
        procs: vec![proc],
        url: format!("ws://127.0.0.1:{port}"),
        destination: "test.js.receiver.bench".into(),
        max_rate: JS_MAX_RATE,
    })
}

/// Runs every target at every rate, then closed loop at c=1 and at saturation (c=64); rows
/// in that order.
pub fn run(
    bin: &Path,
    timing: &Timing,
    rates: &[f64],
    targets: &[String],
) -> Result<Vec<Row>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // The connectors dial the fulfiller as this user; the relays pass the sender's own auth
    // through to theirs.
    let f = Fulfiller::start("connector-a", "secret-r", Mode::Fulfill);
    let f_relay = Fulfiller::start("sender", "bench-token", Mode::Fulfill);
    let mut rows = Vec::new();
    for name in targets {
        let target = match name.as_str() {
            "relay" => relay(&me, &f_relay, false)?,
            "relay-epoll" => relay(&me, &f_relay, true)?,
            "1-hop" => ours(bin, &f)?,
            "js" => js(&f)?,
            other => return Err(format!("unknown target {other}")),
        };
        let pids: Vec<u32> = target.procs.iter().map(|p| p.0.id()).collect();
        // Open loop at each rate, then closed loop at c=1 (latency) and c=64 (saturation).
        let loads = rates
            .iter()
            .filter(|r| **r <= target.max_rate)
            .map(|r| (Some(*r), 64))
            .chain([(None, 1), (None, 64)]);
        for (rate, concurrency) in loads {
            let mut spec = timing.load(
                target.url.clone(),
                "sender".into(),
                "bench-token".into(),
                target.destination.clone(),
                concurrency,
                1,
            );
            spec.rate = rate;
            eprintln!(
                "{}: {}",
                target.label,
                rate.map_or(format!("closed loop c={concurrency}"), |r| format!(
                    "{r:.0}/s"
                ))
            );
            rows.push(measure(
                target.label,
                1,
                1,
                spec,
                &pids,
                timing.sender_core,
            )?);
        }
    }
    Ok(rows)
}
