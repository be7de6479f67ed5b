//! Routing table: matching rules, agreement with a naive reference, and concurrent publishing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ilp_connector::routing::{naive_lookup, Route, RouteError, RoutingTable, Trie};
use proptest::prelude::*;

fn table(routes: &[(&str, &str)], default_hop: Option<&str>) -> RoutingTable {
    let t = RoutingTable::new();
    t.replace_all(routes.iter().copied(), default_hop).unwrap();
    t
}

#[test]
fn matching_rules() {
    let routes = [
        ("g.a", "A"),
        ("g.a.b", "AB"),
        ("g.ab", "AB2"),
        ("test", "TEST"),
        ("test1.x.y", "XY"),
        ("private.p", "P"),
        ("example", "EX"),
        ("local", "LOCAL"),
        ("peer", "PEER"),
        ("self.me", "ME"),
    ];
    let t = table(&routes, None);
    let mut v = t.view();
    let cases: &[(&str, Option<&str>)] = &[
        ("g.a", Some("A")),           // exact
        ("g.a.x", Some("A")),         // longer address, shorter prefix
        ("g.a.b", Some("AB")),        // exact, longest wins
        ("g.a.b.c.d", Some("AB")),    // longer still
        ("g.ab", Some("AB2")),        // the segment boundary: g.a must not catch g.ab
        ("g.abc", None),              // neither g.a nor g.ab
        ("g.b", None),                // no route, no default
        ("g", None),                  // a prefix of a route is not a match
        ("test.alice", Some("TEST")), // bare-scheme root prefix
        ("test1.x", None),            // shorter than the only test1 route
        ("test1.x.y.z", Some("XY")),
        ("private.p.q", Some("P")),
        ("example.z", Some("EX")),
        ("local.c", Some("LOCAL")),
        ("peer.config", Some("PEER")),
        ("self.me", Some("ME")),
        ("self.meme", None),
    ];
    for (dest, want) in cases {
        assert_eq!(
            v.lookup(dest.as_bytes()).map(Route::next_hop),
            *want,
            "lookup {dest}"
        );
    }
}

#[test]
fn default_route_and_empty_table() {
    let t = RoutingTable::new();
    let mut v = t.view();
    assert!(v.lookup(b"g.a").is_none(), "empty table matches nothing");
    t.set_default(Some("up")).unwrap();
    assert_eq!(v.lookup(b"g.a").map(Route::next_hop), Some("up"));
    t.add("g.a", "A").unwrap();
    assert_eq!(v.lookup(b"g.a.b").map(Route::next_hop), Some("A"));
    assert_eq!(v.lookup(b"g.b").map(Route::next_hop), Some("up"));
    assert!(t.remove("g.a"));
    assert!(!t.remove("g.a"));
    assert_eq!(v.lookup(b"g.a.b").map(Route::next_hop), Some("up"));
    t.set_default(None).unwrap();
    assert!(v.lookup(b"g.a.b").is_none());
}

#[test]
fn add_replaces_and_invalid_prefixes_are_refused() {
    let t = RoutingTable::new();
    t.add("g.a", "one").unwrap();
    t.add("g.a", "two").unwrap();
    assert_eq!(t.snapshot().len(), 1);
    assert_eq!(
        t.snapshot().lookup(b"g.a").map(Route::next_hop),
        Some("two")
    );
    for bad in ["", "g.", "g..a", ".g", "nope.a", "g.a b", "test4"] {
        assert!(
            matches!(t.add(bad, "x"), Err(RouteError::InvalidPrefix { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        t.add("g.b", ""),
        Err(RouteError::EmptyNextHop { .. })
    ));
    // A failed replace_all leaves the table as it was.
    let gen = t.generation();
    assert!(t.replace_all([("g.c", "c"), ("bad", "x")], None).is_err());
    assert_eq!(t.generation(), gen);
    assert_eq!(t.snapshot().len(), 1);
}

fn segment() -> impl Strategy<Value = String> {
    // A tiny alphabet so random addresses share prefixes and hit segment-boundary cases;
    // the trie keys segments of up to 12 bytes as padded words and longer ones as bytes, so
    // lengths around 8 and 12 differ only in their last byte.
    prop::sample::select(vec![
        "a",
        "b",
        "ab",
        "a-",
        "ba",
        "c",
        "abcdefg",
        "abcdefgh",
        "abcdefgx",
        "abcdefghi",
        "abcdefghijk",
        "abcdefghijkl",
        "abcdefghijkx",
        "abcdefghijklm",
        "abcdefghijklx",
        "abcdefghijklmnopqrst",
    ])
    .prop_map(str::to_owned)
}

fn prefix() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["g", "test"]),
        prop::collection::vec(segment(), 0..4),
    )
        .prop_map(|(s, segs)| {
            std::iter::once(s.to_owned())
                .chain(segs)
                .collect::<Vec<_>>()
                .join(".")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn trie_agrees_with_naive_scan(
        routes in prop::collection::vec((prefix(), 0u8..5), 0..40),
        default_hop in prop::option::of(0u8..5),
        addrs in prop::collection::vec(prefix(), 1..40),
    ) {
        let routes: Vec<Route> = {
            // Deduplicate by prefix, keeping the last, as the table does.
            let mut m = std::collections::BTreeMap::new();
            for (p, h) in &routes {
                m.insert(p.clone(), Route::new(p, &format!("hop{h}")).unwrap());
            }
            m.into_values().collect()
        };
        let default_route = default_hop.map(|h| Route::default_to(&format!("hop{h}")).unwrap());
        let trie = Trie::build(routes.iter().cloned(), default_route.clone());
        for a in &addrs {
            let want = naive_lookup(&routes, default_route.as_ref(), a.as_bytes());
            prop_assert_eq!(trie.lookup(a.as_bytes()), want, "address {}", a);
        }
    }
}

/// Version `k` routes every prefix to `v{k}`; a reader that sees two different hops within one
/// snapshot, or a hop that was never published, has seen torn state.
#[test]
fn concurrent_readers_see_whole_versions() {
    const PREFIXES: [&str; 4] = ["g.a", "g.a.b", "g.c", "test.x"];
    let t = RoutingTable::new();
    let publish = |k: u32| {
        let hop = format!("v{k}");
        t.replace_all(PREFIXES.iter().map(|p| (*p, hop.as_str())), Some(&hop))
            .unwrap();
    };
    publish(0);
    let stop = Arc::new(AtomicBool::new(false));
    let versions_published = 300u32;
    let started = Arc::new(std::sync::Barrier::new(4));
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for _ in 0..3 {
            let t = t.clone();
            let stop = stop.clone();
            let started = started.clone();
            readers.push(s.spawn(move || {
                let mut view = t.view();
                let mut seen = 0u64;
                let mut last = 0u32;
                started.wait();
                loop {
                    let trie = view.current();
                    let hops: Vec<&str> = ["g.a.z", "g.a.b.q", "g.c", "test.x.y", "g.zzz"]
                        .iter()
                        .map(|a| trie.lookup(a.as_bytes()).unwrap().next_hop())
                        .collect();
                    assert!(hops.iter().all(|h| *h == hops[0]), "torn version: {hops:?}");
                    let k: u32 = hops[0][1..].parse().unwrap();
                    assert!(k <= versions_published);
                    assert!(k >= last, "a view went back in time: {k} after {last}");
                    last = k;
                    seen += 1;
                    if stop.load(Ordering::Relaxed) {
                        break seen;
                    }
                }
            }));
        }
        started.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        for k in 1..=versions_published {
            publish(k);
            assert!(Instant::now() < deadline, "publishing took too long");
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader panicked") > 0);
        }
    });
    assert_eq!(
        t.view().lookup(b"g.a").map(Route::next_hop),
        Some(format!("v{versions_published}").as_str())
    );
}
