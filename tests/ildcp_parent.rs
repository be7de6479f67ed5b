//! Issue 17: a node without `ilpAddress` learns its address (and asset) from its parent by
//! ILDCP, over real sockets: under our own node, while the parent is down at start, when the
//! parent later assigns another address, and under the reference JS connector.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::node::identity;
use ilp_connector::testkit::{metric, run_local, Fulfiller, Mode, SenderLink};

#[path = "support/reference.rs"]
mod reference;

fn start(yaml: &str) -> ConnectorNode {
    ilp_connector::admin::start_node(Config::from_yaml(yaml).unwrap()).unwrap()
}

fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < bound, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

/// `(code, triggeredBy)` of an answer, or `("fulfilled", "")`.
fn outcome(p: &Packet) -> (String, String) {
    match p {
        Packet::Fulfill(_) => ("fulfilled".into(), String::new()),
        Packet::Reject(r) => (
            r.code().as_str().into(),
            String::from_utf8_lossy(r.triggered_by()).into_owned(),
        ),
        Packet::Prepare(_) => ("prepare".into(), String::new()),
    }
}

/// What a child of the node at `port` (user `kid`, token `secret-kid`) is told by ILDCP.
fn ildcp_as_child(port: u16) -> identity::Own {
    let url = format!("ws://127.0.0.1:{port}");
    run_local(move || async move {
        let s = SenderLink::connect(&url, "kid", "secret-kid")
            .await
            .unwrap();
        identity::ask(&s.link, Duration::from_secs(5)).await
    })
    .unwrap()
}

fn b_yaml(address: &str, port: u16) -> String {
    format!(
        "nodeId: b\nilpAddress: {address}\nbtpServerPort: {port}\nrates: {{XRP: 0.5, USD: 1}}\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: c, relation: child, authToken: secret-bc, assetCode: USD, assetScale: 6}}\n"
    )
}

/// C: no address; B (at `b_port`) is its parent; `kid` and `receiver` are its children.
fn c_yaml(b_port: u16) -> String {
    format!(
        "nodeId: c\nbtpServerPort: 0\nhealthCheckPort: 0\nreconnectBackoffMs: [200]\npeers:\n  - {{id: b, relation: parent, url: \"ws://127.0.0.1:{b_port}\", authToken: secret-bc}}\n  - {{id: kid, relation: child, authToken: secret-kid}}\n  - {{id: receiver, relation: child, authToken: secret-r}}\n"
    )
}

#[test]
fn our_node_under_our_node_learns_its_address_and_forwards() {
    let b = start(&b_yaml("test.b", 0));
    let c = start(&c_yaml(b.btp_port()));
    wait_for("C to learn its address", Duration::from_secs(10), || {
        c.health().address.is_some()
    });
    let h = c.health();
    assert_eq!(h.address.as_deref(), Some("test.b.c"));
    assert_eq!(
        (h.asset_code.as_deref(), h.asset_scale),
        (Some("USD"), Some(6))
    );
    assert_eq!(h.address_mismatch, None);
    // C's children are built on the learned address, in C's (learned) asset.
    let kid = ildcp_as_child(c.btp_port());
    assert_eq!(kid.address.as_str(), "test.b.c.kid");
    assert_eq!((kid.asset_code.as_str(), kid.asset_scale), ("USD", 6));

    // A's child pays C's child: A → B → C (route test.b.c, a child of B) → receiver.
    let _receiver = Fulfiller::dial(
        &format!("ws://127.0.0.1:{}", c.btp_port()),
        "receiver",
        "secret-r",
        Mode::Fulfill,
    )
    .unwrap();
    let a = start(&format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: b, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-ab}}\nroutes:\n  - {{prefix: test.b, nextHop: b}}\n",
        b.btp_port()
    ));
    assert!(a.wait_ready(Duration::from_secs(10)));
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-s")
            .await
            .unwrap();
        s.send(
            "test.b.c.receiver.bob",
            10,
            20_000,
            b"to the child of a learning node",
        )
        .await
    })
    .unwrap();
    assert_eq!(outcome(&answer).0, "fulfilled", "{answer:?}");
    // Unknown destinations go up to the parent (the default route), which rejects them.
    let c_url = format!("ws://127.0.0.1:{}", c.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&c_url, "kid", "secret-kid")
            .await
            .unwrap();
        s.send("test.elsewhere.x", 1, 20_000, b"up").await
    })
    .unwrap();
    assert_eq!(outcome(&answer), ("F02".into(), "test.b".into()));
}

/// The parent is down when C starts: C says `starting` and answers T01 (with no made-up
/// address); once the parent is up, C is ready within one backoff step. Then the parent comes
/// back with another address: C keeps its own and reports the mismatch.
#[test]
fn parent_down_at_start_then_up_then_renumbered() {
    let b_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = start(&c_yaml(b_port));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.health().status, "starting");
    assert_eq!(c.health().address, None);
    assert_eq!(metric(&c, "ilp_address_known"), 0);
    let c_url = format!("ws://127.0.0.1:{}", c.btp_port());
    let u = c_url.clone();
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&u, "kid", "secret-kid").await.unwrap();
        s.send("test.b.c.receiver.x", 1, 20_000, b"too early").await
    })
    .unwrap();
    assert_eq!(outcome(&answer), ("T01".into(), String::new()));

    let mut b = start(&b_yaml("test.b", b_port));
    // One backoff step (200 ms) to dial, then the ILDCP round trip.
    let took = wait_for("C to become ready", Duration::from_secs(5), || {
        c.health().status == "ready"
    });
    assert!(took < Duration::from_millis(1500), "ready after {took:?}");
    assert_eq!(c.health().address.as_deref(), Some("test.b.c"));
    assert_eq!(metric(&c, "ilp_address_known"), 1);

    // The parent restarts with another address: C keeps test.b.c and says so.
    b.stop();
    drop(b);
    let _b2 = start(&b_yaml("test.x", b_port));
    wait_for("C to see the new address", Duration::from_secs(10), || {
        c.health().address_mismatch.is_some()
    });
    let h = c.health();
    assert_eq!(h.address.as_deref(), Some("test.b.c"));
    assert_eq!(h.address_mismatch.as_deref(), Some("test.x.c"));
    assert_eq!(metric(&c, "ilp_ildcp_address_mismatch"), 1);
    assert_eq!(
        ildcp_as_child(c.btp_port()).address.as_str(),
        "test.b.c.kid"
    );
}

/// Our node as a child of the reference JS connector (npm ilp-connector 23.0.2): it learns
/// `test.jsp.ours` and the JS connector's other child pays our child.
#[test]
fn our_node_under_the_reference_js_connector() {
    let rate = r#"{"refillPeriod":1000,"refillCount":100000000,"capacity":100000000}"#;
    let config = format!(
        r#"{{"ilpAddress":"test.jsp","accounts":{{
          "ours":{{"relation":"child","assetCode":"EUR","assetScale":4,"plugin":"ilp-plugin-btp","rateLimit":{rate},
               "options":{{"listener":{{"port":0,"secret":"secret-ours"}}}}}},
          "alice":{{"relation":"child","assetCode":"EUR","assetScale":4,"plugin":"ilp-plugin-btp","rateLimit":{rate},
               "options":{{"listener":{{"port":0,"secret":"secret-alice"}}}}}}}}}}"#
    );
    let (_js, rx) = reference::node_script("connector.js", &[&config]);
    let mut ports = HashMap::new();
    while ports.len() < 2 {
        let line = reference::next_line(&rx, "the JS connector's listening ports");
        if let (Some(id), Some(port)) = (line["listening"].as_str(), line["port"].as_u64()) {
            ports.insert(id.to_owned(), port);
        }
    }
    let node = start(&format!(
        "nodeId: ours\nbtpServerPort: 0\npeers:\n  - {{id: js, relation: parent, url: \"ws://127.0.0.1:{}\", authToken: secret-ours}}\n  - {{id: receiver, relation: child, authToken: secret-r}}\n",
        ports["ours"]
    ));
    wait_for(
        "the address from the JS parent",
        Duration::from_secs(15),
        || node.health().address.is_some(),
    );
    let h = node.health();
    assert_eq!(h.address.as_deref(), Some("test.jsp.ours"));
    assert_eq!(
        (h.asset_code.as_deref(), h.asset_scale),
        (Some("EUR"), Some(4))
    );
    let _receiver = Fulfiller::dial(
        &format!("ws://127.0.0.1:{}", node.btp_port()),
        "receiver",
        "secret-r",
        Mode::Fulfill,
    )
    .unwrap();
    let url = format!("ws://127.0.0.1:{}", ports["alice"]);
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&url, "alice", "secret-alice")
            .await
            .unwrap();
        s.send(
            "test.jsp.ours.receiver.bob",
            100,
            20_000,
            b"from a JS child",
        )
        .await
    })
    .unwrap();
    assert_eq!(outcome(&answer).0, "fulfilled", "{answer:?}");
}
