//! Accounts end to end, with the built binary as a separate process: limits that hold under
//! concurrency, F08 with its data, amounts converted into the next hop's scale, balances
//! that survive `kill -9` (strict durability), and settlements applied once per key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ilp_connector::codec::{ErrorCode, Packet};
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

#[path = "support/process.rs"]
mod process;
use process::{admin_get, wait_for, Proc};

const ADMIN_TOKEN: &str = "admin-secret-for-accounts";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ilp-accounts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A node whose child `sender` may owe at most `maximum` (XRP, scale 9) and whose peer
/// `receiver` (the fulfiller, scale 11) may be owed up to 10^9 by us.
fn write_config(
    dir: &Path,
    fulfiller_port: u16,
    maximum: u64,
    top_extra: &str,
    sender_extra: &str,
) -> PathBuf {
    let yaml = format!(
        r#"nodeId: acct
ilpAddress: test.acct
btpServerPort: 0
healthCheckPort: 0
adminToken: {ADMIN_TOKEN}
journal:
  dir: {journal}
{top_extra}
peers:
  - id: sender
    relation: child
    authToken: sender-token
    maxPacketAmount: 500
    balance: {{ maximum: {maximum}, minimum: -1000, settleThreshold: -500, settleTo: 0 }}
    {sender_extra}
  - id: receiver
    relation: peer
    url: ws://connector:fulfil-token@127.0.0.1:{fulfiller_port}
    assetScale: 11
    balance: {{ minimum: "-1000000000" }}
routes:
  - prefix: test.receiver
    nextHop: receiver
"#,
        journal = dir.join("journal").display()
    );
    let path = dir.join("acct.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start(config: &Path) -> Proc {
    let p = process::start(config, &[]);
    let admin = p.admin_port;
    wait_for("the node to be ready", || {
        admin_get(admin, "/health").is_some_and(|h| h["status"] == "ready")
    });
    p
}

fn account(p: &Proc, id: &str) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/accounts/{id}", p.admin_port);
    let r = ureq::get(&url)
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .timeout(Duration::from_secs(2))
        .call()
        .unwrap();
    serde_json::from_str(&r.into_string().unwrap()).unwrap()
}

fn settle(p: &Proc, id: &str, amount: i64, key: &str) -> serde_json::Value {
    let url = format!(
        "http://127.0.0.1:{}/accounts/{id}/settlements",
        p.admin_port
    );
    let r = ureq::post(&url)
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(2))
        .send_string(
            &serde_json::json!({"amount": amount.to_string(), "idempotencyKey": key}).to_string(),
        )
        .unwrap();
    serde_json::from_str(&r.into_string().unwrap()).unwrap()
}

/// Sends `count` Prepares of `amount` at once (each with its own data) and returns their
/// answers: `Ok(None)` for a Fulfill, `Ok(Some(code, data))` for a Reject.
fn send_all(
    port: u16,
    destination: &str,
    amount: u64,
    count: usize,
) -> Vec<Option<(ErrorCode, Vec<u8>)>> {
    let dest = destination.to_owned();
    run_local(move || async move {
        let url = format!("btp+ws://sender:sender-token@127.0.0.1:{port}");
        let s = SenderLink::connect(&url, "sender", "sender-token")
            .await
            .expect("sender connects");
        let s = std::rc::Rc::new(s);
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let (s, dest) = (s.clone(), dest.clone());
                glommio::spawn_local(async move {
                    let data = format!("packet-{i}-{}", std::process::id());
                    match s.send(&dest, amount, 5_000, data.as_bytes()).await {
                        Ok(Packet::Fulfill(_)) => None,
                        Ok(Packet::Reject(r)) => Some((r.code(), r.data().to_vec())),
                        other => panic!("unexpected answer {other:?}"),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    })
}

fn codes(answers: &[Option<(ErrorCode, Vec<u8>)>]) -> (usize, usize) {
    let fulfilled = answers.iter().filter(|a| a.is_none()).count();
    let t04 = answers
        .iter()
        .filter(|a| matches!(a, Some((c, _)) if *c == ErrorCode::T04_INSUFFICIENT_LIQUIDITY))
        .count();
    (fulfilled, t04)
}

#[test]
fn limits_hold_under_concurrency_and_survive_kill_9() {
    let dir = scratch("limits");
    let fulfiller = Fulfiller::start("connector", "fulfil-token", Mode::Fulfill);
    let config = write_config(&dir, fulfiller.port, 1000, "", "");
    let mut node = start(&config);

    // 50 Prepares of 100 at once, each answered after 200 ms: only 10 fit under 1000.
    let answers = send_all(node.btp_port, "test.receiver.delay-200", 100, 50);
    assert_eq!(codes(&answers), (10, 40), "{answers:?}");
    let a = account(&node, "sender");
    assert_eq!(a["balance"], "1000", "{a}");
    assert_eq!(
        (a["reservedIn"].as_str(), a["reservedOut"].as_str()),
        (Some("0"), Some("0"))
    );
    // 100 at scale 9 is 10 000 at scale 11: the receiver was paid 10 × 10 000.
    assert_eq!(account(&node, "receiver")["balance"], "-100000");
    let metrics = ureq::get(&format!("http://127.0.0.1:{}/metrics", node.admin_port))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("ilp_account_balance{peer=\"sender\"} 1000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ilp_account_rejects_total{peer=\"sender\",code=\"T04\"} 40"),
        "{metrics}"
    );

    // Above maxPacketAmount: F08 with the amount received and the maximum, big-endian.
    let answers = send_all(node.btp_port, "test.receiver", 501, 1);
    let (code, data) = answers[0].clone().expect("rejected");
    assert_eq!(code, ErrorCode::F08_AMOUNT_TOO_LARGE);
    assert_eq!(data, [501u64.to_be_bytes(), 500u64.to_be_bytes()].concat());

    // kill -9, restart on the same journal: the balance is still there and still binds.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(node);
    let node = start(&config);
    assert_eq!(account(&node, "sender")["balance"], "1000");
    assert_eq!(account(&node, "receiver")["balance"], "-100000");
    assert_eq!(
        codes(&send_all(node.btp_port, "test.receiver", 100, 1)),
        (0, 1)
    );

    // A settlement (the sender paid us 1000) applies once per key, durably.
    assert_eq!(settle(&node, "sender", -1000, "pay-1")["balance"], "0");
    let again = settle(&node, "sender", -1000, "pay-1");
    assert_eq!(
        (again["balance"].as_str(), again["duplicate"].as_bool()),
        (Some("0"), Some(true))
    );
    assert_eq!(
        codes(&send_all(node.btp_port, "test.receiver", 100, 3)),
        (3, 0)
    );
    drop(node);
    let node = start(&config);
    let a = account(&node, "sender");
    assert_eq!(a["balance"], "300", "{a}");
    assert_eq!(a["needsSettlement"], false);
    assert_eq!(settle(&node, "sender", -1000, "pay-1")["duplicate"], true);

    // The operator's view.
    let out = std::process::Command::new(process::BIN)
        .args([
            "accounts",
            "--admin",
            &format!("http://127.0.0.1:{}", node.admin_port),
        ])
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let sender = table
        .lines()
        .find(|l| l.starts_with("sender"))
        .unwrap_or_default();
    let cells: Vec<&str> = sender.split_whitespace().collect();
    assert_eq!(
        cells,
        ["sender", "XRP", "9", "300", "0", "0", "-1000", "1000", "-"],
        "{table}"
    );
}

#[test]
fn rate_limit_and_throughput() {
    let dir = scratch("rates");
    let fulfiller = Fulfiller::start("connector", "fulfil-token", Mode::Fulfill);
    let config = write_config(
        &dir,
        fulfiller.port,
        1_000_000,
        "",
        "rateLimit: { packetsPerSecond: 1, burst: 5 }",
    );
    let node = start(&config);
    let answers = send_all(node.btp_port, "test.receiver", 1, 8);
    let t05 = answers
        .iter()
        .filter(|a| matches!(a, Some((c, _)) if *c == ErrorCode::T05_RATE_LIMITED))
        .count();
    assert_eq!(
        (answers.iter().filter(|a| a.is_none()).count(), t05),
        (5, 3),
        "{answers:?}"
    );
    drop(node);

    let config = write_config(
        &dir,
        fulfiller.port,
        1_000_000,
        "",
        "throughput: { amountPerSecond: 450 }",
    );
    let node = start(&config);
    // 450 per second, a second's worth at once: four of 100 pass, the rest T04.
    assert_eq!(
        codes(&send_all(node.btp_port, "test.receiver", 100, 8)),
        (4, 4)
    );
}

#[test]
fn a_journal_of_another_node_is_refused() {
    let dir = scratch("other-node");
    let fulfiller = Fulfiller::start("connector", "fulfil-token", Mode::Fulfill);
    let config = write_config(&dir, fulfiller.port, 1000, "", "");
    drop(start(&config));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("nodeId: acct", "nodeId: someone-else");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(process::BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("belongs to node \"acct\""), "{err}");
}

/// Four sender links on a two-shard node, 64 packets in flight on each (256), half of them
/// rejected by the receiver, against a maximum far below what is offered: the balance never
/// passes it and is exactly the sum of what the senders saw fulfilled.
#[test]
fn tight_limit_at_concurrency_256_on_two_shards() {
    const MAX: u64 = 5_000;
    const AMOUNT: u64 = 7;
    let dir = scratch("tight");
    let fulfiller = Fulfiller::start("connector", "fulfil-token", Mode::Fulfill);
    let config = write_config(&dir, fulfiller.port, MAX, "shards: 2", "");
    let node = start(&config);
    let port = node.btp_port;
    let senders: Vec<_> = (0..4)
        .map(|s| {
            std::thread::spawn(move || {
                run_local(move || async move {
                    let url = format!("btp+ws://sender:sender-token@127.0.0.1:{port}");
                    let link = std::rc::Rc::new(
                        SenderLink::connect(&url, "sender", "sender-token")
                            .await
                            .expect("sender connects"),
                    );
                    let tasks: Vec<_> = (0..64)
                        .map(|w| {
                            let link = link.clone();
                            glommio::spawn_local(async move {
                                let mut fulfilled = 0;
                                for i in 0..8 {
                                    let dest = if (w + i) % 2 == 0 {
                                        "test.receiver.delay-5"
                                    } else {
                                        "test.receiver.reject-F99.delay-5"
                                    };
                                    let data = format!("tight-{s}-{w}-{i}");
                                    if let Ok(Packet::Fulfill(_)) =
                                        link.send(dest, AMOUNT, 5_000, data.as_bytes()).await
                                    {
                                        fulfilled += 1;
                                    }
                                }
                                fulfilled
                            })
                        })
                        .collect();
                    let mut n = 0u64;
                    for t in tasks {
                        n += t.await;
                    }
                    n
                })
            })
        })
        .collect();
    let fulfilled: u64 = senders.into_iter().map(|t| t.join().unwrap()).sum();
    let a = account(&node, "sender");
    let balance: u64 = a["balance"].as_str().unwrap().parse().unwrap();
    assert_eq!(balance, fulfilled * AMOUNT, "{a}");
    assert!(balance <= MAX, "{a}");
    assert!(balance > MAX / 2, "the limit was not used: {a}");
    assert_eq!(
        (a["reservedIn"].as_str(), a["reservedOut"].as_str()),
        (Some("0"), Some("0"))
    );
}

/// Sends amount-1 Prepares at concurrency `c` until the link drops; returns how many the
/// sender saw fulfilled.
fn load_until_lost(port: u16, c: usize) -> u64 {
    run_local(move || async move {
        let url = format!("btp+ws://sender:sender-token@127.0.0.1:{port}");
        let Ok(s) = SenderLink::connect(&url, "sender", "sender-token").await else {
            return 0;
        };
        let s = std::rc::Rc::new(s);
        let fulfilled = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let tasks: Vec<_> = (0..c)
            .map(|w| {
                let (s, fulfilled) = (s.clone(), fulfilled.clone());
                glommio::spawn_local(async move {
                    for i in 0u64.. {
                        let data = format!("crash-{w}-{i}");
                        match s.send("test.receiver", 1, 5_000, data.as_bytes()).await {
                            Ok(Packet::Fulfill(_)) => fulfilled.set(fulfilled.get() + 1),
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        fulfilled.get()
    })
}

/// `kills` times: load at concurrency 16, `kill -9` at a random moment, restart on the same
/// journal. Strict durability: every recovered balance is at least what the sender saw
/// fulfilled and at most that plus what was in flight at the kill (16).
fn crash_loop(kills: usize) {
    const C: usize = 16;
    let dir = scratch(&format!("crash-{kills}"));
    let fulfiller = Fulfiller::start("connector", "fulfil-token", Mode::Fulfill);
    let config = write_config(&dir, fulfiller.port, 1_000_000_000, "", "");
    let balance = |node: &Proc| -> u64 {
        account(node, "sender")["balance"]
            .as_str()
            .and_then(|b| b.parse().ok())
            .expect("a balance")
    };
    // What the recovered balance must lie in after the previous kill.
    let (mut low, mut high) = (0u64, 0u64);
    let mut seed = std::process::id() as u64 | 1;
    for round in 0..=kills {
        let mut node = start(&config);
        let recovered = balance(&node);
        assert!(
            (low..=high).contains(&recovered),
            "round {round}: recovered {recovered}, expected {low}..={high}"
        );
        eprintln!(
            "round {round}: recovered {recovered} (sender saw {low}; {} more were in flight at the kill)",
            recovered - low
        );
        if round == kills {
            break;
        }
        let port = node.btp_port;
        let sender = std::thread::spawn(move || load_until_lost(port, C));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 250));
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        let seen = sender.join().unwrap();
        assert!(seen > 0, "round {round}: no load reached the node");
        (low, high) = (recovered + seen, recovered + seen + C as u64);
    }
}

#[test]
fn crash_loop_short() {
    crash_loop(3);
}

/// The long version (figures in bench/RESULTS.md): `cargo test --release --test accounts -- --ignored`.
#[test]
#[ignore]
fn crash_loop_25_kills() {
    crash_loop(25);
}
