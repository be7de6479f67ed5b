//! An immutable, segment-aware prefix trie over ILP addresses.
//!
//! Addresses are split at `.`; each trie edge is one whole segment, so prefix `g.a` matches
//! `g.a` and `g.a.x` but never `g.ab`. Lookup walks the destination's segments from the root,
//! one hash probe per segment, remembering the deepest node that carries a route: the cost
//! depends on the address length, not on the number of routes.
//!
//! Layout (chosen for memory and build speed at a million routes): all edges live in one
//! `hashbrown::HashTable` keyed by `(parent node, segment bytes)`; segment bytes live in one
//! shared arena; each node is a `u32` route index (or none). No per-node maps, no per-edge
//! allocation. A built trie is never mutated: [`super::table`] publishes new versions.
//!
//! A lookup scans the destination once: each segment of up to 12 bytes (nearly all of them)
//! becomes two zero-padded words as it is found ([`Key`]), which are hashed and compared as
//! such; no per-segment slice hashing or `memcmp`.

use core::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::Route;

const NO_ROUTE: u32 = u32::MAX;
const ROOT: u32 = 0;

/// Segments up to this long are stored in the edge itself, so the common probe touches one
/// cache line for the edge instead of also reading the arena.
const INLINE: usize = 12;

/// One trie edge: 32 bytes, so two fit a cache line.
#[derive(Debug, Clone, Copy)]
struct Edge {
    parent: u32,
    child: u32,
    /// The child's route (copied from `node_route` so a lookup needs no second array read).
    route: u32,
    len: u32,
    /// The segment bytes if `len <= INLINE`, else the first 4 bytes hold its `arena` offset.
    seg: [u8; INLINE],
}

impl Edge {
    #[inline]
    fn segment<'a>(&'a self, arena: &'a [u8]) -> &'a [u8] {
        let len = self.len as usize;
        if len <= INLINE {
            &self.seg[..len]
        } else {
            let start = u32::from_ne_bytes([self.seg[0], self.seg[1], self.seg[2], self.seg[3]]);
            &arena[start as usize..start as usize + len]
        }
    }
}

/// A segment of at most [`INLINE`] bytes as the edge table keys it: its bytes zero-padded
/// to 12, read as little-endian words, and its length.
#[derive(Debug, Clone, Copy)]
struct Key {
    lo: u64,
    hi: u32,
    len: u32,
}

impl Key {
    /// `seg` as a key, if it is short enough to be one.
    #[inline]
    fn of(seg: &[u8]) -> Option<Key> {
        Key::at(seg, seg.len())
    }

    /// The first `len` bytes of `bytes` (`len <= bytes.len()`) as a key, if `len` is short
    /// enough: with 12 bytes to read, two fixed-size loads and a mask; else byte by byte.
    #[inline]
    fn at(bytes: &[u8], len: usize) -> Option<Key> {
        if len > INLINE {
            return None;
        }
        let (lo, hi) = match bytes.first_chunk::<INLINE>() {
            Some(twelve) => {
                let (lo, hi) = words(twelve);
                let lo_mask = if len >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * len)) - 1
                };
                let hi_mask = match len {
                    ..=8 => 0,
                    12.. => u32::MAX,
                    n => (1u32 << (8 * (n - 8))) - 1,
                };
                (lo & lo_mask, hi & hi_mask)
            }
            None => {
                let mut pad = [0u8; INLINE];
                for (p, &b) in pad.iter_mut().zip(&bytes[..len]) {
                    *p = b;
                }
                words(&pad)
            }
        };
        Some(Key {
            lo,
            hi,
            len: len as u32,
        })
    }

    /// The padded words of an inline edge's segment.
    #[inline]
    fn inline(e: &Edge) -> (u64, u32) {
        words(&e.seg)
    }
}

/// How the edge table hashes segment `seg` under node `parent`, when building and looking
/// up alike: a short segment as its [`Key`]'s words, so a lookup can build them while it
/// scans the destination, without a variable-length copy or hash; a longer one as bytes.
#[inline]
fn hash_edge(hasher: &RandomState, parent: u32, seg: &[u8]) -> u64 {
    match Key::of(seg) {
        Some(k) => hash_key(hasher, parent, k),
        None => hash_long(hasher, parent, seg),
    }
}

/// [`hash_edge`] of a segment too long for a [`Key`].
#[inline]
fn hash_long(hasher: &RandomState, parent: u32, seg: &[u8]) -> u64 {
    hasher.hash_one((parent, seg))
}

#[inline]
fn hash_key(hasher: &RandomState, parent: u32, k: Key) -> u64 {
    hasher.hash_one((k.lo, u64::from(k.hi) | u64::from(k.len) << 32, parent))
}

#[inline]
fn words(pad: &[u8; INLINE]) -> (u64, u32) {
    let (lo, hi) = pad.split_at(8);
    (
        u64::from_le_bytes(lo.try_into().unwrap_or_default()),
        u32::from_le_bytes(hi.try_into().unwrap_or_default()),
    )
}

/// A built routing trie. Cheap to share behind an `Arc`; never changes after [`Trie::build`].
pub struct Trie {
    edges: HashTable<Edge>,
    arena: Vec<u8>,
    /// Per node: index into `routes`, or `NO_ROUTE` (build-time bookkeeping; lookups read the
    /// copy in [`Edge::route`]).
    node_route: Vec<u32>,
    routes: Vec<Route>,
    default_route: Option<Route>,
    hasher: RandomState,
}

impl Trie {
    /// Builds a trie from validated routes (later duplicates of a prefix replace earlier ones).
    pub fn build(routes: impl IntoIterator<Item = Route>, default_route: Option<Route>) -> Self {
        let mut t = Trie {
            edges: HashTable::new(),
            arena: Vec::new(),
            node_route: vec![NO_ROUTE],
            routes: Vec::new(),
            default_route,
            // A fresh random seed per version: prefixes can come from peers, so their hashes
            // must not be predictable.
            hasher: RandomState::default(),
        };
        let routes = routes.into_iter();
        let (lower, _) = routes.size_hint();
        t.routes.reserve(lower);
        t.node_route.reserve(lower);
        for route in routes {
            t.insert(route);
        }
        // Only building needs these; lookups read routes from the edges.
        t.node_route = Vec::new();
        t
    }

    /// The edge table's hash of segment `seg` under node `parent` (see [`hash_edge`]).
    #[inline]
    fn hash(&self, parent: u32, seg: &[u8]) -> u64 {
        hash_edge(&self.hasher, parent, seg)
    }

    #[inline]
    fn edge(&self, parent: u32, seg: &[u8]) -> Option<&Edge> {
        match Key::of(seg) {
            Some(k) => self.edge_by_key(parent, k),
            None => self.edge_long(parent, seg),
        }
    }

    /// [`edge`](Self::edge) for a segment too long for a [`Key`]: hashed and compared as bytes.
    #[inline]
    fn edge_long(&self, parent: u32, seg: &[u8]) -> Option<&Edge> {
        let h = hash_long(&self.hasher, parent, seg);
        self.edges
            .find(h, |e| e.parent == parent && e.segment(&self.arena) == seg)
    }

    /// [`edge`](Self::edge) for a short segment: compared as two words, no `memcmp`.
    #[inline]
    fn edge_by_key(&self, parent: u32, k: Key) -> Option<&Edge> {
        let h = hash_key(&self.hasher, parent, k);
        self.edges.find(h, |e| {
            e.parent == parent && e.len == k.len && Key::inline(e) == (k.lo, k.hi)
        })
    }

    fn insert(&mut self, route: Route) {
        let mut node = ROOT;
        let mut parent = ROOT;
        for seg in route.prefix().as_bytes().split(|&b| b == b'.') {
            parent = node;
            node = match self.edge(node, seg) {
                Some(e) => e.child,
                None => self.add_edge(node, seg),
            };
        }
        let slot = &mut self.node_route[node as usize];
        if *slot != NO_ROUTE {
            self.routes[*slot as usize] = route;
            return;
        }
        let index = self.routes.len() as u32;
        *slot = index;
        // Mirror the new route index into the edge that leads to `node`.
        let seg = route
            .prefix()
            .rsplit_once('.')
            .map_or(route.prefix(), |(_, last)| last)
            .as_bytes();
        let h = self.hash(parent, seg);
        let arena = &self.arena;
        if let Some(e) = self
            .edges
            .find_mut(h, |e| e.parent == parent && e.segment(arena) == seg)
        {
            e.route = index;
        }
        self.routes.push(route);
    }

    fn add_edge(&mut self, parent: u32, seg: &[u8]) -> u32 {
        let child = self.node_route.len() as u32;
        self.node_route.push(NO_ROUTE);
        let mut inline = [0u8; INLINE];
        if seg.len() <= INLINE {
            inline[..seg.len()].copy_from_slice(seg);
        } else {
            let start = self.arena.len() as u32;
            inline[..4].copy_from_slice(&start.to_ne_bytes());
            self.arena.extend_from_slice(seg);
        }
        let edge = Edge {
            parent,
            child,
            route: NO_ROUTE,
            len: seg.len() as u32,
            seg: inline,
        };
        let h = self.hash(parent, seg);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.edges
            .insert_unique(h, edge, |e| hash_edge(hasher, e.parent, e.segment(arena)));
        child
    }

    /// Longest-prefix match; falls back to the default route. Allocates nothing.
    #[inline]
    pub fn lookup(&self, destination: &[u8]) -> Option<&Route> {
        let mut node = ROOT;
        let mut best = NO_ROUTE;
        let mut rest = destination;
        loop {
            let len = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
            let edge = match Key::at(rest, len) {
                Some(k) => self.edge_by_key(node, k),
                None => self.edge_long(node, &rest[..len]),
            };
            let Some(e) = edge else { break };
            node = e.child;
            if e.route != NO_ROUTE {
                best = e.route;
            }
            if len == rest.len() {
                break;
            }
            rest = &rest[len + 1..];
        }
        if best == NO_ROUTE {
            self.default_route.as_ref()
        } else {
            Some(&self.routes[best as usize])
        }
    }

    /// Every route (without the default), in insertion order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn default_route(&self) -> Option<&Route> {
        self.default_route.as_ref()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Approximate heap bytes held (for the memory-per-route benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.edges.capacity() * (core::mem::size_of::<Edge>() + 1)
            + self.arena.capacity()
            + self.node_route.capacity() * 4
            + self.routes.capacity() * core::mem::size_of::<Route>()
            + self.routes.iter().map(Route::heap_bytes).sum::<usize>()
    }
}
