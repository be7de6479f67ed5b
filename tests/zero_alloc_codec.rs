//! Decoding a Prepare (bare or inside a BTP MESSAGE) and rewriting it in place allocate
//! nothing: checked with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::ilp::rewrite_prepare;
use ilp_connector::codec::{BtpPacket, Prepare, PrepareFields, Timestamp};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn prepare_parse_allocates_nothing() {
    let cond = [1u8; 32];
    let mut ilp = BytesMut::new();
    PrepareFields {
        amount: 5,
        expires_at: Timestamp::from_unix_millis(1_900_000_000_000),
        execution_condition: &cond,
        destination: b"g.us-fed.acmebank.alice.x7q2a3",
        data: &[2u8; 32],
    }
    .encode(&mut ilp);
    let ilp: Bytes = ilp.freeze();
    let mut frame = BytesMut::new();
    btp::encode_ilp(&mut frame, BtpType::Message, 1, &ilp);
    let frame = frame.freeze();
    let mut scratch = BytesMut::from(&ilp[..]);

    // The first clone of a `Bytes` made from a `BytesMut` promotes it to a shared buffer (one
    // allocation, once per buffer); steady state starts after it.
    let _warm = (ilp.clone(), frame.clone());
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut sum = 0u64;
    for _ in 0..1000 {
        let p = Prepare::decode(ilp.clone()).unwrap();
        sum += p.amount();
        let m = BtpPacket::decode(frame.clone()).unwrap();
        let inner = Prepare::decode(m.ilp().unwrap()).unwrap();
        sum += inner.amount();
        rewrite_prepare(&mut scratch, 7, Timestamp::from_unix_millis(0)).unwrap();
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(sum, 10_000);
    assert_eq!(after - before, 0, "allocations during 1000 decodes");
}
