//! Every vector in `tests/fixtures/ccp-vectors.json` (a copy of `shared/spec/ccp-vectors.json`):
//! payloads and the Prepares carrying them decode to their stated fields and re-encode byte
//! for byte; the invalid Prepares are refused by the rules a CCP endpoint applies (destination,
//! peer-protocol condition, expiry at the vector's clock); the answers decode as stated.

use bytes::{Bytes, BytesMut};
use ilp_connector::codec::ccp::{
    RouteControl, RouteUpdate, ROUTE_CONTROL_DESTINATION, ROUTE_UPDATE_DESTINATION,
};
use ilp_connector::codec::ildcp::{PEER_PROTOCOL_CONDITION, PEER_PROTOCOL_FULFILLMENT};
use ilp_connector::codec::{Packet, Timestamp};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ccp-vectors.json"
    ))
    .expect("fixture file");
    serde_json::from_str::<Value>(&text)
        .expect("fixture json")
        .as_array()
        .expect("an array")
        .clone()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn uuid(v: &Value) -> [u8; 16] {
    let text = v.as_str().expect("uuid text").replace('-', "");
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("16 bytes")
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().expect("number") as u32
}

fn check_control(c: &RouteControl, f: &Value, name: &str) {
    assert_eq!(u64::from(c.mode), f["mode"].as_u64().unwrap(), "{name}");
    assert_eq!(
        c.last_known_table_id,
        uuid(&f["lastKnownRoutingTableId"]),
        "{name}"
    );
    assert_eq!(c.last_known_epoch, u32_of(&f["lastKnownEpoch"]), "{name}");
    let features: Vec<&str> = f["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(c.features, features, "{name}");
}

fn check_update(u: &RouteUpdate, f: &Value, name: &str) {
    assert_eq!(u.table_id, uuid(&f["routingTableId"]), "{name}");
    assert_eq!(u.current_epoch, u32_of(&f["currentEpochIndex"]), "{name}");
    assert_eq!(u.from_epoch, u32_of(&f["fromEpochIndex"]), "{name}");
    assert_eq!(u.to_epoch, u32_of(&f["toEpochIndex"]), "{name}");
    assert_eq!(u.hold_down_ms, u32_of(&f["holdDownTime"]), "{name}");
    assert_eq!(u.speaker, f["speaker"].as_str().unwrap(), "{name}");
    let routes = f["newRoutes"].as_array().unwrap();
    assert_eq!(u.new_routes.len(), routes.len(), "{name}");
    for (r, want) in u.new_routes.iter().zip(routes) {
        assert_eq!(r.prefix, want["prefix"].as_str().unwrap(), "{name}");
        let path: Vec<&str> = want["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(r.path, path, "{name}");
        assert_eq!(r.auth.to_vec(), unhex(&want["auth"]), "{name}");
        let props = want["props"].as_array().unwrap();
        assert_eq!(r.props.len(), props.len(), "{name}");
        for (p, w) in r.props.iter().zip(props) {
            assert_eq!(u64::from(p.meta), w["meta"].as_u64().unwrap(), "{name}");
            assert_eq!(u64::from(p.id), w["id"].as_u64().unwrap(), "{name}");
            let value = if w["isUtf8"] == true {
                w["value"].as_str().unwrap().as_bytes().to_vec()
            } else {
                unhex(&w["value"])
            };
            assert_eq!(p.value, &value[..], "{name}");
        }
    }
    let withdrawn: Vec<&str> = f["withdrawnRoutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(u.withdrawn, withdrawn, "{name}");
}

/// Decodes a payload as `kind`, checks the fields, re-encodes it.
fn payload(kind: &str, data: &[u8], f: &Value, name: &str) {
    let mut out = BytesMut::new();
    match kind {
        "route_control" => {
            let c = RouteControl::decode(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            check_control(&c, f, name);
            c.encode(&mut out);
        }
        "route_update" => {
            let u = RouteUpdate::decode(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            check_update(&u, f, name);
            u.encode(&mut out);
        }
        other => panic!("{name}: unknown kind {other}"),
    }
    assert_eq!(&out[..], data, "{name}: re-encoded");
}

#[test]
fn every_ccp_vector() {
    let mut seen = 0;
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(&v["hex"]);
        let f = &v["fields"];
        let valid = v["valid"].as_bool().unwrap();
        match v["type"].as_str().unwrap() {
            kind @ ("route_control" | "route_update") => payload(kind, &bytes, f, name),
            "prepare_wrapping" => {
                let packet = Packet::decode(Bytes::from(bytes.clone()))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                match (f["packetType"].as_str().unwrap(), packet) {
                    ("ilp_prepare", Packet::Prepare(p)) => {
                        assert_eq!(
                            p.amount().to_string(),
                            f["amount"].as_str().unwrap(),
                            "{name}"
                        );
                        assert_eq!(
                            p.destination_str(),
                            f["destination"].as_str().unwrap(),
                            "{name}"
                        );
                        assert_eq!(p.data(), &unhex(&f["data"])[..], "{name}");
                        let wire = f["expiresAtWire"].as_str().unwrap();
                        assert_eq!(
                            Some(p.expires_at()),
                            Timestamp::parse_ilp(wire.as_bytes()),
                            "{name}"
                        );
                        assert_eq!(
                            p.expires_at().to_string(),
                            f["expiresAt"].as_str().unwrap(),
                            "{name}"
                        );
                        let kind = f["ccpType"].as_str();
                        if let Some(kind) = kind {
                            payload(kind, p.data(), &f["ccp"], name);
                        }
                        // The checks an endpoint makes, at the vector's clock (the expiry of
                        // a valid one minus 60 s, since every Prepare was made at now + 60 s).
                        let clock = match name.starts_with("fixture") {
                            true => "20150616000000000",
                            false => "20260101000000000",
                        };
                        let now = Timestamp::parse_ilp(clock.as_bytes()).unwrap();
                        let destination_ok = match kind {
                            Some("route_control") => p.destination() == ROUTE_CONTROL_DESTINATION,
                            Some("route_update") => p.destination() == ROUTE_UPDATE_DESTINATION,
                            _ => false,
                        };
                        let accepted = destination_ok
                            && p.execution_condition() == &PEER_PROTOCOL_CONDITION
                            && p.expires_at() > now
                            && p.amount() == 0;
                        // Live captures were taken at their own clock; only their form matters.
                        if !name.starts_with("live") {
                            assert_eq!(accepted, valid, "{name}");
                        }
                    }
                    ("ilp_fulfill", Packet::Fulfill(ful)) => {
                        assert_eq!(
                            ful.fulfillment().to_vec(),
                            unhex(&f["fulfillment"]),
                            "{name}"
                        );
                        assert_eq!(ful.data(), &unhex(&f["data"])[..], "{name}");
                        assert_eq!(
                            ful.fulfillment() == &PEER_PROTOCOL_FULFILLMENT,
                            valid,
                            "{name}"
                        );
                    }
                    ("ilp_reject", Packet::Reject(r)) => {
                        assert_eq!(r.code().as_str(), f["code"].as_str().unwrap(), "{name}");
                        assert_eq!(
                            r.triggered_by(),
                            f["triggeredBy"].as_str().unwrap().as_bytes(),
                            "{name}"
                        );
                        assert_eq!(
                            r.message(),
                            f["message"].as_str().unwrap().as_bytes(),
                            "{name}"
                        );
                    }
                    (t, p) => panic!("{name}: expected {t}, decoded {p:?}"),
                }
            }
            other => panic!("{name}: unknown type {other}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 32, "every vector was checked");
}
