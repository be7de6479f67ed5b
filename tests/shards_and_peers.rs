//! Multi-shard nodes and the peer manager, over real sockets on 127.0.0.1 with free ports:
//! two shards accepting on one port, packets handed to the shard that holds the next hop's
//! link, the T03 shard limit, and peers added and removed at runtime (API and admin HTTP).

use std::time::{Duration, Instant};

use ilp_connector::codec::Packet;
use ilp_connector::config::{Config, PeerConfig, Relation};
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

fn start(yaml: &str) -> ConnectorNode {
    let node = ilp_connector::admin::start_node(Config::from_yaml(yaml).unwrap()).unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)), "node ready");
    node
}

/// Polls `f` every 10 ms until it holds; fails after 10 s.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn code(p: &Packet) -> String {
    match p {
        Packet::Fulfill(_) => "fulfilled".into(),
        Packet::Reject(r) => r.code().as_str().to_owned(),
        Packet::Prepare(_) => "prepare".into(),
    }
}

fn http(method: &str, port: u16, path: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let req = ureq::request(method, &url)
        .timeout(Duration::from_secs(5))
        .set("Authorization", "Bearer admin-secret");
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// A counter or gauge from `/metrics`, by its full series name.
fn metric(admin: u16, series: &str) -> u64 {
    let (_, text) = http("GET", admin, "/metrics", None);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_shards_share_the_port_and_hand_packets_over() {
    let node = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\nshards: 2\nmaxConnectionsPerPeer: 64\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n  - {id: receiver, relation: child, authToken: secret-r}\n",
    );
    let admin = node.admin_port().unwrap();
    // The receiver dials in once, so exactly one shard has a link to it.
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let _f = Fulfiller::dial(&url, "receiver", "secret-r", Mode::Fulfill).unwrap();
    wait_for("the receiver's link", || {
        node.peer_links("receiver").unwrap().iter().sum::<usize>() == 1
    });
    let codes = run_local(move || async move {
        // 32 connections: the kernel spreads them over both shards (all on one shard has
        // probability 2^-31).
        let mut links = Vec::new();
        for _ in 0..32 {
            links.push(
                SenderLink::connect(&url, "sender", "secret-s")
                    .await
                    .unwrap(),
            );
        }
        let per_shard: Vec<u64> = (0..2)
            .map(|s| {
                metric(
                    admin,
                    &format!("ilp_peer_links{{peer=\"sender\",shard=\"{s}\"}}"),
                )
            })
            .collect();
        assert_eq!(per_shard.iter().sum::<u64>(), 32, "{per_shard:?}");
        assert!(
            per_shard.iter().all(|n| *n > 0),
            "both shards accept: {per_shard:?}"
        );
        let mut codes = Vec::new();
        for l in &links {
            let p = l
                .send("test.n.receiver.bob", 1, 20_000, b"x")
                .await
                .unwrap();
            codes.push(code(&p));
        }
        codes
    });
    assert!(codes.iter().all(|c| c == "fulfilled"), "{codes:?}");
    // Senders on the shard without the receiver's link went through a hand-over.
    assert!(metric(admin, "ilp_packets_handed_over_total") > 0);
}

#[test]
fn shard_limit_gives_t03() {
    let f = Fulfiller::start("n", "secret-f", Mode::Silent);
    let node = start(&format!(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nsendTimeoutMs: 500\nmaxInFlightPerShard: 2\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: f, relation: child, url: \"{}\", authToken: secret-f}}\n",
        f.url()
    ));
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let codes = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-s")
            .await
            .unwrap();
        let send = || s.send("test.n.f.x", 1, 20_000, b"x");
        let ((a, b), c) =
            futures_lite::future::zip(futures_lite::future::zip(send(), send()), send()).await;
        vec![code(&a.unwrap()), code(&b.unwrap()), code(&c.unwrap())]
    });
    let mut sorted = codes.clone();
    sorted.sort();
    // The two let through expire at the silent next hop (R00: the outgoing expiry is capped
    // by the send timeout).
    assert_eq!(sorted, ["R00", "R00", "T03"], "{codes:?}");
}

#[test]
fn peers_added_and_removed_at_runtime() {
    let node = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\nadminToken: admin-secret\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
    );
    let admin = node.admin_port().unwrap();
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let send = |dest: &'static str| {
        let url = url.clone();
        run_local(move || async move {
            let s = SenderLink::connect(&url, "sender", "secret-s")
                .await
                .unwrap();
            code(&s.send(dest, 1, 20_000, b"x").await.unwrap())
        })
    };

    // A peer we dial, added over the admin port.
    let f = Fulfiller::start("n", "secret-f", Mode::Fulfill);
    let body = format!(
        r#"{{"id":"f","relation":"child","url":"{}","authToken":"secret-f"}}"#,
        f.url()
    );
    assert_eq!(http("POST", admin, "/peers", Some(&body)).0, 201);
    assert_eq!(http("POST", admin, "/peers", Some(&body)).0, 409);
    let (status, err) = http(
        "POST",
        admin,
        "/peers",
        Some(r#"{"id":"bad id","relation":"peer"}"#),
    );
    assert_eq!(status, 400, "{err}");
    wait_for("the dialled peer", || {
        node.health().peers.get("f") == Some(&true)
    });
    assert_eq!(send("test.n.f.x"), "fulfilled");
    let (_, peers) = http("GET", admin, "/peers", None);
    assert!(
        peers.contains(r#""id":"f""#) && !peers.contains("secret-f"),
        "{peers}"
    );

    // Removed: its link closes, the dial loop stops, its route goes.
    assert_eq!(http("DELETE", admin, "/peers/f", None).0, 204);
    assert_eq!(http("DELETE", admin, "/peers/f", None).0, 404);
    assert!(!node.health().peers.contains_key("f"));
    assert_eq!(send("test.n.f.x"), "F02");
    drop(f);

    // A peer that dials us, added through the API.
    node.add_peer(PeerConfig {
        id: "g".into(),
        relation: Relation::Child,
        url: None,
        auth_token: Some("secret-g".into()),
        auth_token_file: None,
        asset_code: None,
        asset_scale: None,
        links: Default::default(),
        max_packet_amount: None,
        balance: None,
        rate_limit: None,
        throughput: None,
        send_routes: None,
        receive_routes: None,
        outgoing_auth_token: None,
        http2: false,
    })
    .unwrap();
    let g = Fulfiller::dial(&url, "g", "secret-g", Mode::Fulfill).unwrap();
    wait_for("g's link", || node.health().peers.get("g") == Some(&true));
    assert_eq!(send("test.n.g.x"), "fulfilled");
    node.remove_peer("g").unwrap();
    assert_eq!(send("test.n.g.x"), "F02");
    // Its token no longer authenticates.
    assert!(Fulfiller::dial(&url, "g", "secret-g", Mode::Fulfill).is_err());
    drop(g);
}

/// Packets waiting on a silent next hop do not hold up others: the shard's worker pool grows
/// with the packets in flight (no head-of-line blocking behind slow answers).
#[test]
fn slow_next_hop_does_not_block_others() {
    let slow = Fulfiller::start("n", "secret-slow", Mode::Silent);
    let fast = Fulfiller::start("n", "secret-fast", Mode::Fulfill);
    let node = start(&format!(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nsendTimeoutMs: 3000\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: slow, relation: child, url: \"{}\", authToken: secret-slow}}\n  - {{id: fast, relation: child, url: \"{}\", authToken: secret-fast}}\n",
        slow.url(),
        fast.url()
    ));
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let (fast_codes, fast_took, slow_codes) = run_local(move || async move {
        let s = std::rc::Rc::new(
            SenderLink::connect(&url, "sender", "secret-s")
                .await
                .unwrap(),
        );
        let slow: Vec<_> = (0..300)
            .map(|_| {
                let s = s.clone();
                glommio::spawn_local(async move { s.send("test.n.slow.x", 1, 30_000, b"s").await })
            })
            .collect();
        // Wait until the slow packets are all in flight at the node.
        let until = Instant::now() + Duration::from_secs(5);
        while s.link.pending_count() < 300 {
            assert!(Instant::now() < until, "slow packets never got in flight");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        let fast: Vec<_> = (0..300)
            .map(|_| {
                let s = s.clone();
                glommio::spawn_local(async move { s.send("test.n.fast.x", 1, 30_000, b"f").await })
            })
            .collect();
        let mut fast_codes = Vec::new();
        for f in fast {
            fast_codes.push(code(&f.await.unwrap()));
        }
        let fast_took = t.elapsed();
        let mut slow_codes = Vec::new();
        for f in slow {
            slow_codes.push(code(&f.await.unwrap()));
        }
        (fast_codes, fast_took, slow_codes)
    });
    assert!(
        fast_codes.iter().all(|c| c == "fulfilled"),
        "{fast_codes:?}"
    );
    assert!(
        fast_took < Duration::from_secs(2),
        "fast packets waited behind slow ones: {fast_took:?}"
    );
    // The slow ones expire at the send deadline (R00: the outgoing expiry is capped by it),
    // each exactly once.
    assert_eq!(slow_codes.len(), 300);
    assert!(slow_codes.iter().all(|c| c == "R00"), "{slow_codes:?}");
}

/// Issue 16: our server offers several links per account in its auth answer, so a two-shard
/// node dialling a two-shard node of ours holds a link on each shard (no hand-over needed).
#[test]
fn our_nodes_negotiate_a_link_per_shard() {
    let y = start(
        "nodeId: y\nilpAddress: test.y\nbtpServerPort: 0\nshards: 2\npeers:\n  - {id: x, relation: peer, authToken: secret-xy}\n",
    );
    let x = start(&format!(
        "nodeId: x\nilpAddress: test.x\nbtpServerPort: 0\nhealthCheckPort: 0\nshards: 2\npeers:\n  - {{id: y, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-xy}}\n",
        y.btp_port()
    ));
    wait_for("a link from each of x's shards", || {
        x.peer_links("y").unwrap() == vec![1, 1]
    });
    let admin = x.admin_port().unwrap();
    assert_eq!(metric(admin, "ilp_peer_links{peer=\"y\",shard=\"0\"}"), 1);
    assert_eq!(metric(admin, "ilp_peer_links{peer=\"y\",shard=\"1\"}"), 1);
    // `links: 1` overrides the offer.
    let x1 = start(&format!(
        "nodeId: x\nilpAddress: test.x\nbtpServerPort: 0\nshards: 2\npeers:\n  - {{id: y, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-xy, links: 1}}\n",
        y.btp_port()
    ));
    wait_for("x1's one link", || {
        x1.peer_links("y").unwrap().iter().sum::<usize>() == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(x1.peer_links("y").unwrap().iter().sum::<usize>(), 1);
}

/// The admin port's guard: `/health` and `/metrics` open; without an admin token writes get
/// 403; with one, everything else needs it as a bearer token, and writes need JSON.
#[test]
fn admin_port_needs_its_token_and_json() {
    let call = |port: u16, method: &str, path: &str, token: Option<&str>, ctype: &str| {
        let mut req = ureq::request(method, &format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .set("Content-Type", ctype);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let body = r#"{"id":"x","relation":"child","authToken":"secret-x"}"#;
        let res = if method == "POST" {
            req.send_string(body)
        } else {
            req.call()
        };
        match res {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    };
    let json = "application/json";
    let open = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
    );
    let p = open.admin_port().unwrap();
    assert_eq!(call(p, "GET", "/metrics", None, json), 200);
    assert_eq!(
        call(p, "GET", "/peers", None, json),
        200,
        "reads on loopback"
    );
    assert_eq!(
        call(p, "POST", "/peers", None, json),
        403,
        "no token: read-only"
    );
    assert_eq!(call(p, "DELETE", "/peers/sender", None, json), 403);

    let guarded = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\nadminToken: admin-secret\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
    );
    let p = guarded.admin_port().unwrap();
    assert_eq!(call(p, "GET", "/metrics", None, json), 200);
    assert!([200, 503].contains(&call(p, "GET", "/health", None, json)));
    assert_eq!(call(p, "GET", "/peers", None, json), 401);
    assert_eq!(call(p, "GET", "/routes", Some("wrong"), json), 401);
    assert_eq!(call(p, "GET", "/routes", Some("admin-secret"), json), 200);
    assert_eq!(call(p, "POST", "/peers", None, json), 401);
    // A form or text body (what a web page can send cross-site without a preflight).
    assert_eq!(
        call(p, "POST", "/peers", Some("admin-secret"), "text/plain"),
        415
    );
    assert_eq!(call(p, "POST", "/peers", Some("admin-secret"), json), 201);
    assert_eq!(
        call(p, "DELETE", "/peers/x", Some("admin-secret"), json),
        204
    );
}

/// A client that starts a POST and never sends its body does not stop `/health` answering.
#[test]
fn stalled_admin_write_does_not_block_health() {
    use std::io::Write;
    let node = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\nadminToken: admin-secret\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
    );
    let port = node.admin_port().unwrap();
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"POST /peers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            .unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    health_answers_at_once(port);
    drop(stalled);
}

/// Idle admin connections cost no threads (the old server spawned one per connection) and
/// do not stop `/health` answering; a request whose headers never finish is dropped after
/// the header timeout.
#[test]
fn idle_admin_connections_cost_no_threads() {
    use std::io::{Read, Write};
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let node = start(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: 0\npeers:\n  - {id: sender, relation: child, authToken: secret-s}\n",
    );
    let port = node.admin_port().unwrap();
    let before = threads();
    let idle: Vec<_> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Other tests in this binary start nodes (a few threads each) meanwhile; a thread per
    // connection would add 300.
    assert!(
        threads() < before + 100,
        "{} threads, {before} before",
        threads()
    );
    health_answers_at_once(port);
    // The unfinished request is closed after the header timeout (5 s), bounded here by 10 s.
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = half
        .read(&mut buf)
        .expect("the node closes it (a read timeout here means it did not)");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    drop(idle);
}

/// `/health` answers (200 or 503) within a second.
fn health_answers_at_once(port: u16) {
    let t = std::time::Instant::now();
    let status = match ureq::get(&format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(3))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("/health: {e}"),
    };
    assert!([200, 503].contains(&status));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
