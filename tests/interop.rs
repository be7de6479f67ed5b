//! Interop with the reference implementation: npm `ilp-plugin-btp` 1.5.0 (pinned by
//! `tests/interop/package-lock.json`) against our server and our client, over real sockets.
//!
//! `.ci/run` installs the packages with `npm ci`; on a fresh clone the first test here does it
//! (once) if `node_modules` is missing. Needs `node` and `npm` on PATH.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the pinned packages once per test run if they are not there yet.
fn ensure_packages() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        let dir = interop_dir();
        if dir
            .join("node_modules/ilp-plugin-btp/package.json")
            .exists()
        {
            return Ok(());
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("npm ci failed: {status}"))
        }
    });
    if let Err(e) = r {
        panic!("interop packages unavailable: {e}");
    }
}

/// Kills the child process when dropped, so a failing assertion never leaves it running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_script(script: &str, args: &[&str]) -> (Reaped, mpsc::Receiver<serde_json::Value>) {
    ensure_packages();
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node on PATH");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    (Reaped(child), rx)
}

fn next_line(rx: &mpsc::Receiver<serde_json::Value>, what: &str) -> serde_json::Value {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no {what} from the node script within 20 s"))
}

#[test]
fn reference_client_against_our_server() {
    let f = Fulfiller::start("connector-a", "secret-ar", Mode::Fulfill);
    let a = ConnectorNode::start(
        Config::from_yaml(&format!(
            "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\npeers:\n  - {{id: js, relation: child, authToken: secret-js}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-ar}}\n",
            f.url()
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(a.wait_ready(Duration::from_secs(10)));

    // Fulfilled through our connector to our fulfiller.
    let url = format!("btp+ws://js:secret-js@127.0.0.1:{}", a.btp_port());
    let (_child, rx) = node_script("client.js", &[&url, "test.a.receiver.bob"]);
    let out = next_line(&rx, "answer");
    assert_eq!(out["type"], "ilp_fulfill", "{out}");
    assert_eq!(out["fulfillmentMatches"], true, "{out}");

    // A Reject made by us parses in the reference implementation.
    let (_child, rx) = node_script("client.js", &[&url, "test.nowhere"]);
    let out = next_line(&rx, "answer");
    assert_eq!(out["type"], "ilp_reject", "{out}");
    assert_eq!(out["code"], "F02", "{out}");
    assert_eq!(out["triggeredBy"], "test.a", "{out}");

    // A wrong token is refused: the reference client never gets to send.
    let bad = format!("btp+ws://js:wrong@127.0.0.1:{}", a.btp_port());
    let (_child, rx) = node_script("client.js", &[&bad, "test.a.receiver.bob"]);
    // Our server answers the auth with a BTP ERROR and closes: the reference client gives up.
    let out = next_line(&rx, "the client's failure");
    assert!(
        out.get("type").is_none(),
        "answered despite a wrong token: {out}"
    );
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("connection aborted")),
        "{out}"
    );
}

#[test]
fn our_client_against_reference_listener() {
    let (_child, rx) = node_script("listener.js", &["secret-js"]);
    let port = next_line(&rx, "listening port")["port"]
        .as_u64()
        .expect("port") as u16;
    let a = ConnectorNode::start(
        Config::from_yaml(&format!(
            "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: js, relation: peer, url: \"ws://127.0.0.1:{port}\", authToken: secret-js}}\nroutes:\n  - {{prefix: test.js, nextHop: js}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !a.health().peers["js"] {
        assert!(
            Instant::now() < until,
            "never authenticated to the JS listener"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-sa")
            .await
            .unwrap();
        s.send("test.js.bob", 7, 20_000, b"to the reference listener")
            .await
    })
    .unwrap();
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");
    let served = next_line(&rx, "served line");
    assert_eq!(served["served"], "test.js.bob", "{served}");
    assert_eq!(served["amount"], "7", "{served}");
}

/// Issue 16: a two-shard node dials the reference listener (which keeps one socket per
/// account and evicts older ones) from one shard only: 5 000 packets at concurrency 64 from
/// senders on both shards are all fulfilled, over exactly one link for the whole run.
#[test]
fn two_shard_node_keeps_one_link_to_the_reference_listener() {
    let (_child, rx) = node_script("listener.js", &["secret-js"]);
    let port = next_line(&rx, "listening port")["port"]
        .as_u64()
        .expect("port") as u16;
    let a = ConnectorNode::start(
        Config::from_yaml(&format!(
            "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\nshards: 2\nmaxConnectionsPerPeer: 16\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: js, relation: peer, url: \"ws://127.0.0.1:{port}\", authToken: secret-js}}\nroutes:\n  - {{prefix: test.js, nextHop: js}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !a.health().peers["js"] {
        assert!(
            Instant::now() < until,
            "never authenticated to the JS listener"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = std::sync::Arc::new(a);
    let watcher = {
        let (a, stop) = (
            a.clone(),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let (mut min, mut max) = (usize::MAX, 0);
            while !s2.load(std::sync::atomic::Ordering::SeqCst) {
                let n: usize = a.peer_links("js").unwrap().iter().sum();
                (min, max) = (min.min(n), max.max(n));
                std::thread::sleep(Duration::from_millis(5));
            }
            (min, max)
        });
        (stop, h)
    };
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let codes = run_local(move || async move {
        // Eight sender connections: the kernel spreads them over both shards.
        let mut links = Vec::new();
        for _ in 0..8 {
            links.push(std::rc::Rc::new(
                SenderLink::connect(&url, "sender", "secret-sa")
                    .await
                    .unwrap(),
            ));
        }
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let s = links[t % links.len()].clone();
                glommio::spawn_local(async move {
                    let mut fulfilled = 0;
                    for i in 0..(5000 / 64 + usize::from(t < 5000 % 64)) {
                        let data = format!("{t}-{i}");
                        if let Ok(Packet::Fulfill(_)) =
                            s.send("test.js.bob", 1, 20_000, data.as_bytes()).await
                        {
                            fulfilled += 1;
                        }
                    }
                    fulfilled
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await;
        }
        total
    });
    watcher.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let (min, max) = watcher.1.join().unwrap();
    assert_eq!(codes, 5000, "every packet fulfilled");
    assert_eq!(
        (min, max),
        (1, 1),
        "exactly one link to the listener all along"
    );
    assert_eq!(
        a.peer_links("js")
            .unwrap()
            .iter()
            .filter(|n| **n > 0)
            .count(),
        1
    );
}
