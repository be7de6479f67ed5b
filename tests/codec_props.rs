//! Property tests for the codecs: encode→decode round trips for arbitrary valid values, and
//! decoders that never panic on arbitrary bytes (WebSocket frames included, read through a
//! link's socket).

use bytes::{Bytes, BytesMut};
use ilp_connector::btp::socket::{Incoming, Role, Socket};
use ilp_connector::btp::MAX_MESSAGE_SIZE;
use ilp_connector::codec::btp::{self, BtpBody, BtpPacket, ProtocolData};
use ilp_connector::codec::ilp::rewrite_prepare;
use ilp_connector::codec::oer::Reader;
use ilp_connector::codec::websocket::{encode_frame, parse_header, Opcode};
use ilp_connector::codec::{
    validate_address, validate_prefix, ErrorCode, Fulfill, FulfillFields, GeneralizedTime, Packet,
    Prepare, PrepareFields, Reject, RejectFields, Timestamp,
};
use proptest::prelude::*;

fn address() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "g", "private", "example", "peer", "self", "test", "test1", "test2", "test3", "local",
    ]);
    (scheme, prop::collection::vec("[a-zA-Z0-9_~-]{1,12}", 1..6))
        .prop_map(|(s, segs)| format!("{s}.{}", segs.join(".")))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (-62_167_219_200_000i64..=253_402_300_799_999).prop_map(Timestamp::from_unix_millis)
}

fn data(max: usize) -> impl Strategy<Value = Vec<u8>> {
    // Mostly short, sometimes crossing the 128 and 256 length-prefix boundaries.
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..140),
        prop::collection::vec(any::<u8>(), 120..300),
        prop::collection::vec(any::<u8>(), 0..max),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prepare_round_trip(amount: u64, t in timestamp(), cond: [u8; 32], dest in address(),
                          d in data(33_000)) {
        let f = PrepareFields { amount, expires_at: t, execution_condition: &cond,
                                destination: dest.as_bytes(), data: &d };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        prop_assert_eq!(out.len(), f.encoded_len());
        let bytes = out.freeze();
        let decoded = Prepare::decode(bytes.clone());
        if d.len() > 32_767 {
            prop_assert!(decoded.is_err());
            return Ok(());
        }
        let p = decoded.unwrap();
        prop_assert_eq!(p.to_fields(), f);
        prop_assert_eq!(p.as_bytes(), &bytes);
    }

    #[test]
    fn rewrite_changes_only_amount_and_expiry(amount: u64, new_amount: u64, t in timestamp(),
                                              t2 in timestamp(), dest in address(),
                                              d in data(600)) {
        let cond = [3u8; 32];
        let mut out = BytesMut::new();
        PrepareFields { amount, expires_at: t, execution_condition: &cond,
                        destination: dest.as_bytes(), data: &d }.encode(&mut out);
        rewrite_prepare(&mut out, new_amount, t2).unwrap();
        let p = Prepare::decode(out.freeze()).unwrap();
        prop_assert_eq!(p.amount(), new_amount);
        prop_assert_eq!(p.expires_at(), t2);
        prop_assert_eq!(p.destination(), dest.as_bytes());
        prop_assert_eq!(p.data(), &d[..]);
        prop_assert_eq!(p.execution_condition(), &cond);
    }

    #[test]
    fn fulfill_round_trip(ful: [u8; 32], d in data(1000)) {
        let f = FulfillFields { fulfillment: &ful, data: &d };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let p = Fulfill::decode(out.freeze()).unwrap();
        prop_assert_eq!(p.to_fields(), f);
    }

    #[test]
    fn reject_round_trip(code: [u8; 3], by in prop_oneof![Just(String::new()), address()],
                         msg in ".{0,300}", d in data(1000)) {
        let f = RejectFields { code: ErrorCode(code), triggered_by: by.as_bytes(),
                               message: msg.as_bytes(), data: &d };
        let bytes = f.to_bytes();
        let p = Reject::decode(bytes.clone()).unwrap();
        prop_assert_eq!(p.to_fields(), f);
        prop_assert_eq!(p.as_bytes(), &bytes);
    }

    #[test]
    fn btp_round_trip(kind in 0u8..4, request_id: u32, amount: u64,
                      entries in prop::collection::vec(("[a-z_]{0,20}", any::<u8>(), data(400)), 0..6),
                      t in timestamp(), err_data in data(500)) {
        let entries: Vec<ProtocolData> = entries.iter()
            .map(|(n, ct, d)| ProtocolData { name: n.as_bytes(), content_type: *ct, data: d })
            .collect();
        let ga = GeneralizedTime::from(t).to_bytes();
        let body = match kind {
            0 => BtpBody::Response,
            1 => BtpBody::Message,
            2 => BtpBody::Transfer { amount },
            _ => BtpBody::Error { code: b"T00", name: b"UnreachableError", triggered_at: &ga,
                                  data: &err_data },
        };
        let mut out = BytesMut::new();
        btp::encode(&mut out, request_id, body, &entries);
        let bytes = out.freeze();
        let p = BtpPacket::decode(bytes.clone()).unwrap();
        prop_assert_eq!(p.request_id(), request_id);
        prop_assert_eq!(p.entries().collect::<Vec<_>>(), entries);
        let mut again = BytesMut::new();
        let body2 = match p.error() {
            Some(e) => BtpBody::Error { code: e.code, name: e.name, triggered_at: e.triggered_at,
                                        data: e.data },
            None if kind == 2 => BtpBody::Transfer { amount: p.amount() },
            None => body,
        };
        btp::encode(&mut again, p.request_id(), body2, &p.entries().collect::<Vec<_>>());
        prop_assert_eq!(&again[..], &bytes[..]);
    }

    #[test]
    fn timestamp_round_trip(t in timestamp()) {
        let wire = t.to_ilp_bytes();
        prop_assert_eq!(Timestamp::parse_ilp(&wire), Some(t));
        let g = GeneralizedTime::from(t);
        prop_assert_eq!(GeneralizedTime::parse(&g.to_bytes()), Some(g));
        prop_assert_eq!(g.0.to_timestamp(), t);
    }

    #[test]
    fn generated_addresses_validate(a in address()) {
        prop_assert!(validate_address(a.as_bytes()).is_ok());
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes.clone());
        let _ = Packet::decode(b.clone());
        let _ = Prepare::decode(b.clone());
        let _ = Fulfill::decode(b.clone());
        let _ = Reject::decode(b.clone());
        let _ = BtpPacket::decode(b);
        let _ = Timestamp::parse_ilp(&bytes);
        let _ = GeneralizedTime::parse(&bytes);
        let _ = validate_address(&bytes);
        let _ = validate_prefix(&bytes);
        let mut r = Reader::new(&bytes);
        let _ = r.read_var_uint();
        let _ = r.read_length();
        let mut m = bytes.clone();
        let _ = rewrite_prepare(&mut m, 1, Timestamp::from_unix_millis(0));
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_frames(pos: prop::sample::Index, byte: u8,
                                                    cut: prop::sample::Index) {
        // Start from a valid MESSAGE carrying a Prepare, flip one byte and truncate somewhere:
        // this reaches deep into the nested decoders, unlike purely random bytes.
        let cond = [9u8; 32];
        let mut ilp = BytesMut::new();
        PrepareFields { amount: 1, expires_at: Timestamp::from_unix_millis(0),
                        execution_condition: &cond, destination: b"test.a.b", data: &[1; 150] }
            .encode(&mut ilp);
        let mut frame = BytesMut::new();
        btp::encode_ilp(&mut frame, btp::BtpType::Message, 1, &ilp);
        let i = pos.index(frame.len());
        frame[i] = byte;
        let end = cut.index(frame.len() + 1);
        let b = frame.freeze().slice(..end);
        if let Ok(p) = BtpPacket::decode(b) {
            if let Some(ilp) = p.ilp() {
                let _ = Packet::decode(ilp);
            }
        }
    }
}

/// Every message a socket in `role` finds in `input` (as if one read had brought it all),
/// until the input runs out or is refused.
fn websocket_messages(role: Role, input: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut s = Socket::new(futures_lite::io::Cursor::new(Vec::new()), role, input);
    let mut messages = Vec::new();
    loop {
        match s.next_buffered() {
            Ok(Some(Incoming::Binary(b))) => messages.push(b.to_vec()),
            Ok(Some(Incoming::Close)) | Ok(None) => return (messages, true),
            Err(_) => return (messages, false),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn websocket_frames_round_trip(payloads in prop::collection::vec(data(70_000), 1..4),
                                   masked: bool, key: [u8; 4]) {
        let mut wire = Vec::new();
        for p in &payloads {
            encode_frame(&mut wire, Opcode::Binary, p, masked.then_some(key));
        }
        // A server reads masked frames; a client reads unmasked ones.
        let role = if masked { Role::Server } else { Role::Client };
        let (got, ok) = websocket_messages(role, &wire);
        let fitting: Vec<&Vec<u8>> = payloads.iter().take_while(|p| p.len() <= MAX_MESSAGE_SIZE).collect();
        prop_assert_eq!(got.len(), fitting.len());
        for (g, p) in got.iter().zip(fitting) {
            prop_assert_eq!(g, p);
        }
        // Refused exactly when a message is over the limit.
        prop_assert_eq!(ok, payloads.iter().all(|p| p.len() <= MAX_MESSAGE_SIZE));
        let first = parse_header(&wire, usize::MAX).unwrap().unwrap();
        prop_assert_eq!(first.payload_len, payloads[0].len());
        prop_assert_eq!(first.mask, masked.then_some(key));
    }

    #[test]
    fn websocket_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                     server: bool, max in 0usize..300) {
        let _ = parse_header(&bytes, max);
        let _ = websocket_messages(if server { Role::Server } else { Role::Client }, &bytes);
    }
}
