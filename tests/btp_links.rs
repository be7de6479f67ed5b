//! BTP links over real sockets on 127.0.0.1: auth failures, the auth bound, and 10 000
//! pipelined requests answered out of order.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use ilp_connector::btp::auth::Credential;
use ilp_connector::btp::client::{dial, parse_url};
use ilp_connector::btp::deadlines::Deadlines;
use ilp_connector::btp::link::{self, Link, LinkConfig};
use ilp_connector::btp::server::accept_peer;
use ilp_connector::btp::{IncomingHandler, LinkError};
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::{BtpPacket, FulfillFields, Packet, Prepare};
use ilp_connector::testkit::{run_local, SenderLink};

/// A server on this executor that answers each Prepare with a Fulfill whose data echoes the
/// Prepare's data, after a delay that varies with the request id (so answers overtake).
fn spawn_echo_server(token: &'static str) -> u16 {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    glommio::spawn_local(async move {
        let creds = Rc::new(vec![Credential::new("client", token)]);
        while let Ok(stream) = listener.accept().await {
            let creds = creds.clone();
            glommio::spawn_local(async move {
                let Ok((peer, ws)) = accept_peer(stream, &creds, Duration::from_millis(300)).await
                else {
                    return;
                };
                let (l, rx) = Link::new(&peer, LinkConfig::default(), Deadlines::new());
                let handler: IncomingHandler = Rc::new(|link: Link, p: BtpPacket| {
                    glommio::spawn_local(async move {
                        let delay = Duration::from_micros(u64::from(p.request_id() % 5) * 300);
                        glommio::timer::sleep(delay).await;
                        let prepare = Prepare::decode(p.ilp().unwrap()).unwrap();
                        let mut ilp = BytesMut::new();
                        FulfillFields {
                            fulfillment: &[0; 32],
                            data: prepare.data(),
                        }
                        .encode(&mut ilp);
                        let mut frame = BytesMut::new();
                        btp::encode_ilp(&mut frame, BtpType::Response, p.request_id(), &ilp);
                        let _ = link.send(frame.freeze()).await;
                    })
                    .detach();
                });
                link::run(ws, l, rx, handler).await;
            })
            .detach();
        }
    })
    .detach();
    port
}

#[test]
fn ten_thousand_pipelined_requests_match() {
    run_local(|| async {
        let port = spawn_echo_server("tok");
        let s = SenderLink::connect(&format!("ws://127.0.0.1:{port}"), "client", "tok")
            .await
            .unwrap();
        let s = Rc::new(s);
        let t = Instant::now();
        let futs = (0u32..10_000).map(|i| {
            let s = s.clone();
            async move {
                let data = i.to_be_bytes();
                match s.send("test.x", 1, 30_000, &data).await {
                    Ok(Packet::Fulfill(f)) => f.data() == data,
                    _ => false,
                }
            }
        });
        let results = futures_util::future::join_all(futs).await;
        assert!(
            results.iter().all(|ok| *ok),
            "every answer matched its request"
        );
        assert!(t.elapsed() < Duration::from_secs(20));
    });
}

#[test]
fn wrong_token_gets_error_and_close() {
    run_local(|| async {
        let port = spawn_echo_server("right");
        let target = parse_url(&format!("ws://127.0.0.1:{port}")).unwrap();
        let err = dial(&target, "client", "wrong", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, LinkError::Auth("invalid auth_token".into()));
        let ok = dial(&target, "client", "right", Duration::from_secs(5)).await;
        assert!(ok.is_ok());
    });
}

#[test]
fn silent_client_is_closed_after_the_auth_bound() {
    run_local(|| async {
        let port = spawn_echo_server("tok");
        let stream = glommio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut ws, _) =
            async_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), stream)
                .await
                .unwrap();
        let t = Instant::now();
        // Send nothing; the server's bound is 300 ms.
        let end = glommio::timer::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(async_tungstenite::tungstenite::Message::Close(_)))
                    | None
                    | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "server closed the connection");
        assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3));
    });
}

#[test]
fn unparsable_request_gets_btp_error() {
    run_local(|| async {
        let port = spawn_echo_server("tok");
        let s = SenderLink::connect(&format!("ws://127.0.0.1:{port}"), "client", "tok")
            .await
            .unwrap();
        // A MESSAGE whose content length runs past the end: answered with ERROR F01.
        let frame = BytesMut::from(&[6u8, 0, 0, 0, 0, 0x7f, 1][..]);
        let err = s.link.request(frame, None).await.unwrap_err();
        assert!(
            matches!(err, LinkError::Remote { ref code, .. } if code == "F01"),
            "{err:?}"
        );
        let _ = Bytes::new();
    });
}

/// A peer that authenticates and then never reads again never answers our pings: the link
/// closes after a ping interval plus the pong timeout, and a pending request fails with
/// link-lost at that moment, well before its own deadline.
#[test]
fn unanswered_ping_closes_the_link() {
    run_local(|| async {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        glommio::spawn_local(async move {
            let creds = vec![Credential::new("client", "tok")];
            let stream = listener.accept().await.unwrap();
            let (_peer, ws) = accept_peer(stream, &creds, Duration::from_secs(5))
                .await
                .unwrap();
            // Hold the socket without reading it.
            glommio::timer::sleep(Duration::from_secs(10)).await;
            drop(ws);
        })
        .detach();
        let target = parse_url(&format!("ws://127.0.0.1:{port}")).unwrap();
        let ws = dial(&target, "client", "tok", Duration::from_secs(5))
            .await
            .unwrap();
        let cfg = LinkConfig {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(100),
            ..LinkConfig::default()
        };
        let deadlines = Deadlines::new();
        let (l, rx) = Link::new("server", cfg, deadlines.clone());
        let ignore: IncomingHandler = Rc::new(|_, _| {});
        glommio::spawn_local(link::run(ws, l.clone(), rx, ignore)).detach();
        let l2 = l.clone();
        glommio::spawn_local(async move { deadlines.run(move || !l2.is_open()).await }).detach();
        let t = Instant::now();
        let mut frame = BytesMut::new();
        btp::encode_ilp(&mut frame, BtpType::Message, 0, b"never answered");
        let err = l.request(frame, None).await.unwrap_err();
        assert_eq!(err, LinkError::LinkLost);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(2),
            "closed after {took:?}"
        );
        assert!(!l.is_open());
    });
}
