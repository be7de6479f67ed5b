//! BTP links over real sockets on 127.0.0.1: auth failures, the auth bound, and 10 000
//! pipelined requests answered out of order.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use ilp_connector::btp::auth::Credential;
use ilp_connector::btp::client::{dial, parse_url};
use ilp_connector::btp::deadlines::Deadlines;
use ilp_connector::btp::link::{self, AnswerSink, Link, LinkConfig};
use ilp_connector::btp::server::{accept_peer, admit_all};
use ilp_connector::btp::{IncomingHandler, LinkError};
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::{BtpPacket, FulfillFields, Packet, Prepare, PrepareFields, Timestamp};
use ilp_connector::testkit::{run_local, SenderLink};

/// A BTP server on this executor accepting `client`/`token` (auth bounded by `auth_bound`);
/// every MESSAGE goes to `handler`.
fn spawn_server(token: &'static str, auth_bound: Duration, handler: fn(&Link, BtpPacket)) -> u16 {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    glommio::spawn_local(async move {
        let creds = Rc::new(vec![Credential::new("client", token)]);
        while let Ok(stream) = listener.accept().await {
            let creds = creds.clone();
            glommio::spawn_local(async move {
                let Ok((peer, ws)) = accept_peer(stream, None, &creds, auth_bound, admit_all).await
                else {
                    return;
                };
                let l = Link::new(&peer, LinkConfig::default(), Deadlines::new());
                link::run(ws, l, Rc::new(handler)).await;
            })
            .detach();
        }
    })
    .detach();
    port
}

/// Answers `p` after `delay` with a Fulfill whose data echoes the Prepare's data.
fn fulfill_after(link: Link, p: BtpPacket, delay: Duration) {
    glommio::spawn_local(async move {
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
        let _ = link.send(frame.freeze());
    })
    .detach();
}

/// A server that answers each Prepare with a Fulfill echoing its data, after a delay that
/// varies with the request id (so answers overtake); the auth bound is 300 ms.
fn spawn_echo_server(token: &'static str) -> u16 {
    spawn_server(token, Duration::from_millis(300), |link, p| {
        let delay = Duration::from_micros(u64::from(p.request_id() % 5) * 300);
        fulfill_after(link.clone(), p, delay);
    })
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
        assert_eq!(err, LinkError::Auth("authentication failed".into()));
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
            let (_peer, ws) = accept_peer(stream, None, &creds, Duration::from_secs(5), admit_all)
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
        let l = Link::new("server", cfg, deadlines.clone());
        let ignore: IncomingHandler = Rc::new(|_, _| {});
        glommio::spawn_local(link::run(ws, l.clone(), ignore)).detach();
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

/// A server that answers every request after the number of milliseconds in its data, or
/// never when that is 0, and closes the socket when a request's data is `close`.
fn spawn_slow_server() -> u16 {
    spawn_server("tok", Duration::from_secs(5), |link, p| {
        let prepare = Prepare::decode(p.ilp().unwrap()).unwrap();
        if prepare.data() == b"close" {
            link.close();
            return;
        }
        let delay = u64::from_be_bytes(prepare.data().try_into().unwrap());
        if delay != 0 {
            fulfill_after(link.clone(), p, Duration::from_millis(delay));
        }
    })
}

/// A request's deadline passes first: it completes with Timeout on time; the answer that
/// comes later is dropped (it does not complete any other request), and the link goes on.
#[test]
fn deadline_then_late_answer_is_ignored() {
    run_local(|| async {
        let port = spawn_slow_server();
        let s = SenderLink::connect(&format!("ws://127.0.0.1:{port}"), "client", "tok")
            .await
            .unwrap();
        let t = Instant::now();
        let err = s
            .link
            .request(
                message(&1000u64.to_be_bytes()),
                Some(Instant::now() + Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert_eq!(err, LinkError::Timeout);
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_millis(700),
            "timed out after {took:?}"
        );
        // The late answer (at ~1 s) arrives while this request waits; it must not be
        // taken for this one, which gets its own answer (echoing 1200).
        let p = s
            .send("test.x", 1, 30_000, &1200u64.to_be_bytes())
            .await
            .unwrap();
        match p {
            Packet::Fulfill(f) => assert_eq!(f.data(), 1200u64.to_be_bytes()),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(1200));
    });
}

/// The far side goes away with 200 requests in flight: every one completes at once with
/// LinkLost, long before the 10 s send deadline.
#[test]
fn link_loss_fails_every_pending_request_at_once() {
    run_local(|| async {
        let port = spawn_slow_server();
        let s = Rc::new(
            SenderLink::connect(&format!("ws://127.0.0.1:{port}"), "client", "tok")
                .await
                .unwrap(),
        );
        let t = Instant::now();
        let waiting: Vec<_> = (0..200)
            .map(|_| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    // Never answered (delay 0).
                    s.send("test.x", 1, 30_000, &0u64.to_be_bytes()).await
                })
            })
            .collect();
        let until = Instant::now() + Duration::from_secs(5);
        while s.link.pending_count() < 200 {
            assert!(Instant::now() < until, "requests never got in flight");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let _ = s.send("test.x", 1, 30_000, b"close").await;
        for w in waiting {
            assert_eq!(w.await.unwrap_err(), LinkError::LinkLost);
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!s.link.is_open());
    });
}

/// Records what a relayed request's sink is told, by key.
#[derive(Default)]
struct Recorder(std::cell::RefCell<Vec<(usize, Result<(), LinkError>)>>);

impl AnswerSink for Recorder {
    fn answered(&self, key: usize, result: Result<BtpPacket, LinkError>) {
        self.0.borrow_mut().push((key, result.map(drop)));
    }
}

/// A MESSAGE carrying a Prepare whose data is `data` (the slow server's instruction).
fn message(data: &[u8]) -> BytesMut {
    let mut ilp = BytesMut::new();
    PrepareFields {
        amount: 1,
        expires_at: Timestamp::now().add_millis(30_000),
        execution_condition: &[0; 32],
        destination: b"test.x",
        data,
    }
    .encode(&mut ilp);
    let mut frame = BytesMut::new();
    btp::encode_ilp(&mut frame, BtpType::Message, 0, &ilp);
    frame
}

/// `Link::relay`: nobody waits, and the sink hears exactly once per request, from whichever
/// way it ends: the answer, the deadline, or the link's loss. A refused relay is not reported.
#[test]
fn relayed_requests_reach_the_sink_exactly_once() {
    run_local(|| async {
        let port = spawn_slow_server();
        let s = SenderLink::connect(&format!("ws://127.0.0.1:{port}"), "client", "tok")
            .await
            .unwrap();
        let rec = Rc::new(Recorder::default());
        let sink: Rc<dyn AnswerSink> = rec.clone();
        let soon = Instant::now() + Duration::from_millis(100);
        let later = Instant::now() + Duration::from_secs(30);
        let relay = |data: &[u8], at: Instant, key: usize| {
            s.link
                .relay(message(data), at, 1, Rc::downgrade(&sink), key)
                .unwrap();
        };
        relay(&20u64.to_be_bytes(), later, 1); // answered after 20 ms
        relay(&0u64.to_be_bytes(), soon, 2); // never answered: its deadline
        relay(&300u64.to_be_bytes(), soon, 3); // answered after its deadline
        relay(&0u64.to_be_bytes(), later, 4); // never answered: the link goes
        let until = Instant::now() + Duration::from_secs(3);
        while rec.0.borrow().len() < 3 {
            assert!(Instant::now() < until, "{:?}", rec.0.borrow());
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        // Key 3's late answer arrives at ~300 ms; it must not be reported again.
        glommio::timer::sleep(Duration::from_millis(400)).await;
        let _ = s.send("test.x", 1, 30_000, b"close").await;
        while rec.0.borrow().len() < 4 {
            assert!(Instant::now() < until, "{:?}", rec.0.borrow());
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            s.link
                .relay(message(b"x"), later, 1, Rc::downgrade(&sink), 5),
            Err(LinkError::LinkLost)
        );
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let mut seen = rec.0.borrow().clone();
        seen.sort_by_key(|(k, _)| *k);
        assert_eq!(
            seen,
            vec![
                (1, Ok(())),
                (2, Err(LinkError::Timeout)),
                (3, Err(LinkError::Timeout)),
                (4, Err(LinkError::LinkLost)),
            ]
        );
    });
}
