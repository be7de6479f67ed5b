//! BTP over TLS (`wss`), with certificates made at run time by a throw-away CA (rcgen):
//! our node dialling our node, the reference JS client dialling our server, and what goes
//! wrong without the right certificate.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ilp_connector::btp::client::{dial, parse_url};
use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

#[path = "support/reference.rs"]
#[allow(dead_code)]
mod reference;

/// PEM files of a fresh CA and of a server certificate it signed for localhost / 127.0.0.1.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ilp-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "ilp-connector test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(yaml: &str) -> ConnectorNode {
    ilp_connector::admin::start_node(Config::from_yaml(yaml).unwrap()).unwrap()
}

/// B serves `wss` only; its child `receiver` is the test fulfiller (plain, B dials it).
fn tls_node(pki: &Pki, f: &Fulfiller) -> ConnectorNode {
    start(&format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nbtpServerTls: {{certFile: {}, keyFile: {}}}\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: js, relation: child, authToken: secret-js}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
        pki.path("cert.pem"),
        pki.path("key.pem"),
        f.url()
    ))
}

fn a_yaml(b_url: &str, ca: Option<&str>) -> String {
    format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\n{}peers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: b, relation: peer, url: \"{b_url}\", authToken: secret-ab}}\nroutes:\n  - {{prefix: test.b, nextHop: b}}\n",
        ca.map_or(String::new(), |c| format!("tlsCaFile: {c}\n"))
    )
}

#[test]
fn our_node_dials_our_node_over_wss() {
    let pki = Pki::new("ours");
    let f = Fulfiller::start("b", "secret-r", Mode::Fulfill);
    let b = tls_node(&pki, &f);
    assert!(b.wait_ready(Duration::from_secs(10)));
    let a = start(&a_yaml(
        &format!("btp+wss://localhost:{}", b.btp_port()),
        Some(&pki.path("ca.pem")),
    ));
    assert!(a.wait_ready(Duration::from_secs(10)));
    assert!(a.health().peers["b"], "A's wss link to B is up");
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-s")
            .await
            .unwrap();
        s.send("test.b.receiver.x", 5, 20_000, b"over TLS").await
    })
    .unwrap();
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");

    // Plain ws to a wss-only port gets nowhere.
    let plain = format!("ws://127.0.0.1:{}", b.btp_port());
    let refused = run_local(move || async move {
        dial(
            &parse_url(&plain).unwrap(),
            "a",
            "secret-ab",
            Duration::from_secs(3),
        )
        .await
        .map(|_| ())
    });
    assert!(refused.is_err(), "plain ws accepted on a TLS port");
}

#[test]
fn unknown_certificate_keeps_the_link_down() {
    let pki = Pki::new("unknown");
    let f = Fulfiller::start("b", "secret-r", Mode::Fulfill);
    let b = tls_node(&pki, &f);
    // No tlsCaFile: B's certificate is signed by nobody the system trusts.
    let a = start(&a_yaml(
        &format!("btp+wss://localhost:{}", b.btp_port()),
        None,
    ));
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(
            !a.health().peers["b"],
            "a link to an untrusted certificate came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn certificate_errors_name_the_file() {
    let e = Config::from_yaml(
        "nodeId: n\nilpAddress: test.n\nbtpServerTls: {certFile: /nonexistent/cert.pem, keyFile: /nonexistent/key.pem}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("btpServerTls") && e.contains("/nonexistent/cert.pem"),
        "{e}"
    );
    let pki = Pki::new("badkey");
    let e = Config::from_yaml(&format!(
        "nodeId: n\nilpAddress: test.n\nbtpServerTls: {{certFile: {}, keyFile: {}}}\n",
        pki.path("cert.pem"),
        pki.path("ca.pem")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("ca.pem"), "{e}");
    let e = Config::from_yaml("nodeId: n\nilpAddress: test.n\ntlsCaFile: /nonexistent/ca.pem\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tlsCaFile") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

/// The reference client (`ilp-plugin-btp` over the `ws` package) dials our `wss` server,
/// trusting the test CA through `NODE_EXTRA_CA_CERTS`.
#[test]
fn reference_client_over_wss() {
    let pki = Pki::new("js");
    let f = Fulfiller::start("b", "secret-r", Mode::Fulfill);
    let b = tls_node(&pki, &f);
    assert!(b.wait_ready(Duration::from_secs(10)));
    let url = format!("btp+wss://js:secret-js@localhost:{}", b.btp_port());
    let ca = pki.path("ca.pem");
    let (_child, rx) = reference::node_script_env(
        "client.js",
        &[&url, "test.b.receiver.bob"],
        &[("NODE_EXTRA_CA_CERTS", ca.as_str())],
    );
    let out = reference::next_line(&rx, "answer");
    assert_eq!(out["type"], "ilp_fulfill", "{out}");
    assert_eq!(out["fulfillmentMatches"], true, "{out}");
}

/// Our node dials the reference listener served over HTTPS (ilp-plugin-btp's
/// `listener.wsOpts.server`), checking its certificate against `tlsCaFile`.
#[test]
fn our_node_dials_the_reference_listener_over_wss() {
    let pki = Pki::new("jslistener");
    let (_child, rx) = reference::node_script(
        "listener.js",
        &["secret-js", &pki.path("cert.pem"), &pki.path("key.pem")],
    );
    let port = reference::next_line(&rx, "listening port")["port"]
        .as_u64()
        .expect("port");
    let a = start(&format!(
        "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\ntlsCaFile: {}\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: js, relation: peer, url: \"wss://localhost:{port}\", authToken: secret-js}}\nroutes:\n  - {{prefix: test.js, nextHop: js}}\n",
        pki.path("ca.pem")
    ));
    assert!(a.wait_ready(Duration::from_secs(10)));
    assert!(a.health().peers["js"], "wss link to the JS listener is up");
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-s")
            .await
            .unwrap();
        s.send("test.js.bob", 9, 20_000, b"to the JS listener over TLS")
            .await
    })
    .unwrap();
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");
    assert_eq!(
        reference::next_line(&rx, "served line")["served"],
        "test.js.bob"
    );
}

/// Certificates rotate without a restart: after the files are replaced and the admin port's
/// `POST /tls/reload` (what SIGHUP does), new connections get the new certificate; files that
/// do not load leave the old one in use.
#[test]
fn certificate_rotates_on_reload() {
    let old = Pki::new("rot-old");
    let new = Pki::new("rot-new");
    let live = Pki::new("rot-live"); // the files the node reads: old's first
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(old.path(f), live.path(f)).unwrap();
    }
    let b = start(&format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhealthCheckPort: 0\nadminToken: admin-secret\nbtpServerTls: {{certFile: {}, keyFile: {}}}\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n",
        live.path("cert.pem"),
        live.path("key.pem")
    ));
    let connects_with = |ca: String| {
        let url = format!("wss://localhost:{}", b.btp_port());
        run_local(move || async move {
            ilp_connector::btp::client::dial_with_ca(
                &parse_url(&url).unwrap(),
                "a",
                "secret-ab",
                Duration::from_secs(3),
                Some(&ca),
            )
            .await
            .is_ok()
        })
    };
    let reload = || {
        let url = format!("http://127.0.0.1:{}/tls/reload", b.admin_port().unwrap());
        match ureq::post(&url)
            .set("Authorization", "Bearer admin-secret")
            .set("Content-Type", "application/json")
            .timeout(Duration::from_secs(5))
            .send_string("{}")
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(connects_with(old.path("ca.pem")));
    assert!(!connects_with(new.path("ca.pem")));
    // A broken key file: refused, the old certificate stays.
    std::fs::write(live.path("key.pem"), "not a key").unwrap();
    assert_eq!(reload(), 500);
    assert!(connects_with(old.path("ca.pem")));
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(new.path(f), live.path(f)).unwrap();
    }
    assert_eq!(reload(), 200);
    assert!(connects_with(new.path("ca.pem")));
    assert!(!connects_with(old.path("ca.pem")));
}

/// ILP-over-HTTP over TLS between our nodes: B serves `https` only (`httpServerTls`), A
/// posts to `https://localhost:<port>/` trusting the test CA; a plain `http://` client gets
/// nowhere (T01 or T00 from A, never a Fulfill).
#[test]
fn ilp_over_https_between_our_nodes() {
    let pki = Pki::new("https");
    let f = Fulfiller::start("b", "secret-r", Mode::Fulfill);
    let b = start(&format!(
        "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: 0\nhttpServerTls: {{certFile: {}, keyFile: {}}}\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
        pki.path("cert.pem"),
        pki.path("key.pem"),
        f.url()
    ));
    assert!(b.wait_ready(Duration::from_secs(10)));
    let port = b.http_port().unwrap();
    let send_via = |url: String, ca: Option<String>| {
        let a = start(&a_yaml(&url, ca.as_deref()));
        assert!(a.wait_ready(Duration::from_secs(10)));
        let sender = format!("ws://127.0.0.1:{}", a.btp_port());
        run_local(move || async move {
            let s = SenderLink::connect(&sender, "sender", "secret-s")
                .await
                .unwrap();
            s.send("test.b.receiver.x", 5, 20_000, b"over https").await
        })
        .unwrap()
    };
    let answer = send_via(
        format!("https://localhost:{port}/"),
        Some(pki.path("ca.pem")),
    );
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");
    // Without the CA the certificate is not trusted: no Fulfill.
    let answer = send_via(format!("https://localhost:{port}/"), None);
    let Packet::Reject(r) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(r.code().as_str(), "T01", "{r:?}");
    // Plain HTTP to the HTTPS port.
    let answer = send_via(format!("http://127.0.0.1:{port}/"), None);
    assert!(matches!(answer, Packet::Reject(_)), "{answer:?}");
    // HTTP/2 over TLS, chosen by ALPN.
    let a = start(
        &a_yaml(
            &format!("https://localhost:{port}/"),
            Some(&pki.path("ca.pem")),
        )
        .replace(
            "authToken: secret-ab}",
            "authToken: secret-ab, http2: true}",
        ),
    );
    assert!(a.wait_ready(Duration::from_secs(10)));
    let sender = format!("ws://127.0.0.1:{}", a.btp_port());
    let answer = run_local(move || async move {
        let s = SenderLink::connect(&sender, "sender", "secret-s")
            .await
            .unwrap();
        s.send("test.b.receiver.x", 5, 20_000, b"over h2").await
    })
    .unwrap();
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");
}
