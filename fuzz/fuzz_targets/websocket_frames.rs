//! Fuzzes a link's WebSocket reader (frame headers, unmasking, fragments, control frames) in
//! both roles: no input may panic. The first byte picks the role.
#![no_main]

use ilp_connector::btp::socket::{Role, Socket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 { Role::Client } else { Role::Server };
    let mut s = Socket::new(futures_lite::io::Cursor::new(Vec::new()), role, input);
    while let Ok(Some(_)) = s.next_buffered() {}
});
