//! Every vector in `tests/fixtures/vectors.json` (a copy of `shared/spec/vectors.json`):
//! decodes to its stated fields, re-encodes byte for byte, and the invalid ones fail with the
//! right error.

use bytes::{Bytes, BytesMut};
use ilp_connector::codec::btp::{self, BtpBody, BtpPacket, ProtocolData};
use ilp_connector::codec::ildcp::{IldcpResponse, PEER_PROTOCOL_CONDITION};
use ilp_connector::codec::oer::{put_length, put_var_octets, put_var_uint, Reader};
use ilp_connector::codec::{
    validate_address, DecodeErrorKind, Fulfill, GeneralizedTime, Prepare, Reject, Timestamp,
};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vectors.json"
    ))
    .expect("fixture file");
    serde_json::from_str(&text).expect("fixture json")
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().expect("u64"),
        Value::String(s) => s.parse().expect("decimal u64"),
        other => panic!("not a number: {other}"),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

#[test]
fn length_determinants() {
    let v = vectors();
    let p = &v["primitives"]["length_determinant"];
    for case in p["valid"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        let mut r = Reader::new(&bytes);
        let value = r.read_length().unwrap() as u64;
        assert_eq!(value, num(&case["value"]), "{case}");
        assert!(r.is_empty());
        let mut out = Vec::new();
        put_length(&mut out, value as usize);
        assert_eq!(out, bytes, "{case}");
    }
    for case in p["invalid"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        let err = Reader::new(&bytes).read_length().unwrap_err();
        let expected = match s(&case["hex"]) {
            "80" => DecodeErrorKind::IndefiniteLength,
            "8201" => DecodeErrorKind::UnexpectedEof {
                needed: 2,
                available: 1,
            },
            _ => DecodeErrorKind::NonCanonicalLength,
        };
        assert_eq!(err.kind, expected, "{case}");
    }
}

#[test]
fn var_uints_and_fixed_uints_and_octet_strings() {
    let v = vectors();
    let p = &v["primitives"]["var_uint"];
    for case in p["valid"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        assert_eq!(
            Reader::new(&bytes).read_var_uint().unwrap(),
            num(&case["value"])
        );
        let mut out = Vec::new();
        put_var_uint(&mut out, num(&case["value"]));
        assert_eq!(out, bytes);
    }
    let invalid = p["invalid"].as_array().unwrap();
    assert_eq!(
        Reader::new(&hex_of(&invalid[0]["hex"]))
            .read_var_uint()
            .unwrap_err()
            .kind,
        DecodeErrorKind::EmptyVarUint
    );
    assert_eq!(
        Reader::new(&hex_of(&invalid[1]["hex"]))
            .read_var_uint()
            .unwrap_err()
            .kind,
        DecodeErrorKind::VarUintLeadingZero
    );

    for case in v["primitives"]["fixed_uint"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        let mut r = Reader::new(&bytes);
        let value = match s(&case["type"]) {
            "UInt8" => u64::from(r.read_u8().unwrap()),
            "UInt16" => u64::from(u16::from_be_bytes(*r.read_array::<2>().unwrap())),
            "UInt32" => u64::from(r.read_u32().unwrap()),
            "UInt64" => r.read_u64().unwrap(),
            other => panic!("unknown type {other}"),
        };
        assert_eq!(value, num(&case["value"]));
        assert!(r.is_empty());
    }

    for case in v["primitives"]["var_octet_string"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        let content = Reader::new(&bytes).read_var_octets().unwrap();
        let expected = match case.get("value") {
            Some(text) => s(text).as_bytes().to_vec(),
            None => hex_of(&case["value_hex"]),
        };
        assert_eq!(content, expected.as_slice());
        let mut out = Vec::new();
        put_var_octets(&mut out, content);
        assert_eq!(out, bytes);
    }
}

#[test]
fn ilp_timestamps() {
    let v = vectors();
    let p = &v["primitives"]["ilp_timestamp"];
    for case in p["wire"].as_array().unwrap() {
        assert_eq!(hex_of(&case["hex"]), s(&case["value"]).as_bytes());
        let t = Timestamp::parse_ilp(s(&case["value"]).as_bytes()).unwrap();
        assert_eq!(&t.to_ilp_bytes(), s(&case["value"]).as_bytes());
    }
    for case in p["valid"].as_array().unwrap() {
        let t = Timestamp::parse_ilp(s(&case["wire"]).as_bytes()).unwrap();
        assert_eq!(t.to_string(), s(&case["iso"]));
        assert_eq!(&t.to_ilp_bytes(), s(&case["wire"]).as_bytes());
    }
    for case in p["invalid"].as_array().unwrap() {
        assert!(Timestamp::parse_ilp(s(case).as_bytes()).is_none(), "{case}");
    }
}

#[test]
fn generalized_times() {
    let v = vectors();
    let p = &v["primitives"]["generalized_time"];
    for case in p["wire"].as_array().unwrap() {
        let bytes = hex_of(&case["hex"]);
        let content = Reader::new(&bytes).read_var_octets().unwrap();
        assert_eq!(content, s(&case["value"]).as_bytes());
        assert!(GeneralizedTime::parse(content).is_some());
    }
    for case in p["valid"].as_array().unwrap() {
        let g = GeneralizedTime::parse(s(&case["wire"]).as_bytes()).expect("valid");
        assert_eq!(g.0.to_string(), s(&case["iso"]), "{case}");
        // We always emit the three-digit form the JS reference reads.
        let emitted = g.to_bytes();
        assert_eq!(emitted[14], b'.');
        assert_eq!(GeneralizedTime::parse(&emitted), Some(g));
    }
    for case in p["invalid"].as_array().unwrap() {
        assert!(
            GeneralizedTime::parse(s(case).as_bytes()).is_none(),
            "{case}"
        );
    }
}

#[test]
fn ilp_addresses() {
    let v = vectors();
    let p = &v["primitives"]["ilp_address"];
    for case in p["valid"].as_array().unwrap() {
        assert!(validate_address(s(case).as_bytes()).is_ok(), "{case}");
    }
    for case in p["invalid"].as_array().unwrap() {
        assert!(validate_address(s(case).as_bytes()).is_err(), "{case}");
    }
    assert_eq!(p["max_length"].as_u64(), Some(1023));
    for (len, valid) in [(1023usize, true), (1024, false)] {
        let addr = format!("g.{}", "a".repeat(len - 2));
        assert_eq!(validate_address(addr.as_bytes()).is_ok(), valid);
    }
    assert_eq!(p["length_cases"].as_array().unwrap().len(), 2);
}

#[test]
fn constants() {
    let v = vectors();
    let c = &v["primitives"]["constants"];
    assert_eq!(
        hex_of(&c["peer_protocol_condition"]),
        PEER_PROTOCOL_CONDITION
    );
    assert_eq!(hex_of(&c["peer_protocol_fulfillment"]), [0u8; 32]);
}

fn check_prepare(bytes: &[u8], f: &Value) {
    let p = Prepare::decode(Bytes::copy_from_slice(bytes)).expect("prepare decodes");
    assert_eq!(p.amount(), num(&f["amount"]));
    assert_eq!(p.expires_at().to_string(), s(&f["expiresAt"]));
    assert_eq!(
        &p.expires_at().to_ilp_bytes(),
        s(&f["expiresAtWire"]).as_bytes()
    );
    assert_eq!(
        p.execution_condition().as_slice(),
        hex_of(&f["executionCondition"])
    );
    assert_eq!(p.destination(), s(&f["destination"]).as_bytes());
    assert_eq!(p.data(), hex_of(&f["data"]).as_slice());
    let mut out = BytesMut::new();
    p.to_fields().encode(&mut out);
    assert_eq!(&out[..], bytes, "re-encode");
    assert_eq!(p.to_fields().encoded_len(), bytes.len());
}

fn check_fulfill(bytes: &[u8], f: &Value) -> Fulfill {
    let p = Fulfill::decode(Bytes::copy_from_slice(bytes)).expect("fulfill decodes");
    assert_eq!(p.fulfillment().as_slice(), hex_of(&f["fulfillment"]));
    assert_eq!(p.data(), hex_of(&f["data"]).as_slice());
    let mut out = BytesMut::new();
    p.to_fields().encode(&mut out);
    assert_eq!(&out[..], bytes, "re-encode");
    p
}

fn check_reject(bytes: &[u8], f: &Value) {
    let p = Reject::decode(Bytes::copy_from_slice(bytes)).expect("reject decodes");
    assert_eq!(p.code().as_str(), s(&f["code"]));
    assert_eq!(p.triggered_by(), s(&f["triggeredBy"]).as_bytes());
    assert_eq!(p.message(), s(&f["message"]).as_bytes());
    assert_eq!(p.data(), hex_of(&f["data"]).as_slice());
    let mut out = BytesMut::new();
    p.to_fields().encode(&mut out);
    assert_eq!(&out[..], bytes, "re-encode");
}

fn check_ilp(type_byte: u64, bytes: &[u8], f: &Value) {
    match type_byte {
        12 => check_prepare(bytes, f),
        13 => {
            check_fulfill(bytes, f);
        }
        14 => check_reject(bytes, f),
        other => panic!("unexpected ILP type {other}"),
    }
}

fn check_btp(bytes: &[u8], f: &Value) {
    let p = BtpPacket::decode(Bytes::copy_from_slice(bytes)).expect("btp decodes");
    assert_eq!(p.kind() as u64, num(&f["type"]));
    assert_eq!(u64::from(p.request_id()), num(&f["requestId"]));
    let expected = f["protocolData"].as_array().unwrap();
    assert_eq!(p.len_entries(), expected.len());
    for (got, want) in p.entries().zip(expected) {
        assert_eq!(got.name, s(&want["protocolName"]).as_bytes());
        assert_eq!(u64::from(got.content_type), num(&want["contentType"]));
        assert_eq!(got.data, hex_of(&want["data"]).as_slice());
        if let Some(ilp) = want.get("decodedIlp") {
            check_ilp(num(&ilp["type"]), got.data, &ilp["fields"]);
        }
    }
    if let Some(ilp) = expected.first().and_then(|e| e.get("decodedIlp")) {
        assert_eq!(
            p.ilp().unwrap().as_ref(),
            hex_of(&expected[0]["data"]).as_slice()
        );
        assert_eq!(num(&ilp["type"]), u64::from(p.ilp().unwrap()[0]));
    }
    let entries: Vec<ProtocolData> = p.entries().collect();
    let body = match p.kind() {
        btp::BtpType::Response => BtpBody::Response,
        btp::BtpType::Message => BtpBody::Message,
        btp::BtpType::Transfer => {
            assert_eq!(p.amount(), num(&f["amount"]));
            BtpBody::Transfer { amount: p.amount() }
        }
        btp::BtpType::Error => {
            let e = p.error().unwrap();
            assert_eq!(e.code, s(&f["code"]).as_bytes());
            assert_eq!(e.name, s(&f["name"]).as_bytes());
            assert_eq!(e.triggered_at, s(&f["triggeredAtWire"]).as_bytes());
            assert_eq!(
                e.triggered_at_time().unwrap().0.to_string(),
                s(&f["triggeredAt"])
            );
            let data_hex = f.get("dataHex").map(hex_of);
            assert_eq!(
                e.data,
                data_hex.as_deref().unwrap_or(s(&f["data"]).as_bytes())
            );
            BtpBody::Error {
                code: e.code,
                name: e.name,
                triggered_at: e.triggered_at,
                data: e.data,
            }
        }
    };
    let mut out = BytesMut::new();
    btp::encode(&mut out, p.request_id(), body, &entries);
    assert_eq!(&out[..], bytes, "re-encode");
}

#[test]
fn packet_vectors_decode_and_reencode() {
    let v = vectors();
    let list = v["vectors"].as_array().unwrap();
    assert_eq!(list.len(), 36);
    for vector in list {
        let name = s(&vector["name"]);
        let bytes = hex_of(&vector["hex"]);
        let f = &vector["fields"];
        let result = std::panic::catch_unwind(|| match s(&vector["kind"]) {
            "ilp_prepare" | "ccp_control_prepare" | "ccp_update_prepare" => {
                check_prepare(&bytes, f)
            }
            "ilp_fulfill" => {
                check_fulfill(&bytes, f);
            }
            "ilp_reject" => check_reject(&bytes, f),
            "ildcp_response" => {
                let p = check_fulfill(&bytes, f);
                let r = IldcpResponse::decode(p.data()).unwrap();
                assert_eq!(r.client_address, s(&f["ildcp"]["clientAddress"]).as_bytes());
                assert_eq!(u64::from(r.asset_scale), num(&f["ildcp"]["assetScale"]));
                assert_eq!(r.asset_code, s(&f["ildcp"]["assetCode"]));
                let mut out = BytesMut::new();
                r.encode(&mut out);
                assert_eq!(&out[..], p.data());
            }
            "btp" => check_btp(&bytes, f),
            other => panic!("unknown kind {other}"),
        });
        assert!(result.is_ok(), "vector {name} failed");
    }
}

#[test]
fn matched_pair_hash_check() {
    use sha2::{Digest, Sha256};
    let v = vectors();
    let find = |n: &str| {
        let list = v["vectors"].as_array().unwrap();
        let vec = list.iter().find(|x| x["name"] == n).unwrap();
        Bytes::from(hex_of(&vec["hex"]))
    };
    let prepare = Prepare::decode(find("ilp_prepare_matched_pair")).unwrap();
    let good = Fulfill::decode(find("ilp_fulfill_matched_pair")).unwrap();
    let bad = Fulfill::decode(find("ilp_fulfill_wrong_preimage")).unwrap();
    let hash = |f: &Fulfill| -> [u8; 32] { Sha256::digest(f.fulfillment()).into() };
    assert_eq!(&hash(&good), prepare.execution_condition());
    assert_ne!(&hash(&bad), prepare.execution_condition());
}

#[test]
fn invalid_vectors_fail_with_the_right_error() {
    let v = vectors();
    for case in v["invalid"].as_array().unwrap() {
        let name = s(&case["name"]);
        let bytes = Bytes::from(hex_of(&case["hex"]));
        match name {
            "ilp_prepare_noncanonical_length" => {
                let e = Prepare::decode(bytes).unwrap_err();
                assert_eq!((e.kind, e.offset), (DecodeErrorKind::NonCanonicalLength, 1));
            }
            "ilp_prepare_truncated" => {
                let e = Prepare::decode(bytes).unwrap_err();
                assert!(
                    matches!(e.kind, DecodeErrorKind::UnexpectedEof { .. }),
                    "{e}"
                );
            }
            "ilp_prepare_bad_destination" => {
                let e = Prepare::decode(bytes).unwrap_err();
                assert!(matches!(e.kind, DecodeErrorKind::InvalidAddress(_)), "{e}");
                assert_eq!(
                    e.offset, 60,
                    "destination content starts after its length byte"
                );
            }
            "ilp_prepare_month_13" | "ilp_prepare_hour_24" | "ilp_prepare_nondigit_expiry" => {
                let e = Prepare::decode(bytes).unwrap_err();
                assert_eq!((e.kind, e.offset), (DecodeErrorKind::InvalidTimestamp, 10));
            }
            "btp_type_3_legacy_prepare" => {
                let e = BtpPacket::decode(bytes).unwrap_err();
                assert_eq!(e.kind, DecodeErrorKind::UnknownBtpType(3));
            }
            "ildcp_request_wrong_condition" => {
                let p = Prepare::decode(bytes).expect("well-formed");
                assert_ne!(p.execution_condition(), &PEER_PROTOCOL_CONDITION);
            }
            "ildcp_request_expired" => {
                let p = Prepare::decode(bytes).expect("well-formed");
                assert!(p.expires_at() < Timestamp::now());
            }
            other => panic!("invalid vector {other} has no expectation here"),
        }
    }
}

#[test]
fn interop_hazards() {
    let v = vectors();
    for case in v["interop_hazards"].as_array().unwrap() {
        assert_eq!(s(&case["expect"]), "accept");
        let bytes = hex_of(&case["hex"]);
        check_btp(&bytes, &case["fields"]);
    }
}
