//! The operator's tools as separate processes: `receive --listen` dialled by a node, with the
//! destination hooks; `send` against a bad URL and a wrong token (clear error, non-zero exit,
//! nothing on stdout).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::testkit::{run_local, SenderLink};

const BIN: &str = env!("CARGO_BIN_EXE_ilp-connector");

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn receive_listens_for_a_node_and_honours_the_hooks() {
    let mut child = Command::new(BIN)
        .args([
            "receive", "--listen", "0", "--user", "n", "--token", "secret-r",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _receiver = Reaped(child);
    let port: u16 = line
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let node = ilp_connector::admin::start_node(
        Config::from_yaml(&format!(
            "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: r, relation: child, url: \"ws://127.0.0.1:{port}\", authToken: secret-r}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)));
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let (plain, rejected, delayed) = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-s")
            .await
            .unwrap();
        let plain = s.send("test.n.r.alice", 5, 20_000, b"hello").await.unwrap();
        let rejected = s
            .send("test.n.r.reject-T04.x", 5, 20_000, b"no")
            .await
            .unwrap();
        let t = Instant::now();
        let delayed = s
            .send("test.n.r.delay-300.x", 5, 20_000, b"later")
            .await
            .unwrap();
        (plain, rejected, (delayed, t.elapsed()))
    });
    assert!(matches!(plain, Packet::Fulfill(_)), "{plain:?}");
    match rejected {
        Packet::Reject(r) => assert_eq!(r.code().as_str(), "T04"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(delayed.0, Packet::Fulfill(_)), "{:?}", delayed.0);
    assert!(delayed.1 >= Duration::from_millis(300), "{:?}", delayed.1);
}

#[test]
fn send_fails_clearly_on_a_bad_url_or_token() {
    let node = ilp_connector::admin::start_node(
        Config::from_yaml(
            "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
        )
        .unwrap(),
    )
    .unwrap();
    let wrong = format!("btp+ws://sender:wrong@127.0.0.1:{}", node.btp_port());
    for (url, code, says) in [
        ("http://nowhere", 2, "unsupported url scheme"),
        (wrong.as_str(), 1, "authentication failed"),
    ] {
        let out = Command::new(BIN)
            .args(["send", "--url", url, "--destination", "test.n.x"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("wrong@"), "the token leaked: {err}");
        assert!(out.stdout.is_empty(), "{url}: stdout {:?}", out.stdout);
    }
}
