//! Fuzzes the CCP decoders (route control and route update, what a peer sends us): no input
//! may panic, and what decodes re-encodes to the same bytes.
#![no_main]

use bytes::BytesMut;
use ilp_connector::codec::ccp::{RouteControl, RouteUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = RouteControl::decode(data) {
        let mut out = BytesMut::new();
        c.encode(&mut out);
        assert_eq!(&out[..], data);
    }
    if let Ok(u) = RouteUpdate::decode(data) {
        let mut out = BytesMut::new();
        u.encode(&mut out);
        assert_eq!(&out[..], data);
    }
});
