//! Logs across hops: with DEBUG on, all three nodes log the same `correlationId` for one
//! packet (first 16 hex chars of sha256 of the Prepare as the first hop received it), every
//! line carries `nodeId`, `component` and `event`, and no secret appears in any line.
//! Its own test binary, because it installs the global log subscriber.

use std::time::Duration;

use bytes::BytesMut;
use ilp_connector::codec::{Packet, PrepareFields, Timestamp};
use ilp_connector::testkit::{condition_for, run_local, Mode, ThreeNodes};
use sha2::{Digest, Sha256};

#[test]
fn one_correlation_id_in_all_three_nodes_logs() {
    let (logs, _level) = ilp_connector::logging::init_captured("debug");
    let n = ThreeNodes::start(Mode::Fulfill, 10_000).unwrap();
    let data = b"follow me";
    let mut prepare = BytesMut::new();
    PrepareFields {
        amount: 5,
        expires_at: Timestamp::now().add_millis(30_000),
        execution_condition: &condition_for(data),
        destination: b"test.c.receiver.log",
        data,
    }
    .encode(&mut prepare);
    let expected_id = hex::encode(&Sha256::digest(&prepare)[..8]);
    let url = n.sender_url();
    let answer = run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await.unwrap();
        s.send_raw(&prepare).await.unwrap()
    });
    assert!(matches!(answer, Packet::Fulfill(_)), "{answer:?}");
    // A logs its packet_response after the answer is queued to the sender: wait for it.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = logs.lines();
        let done = lines.iter().any(|l| {
            l["correlationId"] == expected_id.as_str()
                && l["nodeId"] == "connector-a"
                && l["event"] == "packet_response"
        });
        if done || std::time::Instant::now() > until {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let with_id: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["correlationId"] == expected_id.as_str())
        .collect();
    for node in ["connector-a", "connector-b", "connector-c"] {
        for event in [
            "packet_received",
            "route_lookup",
            "packet_forwarded",
            "packet_response",
        ] {
            assert!(
                with_id
                    .iter()
                    .any(|l| l["nodeId"] == node && l["event"] == event),
                "{node} did not log {event} with correlation id {expected_id}: {with_id:#?}"
            );
        }
    }
    for l in &lines {
        assert!(
            l["nodeId"].is_string() && l["component"].is_string() && l["event"].is_string(),
            "a line without nodeId/component/event: {l}"
        );
    }
    let text = logs.text();
    assert!(!text.contains("secret-"), "a secret reached the logs");
    drop(n);
}
