//! The built binary, run three times with the shipped `configs/` (a, b, c): packets flow end
//! to end across three processes, every process logs the packet's correlation id, and
//! SIGTERM stops each one cleanly. Ports: the configs' fixed ports are swapped for free ones
//! (`BTP_SERVER_PORT=0`, `healthCheckPort: 0`, the dialled URLs rewritten), nothing else.
//! Also: a bad config gets a one-line error and exit code 2.

use std::path::PathBuf;
use std::process::Command;

use ilp_connector::codec::Packet;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

#[path = "support/process.rs"]
mod process;
use process::{stop, wait_for, Proc, BIN};

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ilp-multi-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the binary on `configs/<name>.yaml` with `edits` applied to the text.
fn spawn(name: &str, edits: &[(&str, String)]) -> Proc {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.yaml"));
    let mut text = std::fs::read_to_string(&src).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{name}.yaml has no {from:?}");
        text = text.replace(from, to);
    }
    let path = scratch_dir().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    process::start(&path, &[("BTP_SERVER_PORT", "0"), ("LOG_LEVEL", "debug")])
}

fn health(admin_port: u16) -> Option<serde_json::Value> {
    process::admin_get(admin_port, "/health")
}

#[test]
fn three_processes_from_configs() {
    let c = spawn(
        "c",
        &[("healthCheckPort: 8083", "healthCheckPort: 0".into())],
    );
    let c_url = format!("ws://127.0.0.1:{}", c.btp_port);
    let _receiver = Fulfiller::dial(&c_url, "receiver", "secret-cr", Mode::Fulfill).unwrap();
    let b = spawn(
        "b",
        &[
            ("healthCheckPort: 8082", "healthCheckPort: 0".into()),
            ("ws://127.0.0.1:3003", c_url.clone()),
        ],
    );
    let a = spawn(
        "a",
        &[
            ("healthCheckPort: 8081", "healthCheckPort: 0".into()),
            (
                "ws://127.0.0.1:3002",
                format!("ws://127.0.0.1:{}", b.btp_port),
            ),
        ],
    );
    for (p, name, peer) in [(&a, "A", "connector-b"), (&b, "B", "connector-c")] {
        wait_for(&format!("{name} linked to {peer}"), || {
            health(p.admin_port).is_some_and(|h| h["status"] == "ready" && h["peers"][peer] == true)
        });
    }
    wait_for("C sees B and the receiver", || {
        health(c.admin_port)
            .is_some_and(|h| h["peers"]["receiver"] == true && h["peers"]["connector-b"] == true)
    });

    let url = format!("ws://127.0.0.1:{}", a.btp_port);
    let outcomes = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-sa")
            .await
            .unwrap();
        let mut fulfilled = 0;
        for i in 0u32..200 {
            if let Packet::Fulfill(_) = s
                .send("test.c.receiver.multi", 1, 30_000, &i.to_be_bytes())
                .await
                .unwrap()
            {
                fulfilled += 1;
            }
        }
        fulfilled
    });
    assert_eq!(outcomes, 200);

    // The first packet's correlation id, from A's log, is in B's and C's logs too.
    let a_log = a.stderr.lock().unwrap().clone();
    let cid = a_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["event"] == "packet_received")
        .and_then(|l| l["correlationId"].as_str().map(str::to_owned))
        .expect("A logged packet_received with a correlationId");
    for (p, name) in [(&b, "B"), (&c, "C")] {
        assert!(
            p.stderr
                .lock()
                .unwrap()
                .contains(&format!("\"correlationId\":\"{cid}\"")),
            "{name}'s log lacks correlation id {cid}"
        );
    }
    for (p, name) in [(a, "A"), (b, "B"), (c, "C")] {
        assert!(
            !p.stderr.lock().unwrap().contains("secret-"),
            "{name} logged a secret"
        );
        stop(p, name);
    }
}

#[test]
fn bad_config_is_one_line_and_exit_2() {
    let path = scratch_dir().join("bad.yaml");
    std::fs::write(&path, "nodeId: x\nilpAddress: test.x\nbtpServerPrt: 3000\n").unwrap();
    for args in [vec!["check-config"], vec!["run", "--config"]] {
        let out = Command::new(BIN).args(&args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("btpServerPrt") && err.contains("line"),
            "{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

/// README's run command: `demo` starts the network, prints one packet's path across the three
/// hops and a latency summary, and every packet is fulfilled.
#[test]
fn demo_prints_the_path_and_fulfils_everything() {
    let out = Command::new(BIN)
        .args(["demo", "--packets", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("200 fulfilled, 0 rejected"), "{text}");
    assert!(
        text.contains("one packet across the hops, correlationId "),
        "{text}"
    );
    for node in ["connector-a", "connector-b", "connector-c"] {
        for event in ["packet_received", "packet_forwarded", "packet_response"] {
            assert!(
                text.lines().any(|l| l.contains(node) && l.contains(event)),
                "no {event} of {node} in the path: {text}"
            );
        }
    }
    assert!(text.contains("answer at the sender: fulfilled"), "{text}");
    assert!(text.contains("round-trip latency over 3 hops"), "{text}");
}

#[test]
fn second_process_on_the_same_port_exits_2() {
    let c = spawn(
        "c",
        &[("healthCheckPort: 8083", "healthCheckPort: 0".into())],
    );
    // The same config with the port the first one got, explicitly.
    let path = scratch_dir().join("c-same-port.yaml");
    let text = std::fs::read_to_string(scratch_dir().join("c.yaml")).unwrap();
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("BTP_SERVER_PORT", c.btp_port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another node"), "{stderr}");
    stop(c, "C");
}

/// Links `peer` has to the node, summed over its shards (from `/peers`).
fn links_of(admin_port: u16, peer: &str) -> u64 {
    process::admin_get(admin_port, "/peers")
        .and_then(|peers| {
            peers.as_array()?.iter().find(|p| p["id"] == peer).map(|p| {
                p["linksPerShard"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_u64())
                    .sum()
            })
        })
        .unwrap_or(0)
}

/// Voluntary context switches of the process's `ilp-shard-*` threads so far.
fn shard_wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("ilp-shard") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// An idle node polls nothing: with two shards and 31 live links, its shard threads wake a
/// few times a second (one keep-alive sweep per shard, the idle deadline driver), not the
/// ~150 times a second the 20 ms watchers cost before, nor once per link per second.
#[test]
fn idle_shards_do_not_poll() {
    let f = Fulfiller::start("n", "secret-r", Mode::Fulfill);
    let path = scratch_dir().join("idle.yaml");
    std::fs::write(
        &path,
        format!(
            "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\nshards: 2\nmaxConnectionsPerPeer: 64\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
            f.url()
        ),
    )
    .unwrap();
    let node = process::start(&path, &[]);
    wait_for("the link to the receiver", || {
        links_of(node.admin_port, "receiver") > 0
    });
    // 30 idle links from the sender, held open until the measurement is done.
    let (url, (done_tx, done_rx)) = (
        format!("ws://127.0.0.1:{}", node.btp_port),
        std::sync::mpsc::channel::<()>(),
    );
    let holder = std::thread::spawn(move || {
        run_local(move || async move {
            let mut links = Vec::new();
            for _ in 0..30 {
                links.push(
                    SenderLink::connect(&url, "sender", "secret-s")
                        .await
                        .unwrap(),
                );
            }
            // Until told, or until the test has gone (its sender dropped).
            while matches!(
                done_rx.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Empty)
            ) {
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
            drop(links);
        })
    });
    wait_for("30 links from the sender", || {
        links_of(node.admin_port, "sender") == 30
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = node.child.id();
    let before = shard_wakeups(pid);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let woke = shard_wakeups(pid) - before;
    let _ = done_tx.send(());
    holder.join().unwrap();
    assert!(
        woke <= 20,
        "two idle shards with 31 links woke {woke} times in 2 s"
    );
    stop(node, "n");
}
