//! Heap allocations per forwarded packet on the connector's shard threads, in steady state,
//! counted by a global allocator that only counts on threads named `ilp-shard-*`.
//!
//! The connector's own packet path allocates nothing (pooled workers, recycled frame buffers,
//! answer slots instead of channels); what remains is glommio's reactor allocating per I/O
//! wait (poll sources, ring submissions), which batching spreads over many packets. Call
//! stacks: bench/RESULTS.md. This test guards the bound: fewer than one allocation per packet
//! at 64 in flight (before pooling it was about four).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ilp_connector::codec::Packet;
use ilp_connector::config::Config;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

struct CountOnShards;

static SHARD_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0 = not yet known, 1 = shard thread, 2 = other, 3 = finding out (allocations made
    /// while reading the thread's name are not counted).
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn on_shard_thread() -> bool {
    KIND.try_with(|k| match k.get() {
        1 => true,
        0 => {
            k.set(3);
            let shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("ilp-shard"));
            k.set(if shard { 1 } else { 2 });
            shard
        }
        _ => false,
    })
    .unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts allocations.
unsafe impl GlobalAlloc for CountOnShards {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_shard_thread() {
            SHARD_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountOnShards = CountOnShards;

const IN_FLIGHT: usize = 64;

/// Sends `rounds` × `IN_FLIGHT` packets, `IN_FLIGHT` at a time; returns how many were fulfilled.
async fn blast(s: &Rc<SenderLink>, rounds: usize) -> usize {
    let fulfilled = Rc::new(Cell::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (s, fulfilled) = (s.clone(), fulfilled.clone());
            glommio::spawn_local(async move {
                for _ in 0..rounds {
                    if let Ok(Packet::Fulfill(_)) =
                        s.send("test.n.receiver.x", 1, 30_000, b"alloc").await
                    {
                        fulfilled.set(fulfilled.get() + 1);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
    fulfilled.get()
}

#[test]
fn forwarding_allocates_less_than_once_per_packet() {
    let f = Fulfiller::start("n", "secret-r", Mode::Fulfill);
    let node = ilp_connector::admin::start_node(
        Config::from_yaml(&format!(
            "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\npeers:\n  - {{id: sender, relation: child, authToken: secret-s}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
            f.url()
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)));
    let url = format!("ws://127.0.0.1:{}", node.btp_port());
    let (packets, allocs) = run_local(move || async move {
        let s = Rc::new(
            SenderLink::connect(&url, "sender", "secret-s")
                .await
                .unwrap(),
        );
        // Warm-up: workers, buffers, maps and queues reach their steady size.
        assert_eq!(blast(&s, 100).await, 100 * IN_FLIGHT);
        let before = SHARD_ALLOCS.load(Ordering::Relaxed);
        let packets = blast(&s, 300).await;
        (packets, SHARD_ALLOCS.load(Ordering::Relaxed) - before)
    });
    assert_eq!(packets, 300 * IN_FLIGHT);
    let per_packet = allocs as f64 / packets as f64;
    println!(
        "{allocs} allocations on shard threads for {packets} packets: {per_packet:.3} per packet"
    );
    assert!(
        per_packet < 1.0,
        "{per_packet:.3} allocations per forwarded packet"
    );
}
