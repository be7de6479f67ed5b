//! Interop with the reference implementation: npm `ilp-plugin-btp` 1.5.0 (pinned by
//! `tests/interop/package-lock.json`) against our server and our client, over real sockets.
//!
//! The scripts run through `support/reference.rs` (which installs the packages if needed).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{outcome, run_local, Fulfiller, Mode, SenderLink};

#[path = "support/reference.rs"]
mod reference;
use reference::{next_line, node_script, Reaped};

#[test]
fn reference_client_against_our_server() {
    let f = Fulfiller::start("connector-a", "secret-ar", Mode::Fulfill);
    let a = ilp_connector::admin::start_node(
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

/// Starts the reference listener (`listener.js`) and our node dialling it as peer `js`, with
/// `extra` appended to the node's top-level YAML; returns once the link is authenticated.
fn node_dialling_reference_listener(
    extra: &str,
) -> (Reaped, mpsc::Receiver<serde_json::Value>, ConnectorNode) {
    let (child, rx) = node_script("listener.js", &["secret-js"]);
    let port = next_line(&rx, "listening port")["port"]
        .as_u64()
        .expect("port") as u16;
    let node = ilp_connector::admin::start_node(
        Config::from_yaml(&format!(
            "nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\n{extra}peers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: js, relation: peer, url: \"ws://127.0.0.1:{port}\", authToken: secret-js}}\nroutes:\n  - {{prefix: test.js, nextHop: js}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    wait_peer_up(&node, "js");
    (child, rx, node)
}

/// Starts the reference JS connector at `address` with `routes` (a JSON array) and accounts
/// `(id, relation, plugin options as JSON)`, each XRP/9 over ilp-plugin-btp (ilp-plugin-http
/// when the options have `incoming`) with a rate limit
/// too high to matter; returns it and its output lines.
fn js_connector(
    address: &str,
    routes: &str,
    accounts: &[(&str, &str, String)],
) -> (Reaped, mpsc::Receiver<serde_json::Value>) {
    let rate = r#"{"refillPeriod":1000,"refillCount":100000000,"capacity":100000000}"#;
    let accounts: Vec<String> = accounts
        .iter()
        .map(|(id, relation, options)| {
            // ilp-plugin-http options have `incoming`/`outgoing`; the rest are BTP.
            let plugin = if options.contains("\"incoming\"") {
                "ilp-plugin-http"
            } else {
                "ilp-plugin-btp"
            };
            format!(
                r#""{id}":{{"relation":"{relation}","assetCode":"XRP","assetScale":9,"plugin":"{plugin}","rateLimit":{rate},"options":{options}}}"#
            )
        })
        .collect();
    let config = format!(
        r#"{{"ilpAddress":"{address}","routes":{routes},"accounts":{{{}}}}}"#,
        accounts.join(",")
    );
    node_script("connector.js", &[&config])
}

/// JS connector C (`test.jsc`): listens for our B as peer `b`, dials the fulfiller as its
/// child `receiver`. Returns it and its listening port.
fn js_c(fulfiller_port: u16, routes: &str) -> (Reaped, u64) {
    let (c, rx) = js_connector(
        "test.jsc",
        routes,
        &[
            (
                "b",
                "peer",
                r#"{"listener":{"port":0,"secret":"secret-bc"}}"#.into(),
            ),
            (
                "receiver",
                "child",
                format!(r#"{{"server":"btp+ws://jsc:secret-r@127.0.0.1:{fulfiller_port}"}}"#),
            ),
        ],
    );
    let port = next_line(&rx, "C's listening port")["port"]
        .as_u64()
        .expect("port");
    (c, port)
}

/// JS connector A (`test.jsa`): listens for the sender as child `sender`, dials our B (at
/// `b_port`) as peer `b`. Returns it and its listening port.
fn js_a(b_account: String, routes: &str) -> (Reaped, u64) {
    let (a, rx) = js_connector(
        "test.jsa",
        routes,
        &[
            (
                "sender",
                "child",
                r#"{"listener":{"port":0,"secret":"secret-sa"}}"#.into(),
            ),
            ("b", "peer", b_account),
        ],
    );
    let port = next_line(&rx, "A's listening port")["port"]
        .as_u64()
        .expect("port");
    (a, port)
}

/// The options of JS A's account `b` when it dials our node B over BTP.
fn btp_to_b(b_port: u16) -> String {
    format!(r#"{{"server":"btp+ws://jsa:secret-ab@127.0.0.1:{b_port}"}}"#)
}

fn wait_peer_up(node: &ConnectorNode, peer: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while !node.health().peers[peer] {
        assert!(Instant::now() < until, "peer {peer} never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samples how many links `node` has to `peer` (over all shards) every 5 ms until stopped;
/// [`LinkWatcher::stop`] returns the least and the most seen.
struct LinkWatcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl LinkWatcher {
    fn start(node: &Arc<ConnectorNode>, peer: &'static str) -> LinkWatcher {
        let (node, stop) = (node.clone(), Arc::new(AtomicBool::new(false)));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut min, mut max) = (usize::MAX, 0);
            while !s2.load(Ordering::SeqCst) {
                let n: usize = node.peer_links(peer).unwrap().iter().sum();
                (min, max) = (min.min(n), max.max(n));
                std::thread::sleep(Duration::from_millis(5));
            }
            (min, max)
        });
        LinkWatcher { stop, thread }
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Sends `total` Prepares to `destination` at concurrency 64 over `connections` links to
/// `url` (as `sender`), each with its own data (deduplicating connectors forward every one);
/// returns how many were fulfilled.
fn send_unique(
    url: String,
    token: &'static str,
    destination: &'static str,
    total: usize,
    connections: usize,
) -> usize {
    const CONCURRENCY: usize = 64;
    run_local(move || async move {
        let mut links = Vec::new();
        for _ in 0..connections {
            links.push(Rc::new(
                SenderLink::connect(&url, "sender", token).await.unwrap(),
            ));
        }
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let s = links[t % links.len()].clone();
                glommio::spawn_local(async move {
                    let mut fulfilled = 0;
                    for i in 0..(total / CONCURRENCY + usize::from(t < total % CONCURRENCY)) {
                        let data = format!("{t}-{i}");
                        if let Ok(Packet::Fulfill(_)) =
                            s.send(destination, 1, 20_000, data.as_bytes()).await
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
    })
}

#[test]
fn our_client_against_reference_listener() {
    let (_child, rx, a) = node_dialling_reference_listener("");
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
    let (_child, _rx, a) =
        node_dialling_reference_listener("shards: 2\nmaxConnectionsPerPeer: 16\n");
    let a = Arc::new(a);
    let watcher = LinkWatcher::start(&a, "js");
    // Eight sender connections: the kernel spreads them over both shards.
    let fulfilled = send_unique(
        format!("ws://127.0.0.1:{}", a.btp_port()),
        "secret-sa",
        "test.js.bob",
        5000,
        8,
    );
    let (min, max) = watcher.stop();
    assert_eq!(fulfilled, 5000, "every packet fulfilled");
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

/// Issue 16: the reference JS connector on both sides of a two-shard node of ours:
/// sender → JS A → our B (`shards: 2`) → JS C → fulfiller. 5 000 Prepares at concurrency 64,
/// each with its own data (the JS connector answers repeated Prepares from a cache), are all
/// fulfilled, and B holds exactly one link to C (a listener that keeps one socket per account)
/// for the whole run (packets arriving on B's other shard are handed over to it).
#[test]
fn js_connector_to_our_two_shard_node_to_js_connector() {
    let fulfiller = Fulfiller::start("jsc", "secret-r", Mode::Fulfill);
    let (_c, c_port) = js_c(
        fulfiller.port,
        r#"[{"targetPrefix":"test.jsc.receiver","peerId":"receiver"}]"#,
    );
    let b = Arc::new(
        ilp_connector::admin::start_node(
            Config::from_yaml(&format!(
                "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nshards: 2\npeers:\n  - {{id: jsa, relation: peer, authToken: secret-ab}}\n  - {{id: jsc, relation: peer, url: \"ws://127.0.0.1:{c_port}\", authToken: secret-bc}}\nroutes:\n  - {{prefix: test.jsc, nextHop: jsc}}\n"
            ))
            .unwrap(),
        )
        .unwrap(),
    );
    wait_peer_up(&b, "jsc");
    let (_a, a_port) = js_a(
        btp_to_b(b.btp_port()),
        r#"[{"targetPrefix":"test.jsc","peerId":"b"}]"#,
    );
    wait_peer_up(&b, "jsa");

    let watcher = LinkWatcher::start(&b, "jsc");
    // One sender connection: A's listener keeps one socket per account too.
    let fulfilled = send_unique(
        format!("ws://127.0.0.1:{a_port}"),
        "secret-sa",
        "test.jsc.receiver.bob",
        5000,
        1,
    );
    let (min, max) = watcher.stop();
    assert_eq!(fulfilled, 5000, "every packet fulfilled");
    assert_eq!((min, max), (1, 1), "exactly one link from B to C all along");
}

/// Issue 13: route exchange with the reference JS connector, no static routes anywhere:
/// sender → JS A — our B — JS C → fulfiller, plus our own child `kid` of B. B learns
/// `test.jsc` from C and `test.jsa` from A by CCP; A learns C's and B's prefixes through B;
/// packets from A's child reach C's child and B's child.
#[test]
fn routes_learned_from_and_by_the_js_connector() {
    let fulfiller = Fulfiller::start("jsc", "secret-r", Mode::Fulfill);
    let (_c, c_port) = js_c(fulfiller.port, "[]");
    let b = ilp_connector::admin::start_node(
        Config::from_yaml(&format!(
            "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\npeers:\n  - {{id: jsa, relation: peer, authToken: secret-ab}}\n  - {{id: jsc, relation: peer, url: \"ws://127.0.0.1:{c_port}\", authToken: secret-bc}}\n  - {{id: kid, relation: child, authToken: secret-kid}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let _kid = Fulfiller::dial(
        &format!("ws://127.0.0.1:{}", b.btp_port()),
        "kid",
        "secret-kid",
        Mode::Fulfill,
    )
    .unwrap();
    wait_peer_up(&b, "jsc");
    let (_a, a_port) = js_a(btp_to_b(b.btp_port()), "[]");
    wait_peer_up(&b, "jsa");
    let hop = |d: &str| {
        b.routing_table()
            .snapshot()
            .lookup(d.as_bytes())
            .map(|r| r.next_hop().to_owned())
    };
    let until = Instant::now() + Duration::from_secs(15);
    while hop("test.jsc.receiver").as_deref() != Some("jsc")
        || hop("test.jsa.x").as_deref() != Some("jsa")
    {
        assert!(
            Instant::now() < until,
            "B did not learn the JS connectors' routes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // JS A learns through B (its next update comes ~150 ms after B's): retry on one link
    // (A's listener keeps one socket per account) until it routes, then 200 more.
    let url = format!("ws://127.0.0.1:{a_port}");
    let fulfilled = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-sa")
            .await
            .unwrap();
        let mut fulfilled = Vec::new();
        for destination in ["test.jsc.receiver.bob", "test.b.kid.alice"] {
            let until = Instant::now() + Duration::from_secs(15);
            let mut i = 0;
            while !matches!(
                s.send(destination, 1, 20_000, format!("first-{i}").as_bytes())
                    .await,
                Ok(Packet::Fulfill(_))
            ) {
                assert!(Instant::now() < until, "JS A never routed {destination}");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                i += 1;
            }
            let mut n = 0;
            for i in 0..200 {
                let data = format!("{destination}-{i}");
                if let Ok(Packet::Fulfill(_)) =
                    s.send(destination, 1, 20_000, data.as_bytes()).await
                {
                    n += 1;
                }
            }
            fulfilled.push(n);
        }
        fulfilled
    });
    assert_eq!(fulfilled, [200, 200]);
}

/// ilp-plugin-http options: listen on `port` for `incoming` tokens, POST to `url` with
/// `outgoing`.
fn http_account(port: u16, incoming: &str, url: &str, outgoing: &str) -> String {
    format!(
        r#"{{"incoming":{{"port":{port},"staticToken":"{incoming}"}},"outgoing":{{"url":"{url}","staticToken":"{outgoing}"}}}}"#
    )
}

/// A free port on 127.0.0.1 (for a JS plugin that needs its port up front).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Issue 18: ILP-over-HTTP with the reference stack (`ilp-plugin-http` 1.6.1 in
/// `ilp-connector` 23.0.2). Our B posts to JS C and JS A posts to our B:
/// our sender —BTP→ B —HTTP→ JS C —BTP→ fulfiller, and JS A's sender —BTP→ JS A —HTTP→ B
/// —BTP→ B's child. Rejects pass through unchanged; a JS peer with the wrong token gets our
/// 401, which JS turns into its own F02.
#[test]
fn ilp_over_http_with_the_js_plugin() {
    let fulfiller = Fulfiller::start("jsc", "secret-r", Mode::Fulfill);
    let kid = Fulfiller::start("b", "secret-kid", Mode::Fulfill);
    let (pa, pc) = (free_port(), free_port());
    let b = ilp_connector::admin::start_node(
        Config::from_yaml(&format!(
            "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: 0\nreadyTimeoutMs: 100\npeers:\n  - {{id: sender, relation: child, authToken: secret-sb}}\n  - {{id: kid, relation: child, url: \"{}\", authToken: secret-kid}}\n  - {{id: jsc, relation: peer, url: \"http://127.0.0.1:{pc}/\", authToken: tok-c-to-b, outgoingAuthToken: tok-b-to-c}}\n  - {{id: jsa, relation: peer, url: \"http://127.0.0.1:{pa}/\", authToken: tok-a-to-b, outgoingAuthToken: tok-b-to-a}}\nroutes:\n  - {{prefix: test.jsc, nextHop: jsc}}\n",
            kid.url()
        ))
        .unwrap(),
    )
    .unwrap();
    let b_http = format!("http://127.0.0.1:{}/", b.http_port().unwrap());
    let (_c, c_rx) = js_connector(
        "test.jsc",
        "[]",
        &[
            (
                "b",
                "peer",
                http_account(pc, "tok-b-to-c", &b_http, "tok-c-to-b"),
            ),
            (
                "receiver",
                "child",
                format!(
                    r#"{{"server":"btp+ws://jsc:secret-r@127.0.0.1:{}"}}"#,
                    fulfiller.port
                ),
            ),
        ],
    );
    assert_eq!(next_line(&c_rx, "C connected")["connected"], true);
    // Ours → JS over HTTP.
    let url = format!("btp+ws://sender:secret-sb@127.0.0.1:{}", b.btp_port());
    let answers = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-sb")
            .await
            .unwrap();
        let mut out = Vec::new();
        for (i, d) in ["test.jsc.receiver.x", "test.jsc.receiver.reject-F99"]
            .iter()
            .enumerate()
        {
            out.push(outcome(
                &s.send(d, 5, 20_000, format!("h{i}").as_bytes())
                    .await
                    .unwrap(),
            ));
        }
        out
    });
    assert_eq!(answers, ["fulfilled", "F99 test.fulfiller"]);

    // JS → ours over HTTP.
    let (_a, a_port) = js_a(
        http_account(pa, "tok-b-to-a", &b_http, "tok-a-to-b"),
        r#"[{"targetPrefix":"test.b","peerId":"b"}]"#,
    );
    assert_eq!(
        send_unique(
            format!("ws://127.0.0.1:{a_port}"),
            "secret-sa",
            "test.b.kid.x",
            300,
            1
        ),
        300
    );
    // A JS peer with the wrong token: our 401, its F02.
    let (_w, w_rx) = js_connector(
        "test.jsw",
        r#"[{"targetPrefix":"test.b","peerId":"b"}]"#,
        &[
            (
                "sender",
                "child",
                r#"{"listener":{"port":0,"secret":"secret-sa"}}"#.into(),
            ),
            (
                "b",
                "peer",
                http_account(free_port(), "x", &b_http, "wrong-token"),
            ),
        ],
    );
    let w_port = next_line(&w_rx, "W's listening port")["port"]
        .as_u64()
        .expect("port");
    let code = run_local(move || async move {
        let s = SenderLink::connect(&format!("ws://127.0.0.1:{w_port}"), "sender", "secret-sa")
            .await
            .unwrap();
        match s.send("test.b.kid.x", 5, 20_000, b"w").await.unwrap() {
            Packet::Reject(r) => r.code().as_str().to_owned(),
            other => format!("{other:?}"),
        }
    });
    assert_eq!(code, "F02");
}

/// Issue 18: the chain sender → JS A —HTTP→ our B —BTP→ our C —HTTP→ JS D → fulfiller, all
/// fulfilled.
#[test]
fn js_http_ours_btp_ours_http_js_chain() {
    let fulfiller = Fulfiller::start("jsd", "secret-r", Mode::Fulfill);
    let (pa, pd) = (free_port(), free_port());
    let node =
        |yaml: String| ilp_connector::admin::start_node(Config::from_yaml(&yaml).unwrap()).unwrap();
    let c = node(format!(
        "nodeId: c\nilpAddress: test.c\nbtpServerPort: 0\nhttpServerPort: 0\nreadyTimeoutMs: 100\npeers:\n  - {{id: b, relation: peer, authToken: secret-bc}}\n  - {{id: jsd, relation: peer, url: \"http://127.0.0.1:{pd}/\", authToken: tok-d-to-c, outgoingAuthToken: tok-c-to-d}}\nroutes:\n  - {{prefix: test.jsd, nextHop: jsd}}\n"
    ));
    let b = node(format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: 0\nreadyTimeoutMs: 100\npeers:\n  - {{id: jsa, relation: peer, url: \"http://127.0.0.1:{pa}/\", authToken: tok-a-to-b, outgoingAuthToken: tok-b-to-a}}\n  - {{id: c, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-bc}}\nroutes:\n  - {{prefix: test.jsd, nextHop: c}}\n",
        c.btp_port()
    ));
    wait_peer_up(&b, "c");
    let c_http = format!("http://127.0.0.1:{}/", c.http_port().unwrap());
    let b_http = format!("http://127.0.0.1:{}/", b.http_port().unwrap());
    let (_d, d_rx) = js_connector(
        "test.jsd",
        "[]",
        &[
            (
                "c",
                "peer",
                http_account(pd, "tok-c-to-d", &c_http, "tok-d-to-c"),
            ),
            (
                "receiver",
                "child",
                format!(
                    r#"{{"server":"btp+ws://jsd:secret-r@127.0.0.1:{}"}}"#,
                    fulfiller.port
                ),
            ),
        ],
    );
    assert_eq!(next_line(&d_rx, "D connected")["connected"], true);
    let (_a, a_port) = js_a(
        http_account(pa, "tok-b-to-a", &b_http, "tok-a-to-b"),
        r#"[{"targetPrefix":"test.jsd","peerId":"b"}]"#,
    );
    assert_eq!(
        send_unique(
            format!("ws://127.0.0.1:{a_port}"),
            "secret-sa",
            "test.jsd.receiver.x",
            500,
            1
        ),
        500
    );
}
