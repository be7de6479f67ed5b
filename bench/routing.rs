//! Routing benchmarks: lookup at 10, 10 000 and 1 000 000 routes (trie vs naive scan), lookup
//! through a shard's view, memory per route, and build time for 1 000 000 routes.
//!
//! Run: `cargo bench --bench routing`

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ilp_connector::routing::{naive_lookup, Route, RoutingTable, Trie};

/// Realistic route prefixes: `g.<neighbourhood>.<institution>.<account>`.
fn prefix(i: usize) -> String {
    format!("g.n{}.bank{}.acct{}", i % 97, (i / 97) % 1009, i)
}

fn routes(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| Route::new(&prefix(i), &format!("peer{}", i % 64)).unwrap())
        .collect()
}

/// Destinations under route prefixes, with an interaction suffix as STREAM adds.
fn destinations(n: usize) -> Vec<Vec<u8>> {
    (0..1024)
        .map(|k| {
            let i = (k * 7919) % n;
            format!(
                "{}.~ipr.cdfa5e16-e759-4ba3-88f6-8b9dc83c1868.{k}",
                prefix(i)
            )
            .into_bytes()
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_lookup");
    for n in [10usize, 10_000, 1_000_000] {
        let rs = routes(n);
        let t0 = Instant::now();
        let trie = Trie::build(rs.iter().cloned(), None);
        let built = t0.elapsed();
        eprintln!(
            "routes={n}: build {:.3} s, {} bytes heap, {:.1} bytes/route",
            built.as_secs_f64(),
            trie.heap_bytes(),
            trie.heap_bytes() as f64 / n as f64
        );
        let dests = destinations(n);
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("trie", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(trie.lookup(black_box(&dests[k])))
            })
        });
        if n <= 10_000 {
            g.bench_with_input(BenchmarkId::new("naive", n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(naive_lookup(&rs, None, black_box(&dests[k])))
                })
            });
        }
        if n == 10_000 {
            let table = RoutingTable::new();
            let pairs: Vec<(String, String)> = rs
                .iter()
                .map(|r| (r.prefix().to_owned(), r.next_hop().to_owned()))
                .collect();
            table
                .replace_all(pairs.iter().map(|(p, h)| (p.as_str(), h.as_str())), None)
                .unwrap();
            let mut view = table.view();
            g.bench_with_input(BenchmarkId::new("shard_view", n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(view.lookup(black_box(&dests[k])).is_some())
                })
            });
        }
    }
    g.finish();

    let rs = routes(1_000_000);
    let mut g = c.benchmark_group("routing_build");
    g.sample_size(10);
    g.bench_function("build_1m", |b| {
        b.iter(|| black_box(Trie::build(rs.iter().cloned(), None).len()))
    });
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
