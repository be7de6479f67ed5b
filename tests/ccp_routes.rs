//! The route protocol between our own nodes: A — B — C as peers with **no static routes**.
//! A sender child of A reaches a fulfiller child of C once the routes have spread; B killed
//! and restarted → what went through it is withdrawn at A (F02 from A), then learned again
//! and traffic resumes; C's child removed at runtime → A learns the withdrawal.

use std::time::{Duration, Instant};

use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{admin_text, metric, outcome, run_local, Fulfiller, Mode, SenderLink};

fn start(yaml: &str) -> ConnectorNode {
    let node = ilp_connector::admin::start_node(Config::from_yaml(yaml).unwrap()).unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)));
    node
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next hop `node` routes `destination` to, if any.
fn next_hop(node: &ConnectorNode, destination: &str) -> Option<String> {
    let t = node.routing_table().snapshot();
    t.lookup(destination.as_bytes())
        .map(|r| r.next_hop().to_owned())
}

/// Sends one Prepare from A's child `sender`; "fulfilled" or the Reject's code and triggeredBy.
fn send(a_port: u16, destination: &str) -> String {
    let destination = destination.to_owned();
    run_local(move || async move {
        let url = format!("btp+ws://sender:secret-sa@127.0.0.1:{a_port}");
        let s = SenderLink::connect(&url, "sender", "secret-sa")
            .await
            .unwrap();
        outcome(&s.send(&destination, 10, 20_000, b"ccp").await.unwrap())
    })
}

fn b_yaml(b_port: u16, c_port: u16) -> String {
    format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: {b_port}\nreconnectBackoffMs: [100]\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: c, relation: peer, url: \"ws://127.0.0.1:{c_port}\", authToken: secret-bc}}\n"
    )
}

#[test]
fn three_nodes_without_static_routes() {
    let fulfiller = Fulfiller::start("c", "secret-cr", Mode::Fulfill);
    let c = start(&format!(
        "nodeId: c\nilpAddress: test.c\nbtpServerPort: 0\npeers:\n  - {{id: b, relation: peer, authToken: secret-bc}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-cr}}\n",
        fulfiller.url()
    ));
    let b = start(&b_yaml(0, c.btp_port()));
    let b_port = b.btp_port();
    let a = start(&format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\nhealthCheckPort: 0\nreconnectBackoffMs: [100]\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: b, relation: peer, url: \"ws://127.0.0.1:{b_port}\", authToken: secret-ab}}\n"
    ));
    // C's child and C itself reach A through B (C → B → A).
    wait_for("A to learn test.c.receiver", || {
        next_hop(&a, "test.c.receiver.x").as_deref() == Some("b")
    });
    assert_eq!(next_hop(&a, "test.c").as_deref(), Some("b"));
    // And the reverse: C learned A's children through B.
    wait_for("C to learn test.a", || {
        next_hop(&c, "test.a.sender").as_deref() == Some("b")
    });
    assert_eq!(send(a.btp_port(), "test.c.receiver.x"), "fulfilled");
    // /routes says where each route came from.
    let routes: serde_json::Value = serde_json::from_str(&admin_text(&a, "/routes")).unwrap();
    let learned = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == "test.c.receiver")
        .unwrap_or_else(|| panic!("{routes}"));
    assert_eq!(learned["origin"], "learned", "{routes}");
    let counter = |name: &str| metric(&a, name);
    assert!(counter("ilp_ccp_updates_received_total ") >= 1);
    assert!(counter("ilp_ccp_controls_sent_total ") >= 1);
    assert!(counter("ilp_routes_learned ") >= 3);
    assert_eq!(
        learned["path"],
        serde_json::json!(["test.b", "test.c"]),
        "{routes}"
    );

    // B goes away: A withdraws everything learned through it and refuses at once.
    drop(b);
    wait_for("A to drop the routes through B", || {
        next_hop(&a, "test.c.receiver.x").is_none()
    });
    let answer = send(a.btp_port(), "test.c.receiver.x");
    assert_eq!(answer, "F02 test.a");
    // B is back on the same port: routes learned again, traffic resumes.
    let b = start(&b_yaml(b_port, c.btp_port()));
    wait_for("A to learn test.c.receiver again", || {
        next_hop(&a, "test.c.receiver.x").as_deref() == Some("b")
    });
    assert_eq!(send(a.btp_port(), "test.c.receiver.x"), "fulfilled");

    // C's child is removed: the withdrawal reaches A (test.c itself stays).
    c.remove_peer("receiver").unwrap();
    wait_for("A to learn the withdrawal", || {
        next_hop(&a, "test.c.receiver.x").as_deref() != Some("b")
            || a.routing_table()
                .snapshot()
                .routes()
                .iter()
                .all(|r| r.prefix() != "test.c.receiver")
    });
    assert!(a
        .routing_table()
        .snapshot()
        .routes()
        .iter()
        .all(|r| r.prefix() != "test.c.receiver"));
    assert_eq!(next_hop(&a, "test.c").as_deref(), Some("b"));
    // The packet now goes by test.c to C, which has no route for it any more.
    assert_eq!(send(a.btp_port(), "test.c.receiver.x"), "F02 test.c");
    drop(b);
}
