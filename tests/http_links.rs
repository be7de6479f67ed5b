//! ILP-over-HTTP links between our nodes: sender —BTP→ A —HTTP→ B —BTP→ fulfiller. Fulfils,
//! passes Rejects through, maps a wrong token (401) to T00 and a peer that is down to T01;
//! B's HTTP server answers a body that is not a Prepare with 200 + F01 (as the JS plugin),
//! a bad token with 401, an oversized body with 413, and GET with 200.

use std::time::Duration;

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{metric, outcome, run_local, Fulfiller, Mode, SenderLink};

fn start(yaml: &str) -> ConnectorNode {
    let node = ilp_connector::admin::start_node(Config::from_yaml(yaml).unwrap()).unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)));
    node
}

/// A dialling B over HTTP at `url` with `token`.
fn a_yaml(url: &str, token: &str) -> String {
    format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\nreadyTimeoutMs: 100\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: b, relation: peer, url: \"{url}\", authToken: {token}}}\nroutes:\n  - {{prefix: test.b, nextHop: b}}\n"
    )
}

/// Sends from A's child `sender`: "fulfilled", or the Reject's code and triggeredBy.
fn send(a: &ConnectorNode, destination: &str, count: usize) -> Vec<String> {
    let (port, destination) = (a.btp_port(), destination.to_owned());
    run_local(move || async move {
        let url = format!("btp+ws://sender:secret-sa@127.0.0.1:{port}");
        let s = SenderLink::connect(&url, "sender", "secret-sa")
            .await
            .unwrap();
        let mut out = Vec::new();
        for i in 0..count {
            let data = format!("http-{i}");
            out.push(outcome(
                &s.send(&destination, 10, 10_000, data.as_bytes())
                    .await
                    .unwrap(),
            ));
        }
        out
    })
}

#[test]
fn our_nodes_over_http() {
    let fulfiller = Fulfiller::start("b", "secret-bk", Mode::Fulfill);
    let b = start(&format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: 0\nhttpIdleTimeoutMs: 300\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: kid, relation: child, url: \"{}\", authToken: secret-bk}}\n",
        fulfiller.url()
    ));
    let http = b.http_port().expect("B serves HTTP");
    let url = format!("http://127.0.0.1:{http}/accounts/a/ilp");
    let a = start(&a_yaml(&url, "secret-ab"));
    // Fulfilled end to end, many times over the same keep-alive connections.
    let answers = send(&a, "test.b.kid.x", 200);
    assert!(answers.iter().all(|a| a == "fulfilled"), "{answers:?}");
    // A request answered later than the idle timeout keeps its connection (it is busy).
    assert_eq!(send(&a, "test.b.kid.delay-800", 1), ["fulfilled"]);
    // A Reject comes back unchanged in the 200 body.
    assert_eq!(send(&a, "test.b.kid.reject-F99", 1), ["F99 test.fulfiller"]);
    // No route at B: B's own F02, passed through.
    assert_eq!(send(&a, "test.b.nobody", 1), ["F02 test.b"]);

    // A with the wrong token: B answers 401, A makes it T00 (retryable).
    let wrong = start(&a_yaml(&url, "not-the-token"));
    let got = send(&wrong, "test.b.kid.x", 1);
    assert!(got[0].starts_with("T00 test.a"), "{got:?}");
    // B is down (nothing listens there): T01 from A.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let lonely = start(&a_yaml(&dead, "secret-ab"));
    let got = send(&lonely, "test.b.kid.x", 1);
    assert!(got[0].starts_with("T01 test.a"), "{got:?}");

    // B's server, spoken to directly.
    let post = |token: Option<&str>, body: &[u8]| {
        let mut req = ureq::post(&format!("http://127.0.0.1:{http}/"))
            .timeout(Duration::from_secs(5))
            .set("Content-Type", "application/octet-stream");
        if let Some(t) = token {
            req = req.set("Authorization", t);
        }
        match req.send_bytes(body) {
            Ok(r) => {
                let status = r.status();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
                (status, bytes)
            }
            Err(ureq::Error::Status(s, _)) => (s, Vec::new()),
            Err(e) => panic!("{e}"),
        }
    };
    let (status, body) = post(Some("Bearer secret-ab"), b"not a prepare");
    assert_eq!(status, 200);
    let Ok(Packet::Reject(r)) = Packet::decode(bytes::Bytes::from(body)) else {
        panic!("expected a Reject")
    };
    assert_eq!(r.code().as_str(), "F01");
    // The bare token is accepted too (as the JS plugin does).
    assert_eq!(post(Some("secret-ab"), b"x").0, 200);
    assert_eq!(post(Some("Bearer wrong"), b"x").0, 401);
    assert_eq!(post(None, b"x").0, 401);
    assert_eq!(post(Some("Bearer secret-ab"), &vec![0u8; 40_000]).0, 413);
    let get = ureq::get(&format!("http://127.0.0.1:{http}/"))
        .call()
        .unwrap();
    assert_eq!(get.status(), 200);
    // A client that stalls halfway through its headers is closed after the idle timeout.
    use std::io::{Read, Write};
    let mut half = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    half.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = std::time::Instant::now();
    let n = half
        .read(&mut [0u8; 64])
        .expect("closed by the server (a read timeout means it was not)");
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

/// HTTP/2 with prior knowledge (h2c): A keeps one connection to B and multiplexes 64
/// requests at a time on it; B's server tells it from HTTP/1.1 by the preface.
#[test]
fn our_nodes_over_h2c() {
    let fulfiller = Fulfiller::start("b", "secret-bk", Mode::Fulfill);
    let b = start(&format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: 0\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: kid, relation: child, url: \"{}\", authToken: secret-bk}}\n",
        fulfiller.url()
    ));
    let http = b.http_port().unwrap();
    let a = start(&format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\nhealthCheckPort: 0\nreadyTimeoutMs: 100\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: b, relation: peer, url: \"http://127.0.0.1:{http}/\", authToken: secret-ab, http2: true}}\nroutes:\n  - {{prefix: test.b, nextHop: b}}\n"
    ));
    let port = a.btp_port();
    let fulfilled = run_local(move || async move {
        let url = format!("btp+ws://sender:secret-sa@127.0.0.1:{port}");
        let s = std::rc::Rc::new(
            SenderLink::connect(&url, "sender", "secret-sa")
                .await
                .unwrap(),
        );
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    let mut n = 0;
                    for i in 0..5 {
                        let data = format!("h2-{t}-{i}");
                        if let Ok(Packet::Fulfill(_)) =
                            s.send("test.b.kid.x", 1, 10_000, data.as_bytes()).await
                        {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await;
        }
        n
    });
    assert_eq!(fulfilled, 320);
    assert_eq!(
        metric(&a, "ilp_http_connections_opened_total "),
        1,
        "one HTTP/2 connection for 64 at a time"
    );
}
