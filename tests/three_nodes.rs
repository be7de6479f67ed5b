//! Three connectors A → B → C in one process, real sockets on 127.0.0.1, free ports:
//! the sender dials A; A dials B; B dials C; C dials the fulfiller.

use std::time::{Duration, Instant};

use ilp_connector::codec::{ErrorCode, Packet};
use ilp_connector::testkit::{run_local, Mode, ThreeNodes};

fn net(mode: Mode, c_send_timeout_ms: u64) -> ThreeNodes {
    ThreeNodes::start(mode, c_send_timeout_ms).unwrap()
}

fn reject_code(p: &Packet) -> Option<(String, String)> {
    match p {
        Packet::Reject(r) => Some((
            r.code().as_str().to_owned(),
            String::from_utf8_lossy(r.triggered_by()).into_owned(),
        )),
        _ => None,
    }
}

#[test]
fn fulfill_and_rejects_through_three_hops() {
    let n = net(Mode::Fulfill, 10_000);
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        // Fulfilled end to end.
        let p = s
            .send("test.c.receiver.x", 100, 30_000, b"hello")
            .await
            .unwrap();
        assert!(matches!(p, Packet::Fulfill(_)), "{p:?}");
        // Unknown destination: F02 from A.
        let p = s.send("test.zzz", 1, 30_000, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("F02".into(), "test.a".into())));
        // Too little time for A's margin: R02 from A.
        let p = s.send("test.c.receiver.x", 1, 1_500, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("R02".into(), "test.a".into())));
        // Already expired: R00 from A.
        let p = s.send("test.c.receiver.x", 1, -1_000, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("R00".into(), "test.a".into())));
        // No route at C for test.c.other: F02 from C, passed through unchanged.
        let p = s.send("test.c.other", 1, 30_000, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("F02".into(), "test.c".into())));
        // ILDCP: the sender is A's child.
        let ildcp = hex::decode("0c460000000000000000323033303036313630303031303030303066687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f29250b706565722e636f6e66696700").unwrap();
        let p = s.send_raw(&ildcp).await.unwrap();
        let Packet::Fulfill(f) = p else {
            panic!("ILDCP answer {p:?}")
        };
        let r = ilp_connector::codec::ildcp::IldcpResponse::decode(f.data()).unwrap();
        assert_eq!(r.client_address, b"test.a.sender");
    });
    // Health and metrics on A's admin port.
    let port = n.a.admin_port().unwrap();
    let (status, health) = http_get(port, "/health");
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"status\":\"ready\""), "{health}");
    assert!(health.contains("\"connector-b\":true"), "{health}");
    let (_, metrics) = http_get(port, "/metrics");
    assert!(
        metrics.contains("ilp_packets_total{outcome=\"fulfilled\",code=\"\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outcome=\"rejected\",code=\"F02\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ilp_peer_links{peer=\"connector-b\",shard=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ilp_packet_latency_seconds_count 6"),
        "{metrics}"
    );
    drop(n);
}

#[test]
fn wrong_fulfillment_is_f05() {
    let n = net(Mode::WrongFulfillment, 10_000);
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        let p = s.send("test.c.receiver.x", 1, 30_000, b"x").await.unwrap();
        // C detects it first and answers F05; A and B pass C's Reject through.
        assert_eq!(reject_code(&p), Some(("F05".into(), "test.c".into())));
    });
    drop(n);
}

#[test]
fn silent_fulfiller_times_out() {
    // C's send deadline (300 ms) caps the expiry it forwards, so it gives up when that
    // passes: R00 from C, long before the sender's expiry.
    let n = net(Mode::Silent, 300);
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        let t = Instant::now();
        let p = s.send("test.c.receiver.x", 1, 30_000, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("R00".into(), "test.c".into())));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    });
    drop(n);
    // Expiry passes while C waits (send deadline 10 s): R00 from C at the expiry it forwarded.
    let n = net(Mode::Silent, 10_000);
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        let t = Instant::now();
        // 4.5 s: A forwards with 3.5 s, B with 2.5 s, C with 1.5 s.
        let p = s.send("test.c.receiver.x", 1, 4_500, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("R00".into(), "test.c".into())));
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    });
    drop(n);
}

#[test]
fn next_hop_lost_is_t01_and_reconnects() {
    let mut n = net(Mode::Silent, 10_000);
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    let b_port = n.b.btp_port();
    // Stop B while a packet is in flight through it.
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        run_local(move || async move {
            let s = ThreeNodes::connect_sender(&url).await.unwrap();
            let _ = tx.send(());
            let t = Instant::now();
            let p = s.send("test.c.receiver.x", 1, 30_000, b"x").await.unwrap();
            (reject_code(&p), t.elapsed())
        })
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // In flight at C (waiting on the silent fulfiller), so through B.
    let until = Instant::now() + Duration::from_secs(10);
    while n.c.in_flight() == 0 {
        assert!(Instant::now() < until, "the packet never reached C");
        std::thread::sleep(Duration::from_millis(5));
    }
    n.b.stop();
    // B drains: after its drain timeout it answers what is still in flight (T01) before it
    // closes its links.
    let (code, elapsed) = sender.join().unwrap();
    assert_eq!(code, Some(("T01".into(), "test.b".into())));
    assert!(
        elapsed < Duration::from_secs(8),
        "well before the 10 s deadline: {elapsed:?}"
    );

    // With B down, A answers T01 at once.
    let url = format!("ws://127.0.0.1:{}", n.a.btp_port());
    let url2 = url.clone();
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url2).await.unwrap();
        let p = s.send("test.b.x", 1, 30_000, b"x").await.unwrap();
        assert_eq!(reject_code(&p), Some(("T01".into(), "test.a".into())));
    });

    // Restart B on the same port: A reconnects and packets flow again.
    n.restart_b(b_port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n.a.health().peers["connector-b"] {
        assert!(Instant::now() < deadline, "A did not reconnect to B");
        std::thread::sleep(Duration::from_millis(20));
    }
    run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        let p = s.send("test.b.x", 1, 30_000, b"x").await.unwrap();
        // B has no route for test.b.x: its F02 proves the packet got there.
        assert_eq!(reject_code(&p), Some(("F02".into(), "test.b".into())));
    });
    drop(n);
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[test]
fn codes_used_are_rfc_codes() {
    for c in ["F02", "F05", "R00", "R02", "T00", "T01"] {
        assert!(ErrorCode::ALL.iter().any(|k| k.as_str() == c));
    }
}
