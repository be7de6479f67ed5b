//! Fuzzes the ILP decoders: no input may panic, and whatever decodes must re-encode to the
//! exact bytes it was decoded from (canonical OER means one encoding per value).
#![no_main]

use bytes::{Bytes, BytesMut};
use ilp_connector::codec::ilp::rewrite_prepare;
use ilp_connector::codec::{Packet, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut out = BytesMut::new();
    let original = match &packet {
        Packet::Prepare(p) => {
            p.to_fields().encode(&mut out);
            p.as_bytes()
        }
        Packet::Fulfill(f) => {
            f.to_fields().encode(&mut out);
            f.as_bytes()
        }
        Packet::Reject(r) => {
            r.to_fields().encode(&mut out);
            r.as_bytes()
        }
    };
    // Content may carry tolerated trailing bytes inside the envelope; compare only when the
    // envelope is exactly the fields.
    if out.len() == original.len() {
        assert_eq!(&out[..], &original[..]);
    }
    if let Packet::Prepare(p) = packet {
        let mut m = BytesMut::from(&p.as_bytes()[..]);
        rewrite_prepare(&mut m, 42, Timestamp::from_unix_millis(0)).expect("valid prepare");
    }
});
