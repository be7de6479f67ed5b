//! Fuzzes the BTP decoder and the ILP packet it carries: no input may panic.
#![no_main]

use bytes::Bytes;
use ilp_connector::codec::{BtpPacket, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = BtpPacket::decode(Bytes::copy_from_slice(data)) {
        let _ = p.error().map(|e| e.triggered_at_time());
        if let Some(ilp) = p.ilp() {
            let _ = Packet::decode(ilp);
        }
        for e in p.entries() {
            let _ = (e.name, e.content_type, e.data);
        }
    }
});
