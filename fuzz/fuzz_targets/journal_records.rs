//! Fuzzes the balance journal's record reader (what recovery reads after a crash or from a
//! damaged disk): no input may panic, and every record it returns re-encodes to the bytes it
//! came from.
#![no_main]

use ilp_connector::accounts::journal::parse_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, torn) = parse_records(data);
    let mut again = Vec::new();
    for r in &records {
        r.encode(&mut again);
    }
    let intact = torn.map_or(data.len(), |t| t as usize);
    assert_eq!(&again[..], &data[..intact]);
});
