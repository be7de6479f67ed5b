//! The published routing table: writers build a new immutable [`Trie`] and publish it (RCU);
//! every shard reads through its own [`RoutingView`].
//!
//! Invariants:
//! - a lookup always sees one whole published version (a version is an `Arc<Trie>` that is
//!   never mutated);
//! - the per-packet read path takes no lock and does no atomic read-modify-write: a view keeps
//!   its own `Arc<Trie>` and compares one `generation` counter (a plain atomic load) before
//!   each lookup; only when it changed does it fetch the new version (lock-free, `arc-swap`);
//! - writers are serialised by a mutex around the master route list (route changes are rare).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::trie::Trie;
use super::{Route, RouteError};

struct Shared {
    current: ArcSwap<Trie>,
    /// Bumped after every publish; views compare it to know when to refresh.
    generation: AtomicU64,
    /// The writers' master copy: prefix -> route, plus the default route.
    master: Mutex<(BTreeMap<String, Route>, Option<Route>)>,
}

/// The writable, shareable routing table. Clone it to hand it to other threads.
#[derive(Clone)]
pub struct RoutingTable {
    shared: Arc<Shared>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingTable {
    pub fn new() -> Self {
        RoutingTable {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(Trie::build([], None)),
                generation: AtomicU64::new(0),
                master: Mutex::new((BTreeMap::new(), None)),
            }),
        }
    }

    fn master(&self) -> MutexGuard<'_, (BTreeMap<String, Route>, Option<Route>)> {
        // A writer that panicked mid-update left the master copy as it was before the update
        // (we only mutate it after validation), so the poisoned data is still consistent.
        self.shared
            .master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, master: &(BTreeMap<String, Route>, Option<Route>)) {
        let trie = Trie::build(master.0.values().cloned(), master.1.clone());
        self.shared.current.store(Arc::new(trie));
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// Adds or replaces the route for `prefix`.
    pub fn add(&self, prefix: &str, next_hop: &str) -> Result<(), RouteError> {
        let route = Route::new(prefix, next_hop)?;
        let mut m = self.master();
        m.0.insert(prefix.to_owned(), route);
        self.publish(&m);
        Ok(())
    }

    /// Removes the route for exactly `prefix`; returns whether there was one.
    pub fn remove(&self, prefix: &str) -> bool {
        let mut m = self.master();
        let removed = m.0.remove(prefix).is_some();
        if removed {
            self.publish(&m);
        }
        removed
    }

    /// Removes every route (and the default route) whose next hop is `next_hop`; returns how
    /// many went.
    pub fn remove_next_hop(&self, next_hop: &str) -> usize {
        let mut m = self.master();
        let before = m.0.len() + usize::from(m.1.is_some());
        m.0.retain(|_, r| r.next_hop() != next_hop);
        if m.1.as_ref().is_some_and(|r| r.next_hop() == next_hop) {
            m.1 = None;
        }
        let removed = before - m.0.len() - usize::from(m.1.is_some());
        if removed > 0 {
            self.publish(&m);
        }
        removed
    }

    /// Sets or clears the default route (used when no prefix matches).
    pub fn set_default(&self, next_hop: Option<&str>) -> Result<(), RouteError> {
        let route = next_hop.map(Route::default_to).transpose()?;
        let mut m = self.master();
        m.1 = route;
        self.publish(&m);
        Ok(())
    }

    /// Replaces every route at once (one published version). Nothing changes on error.
    pub fn replace_all<'a>(
        &self,
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
        default_hop: Option<&str>,
    ) -> Result<(), RouteError> {
        let mut next = BTreeMap::new();
        for (prefix, hop) in routes {
            next.insert(prefix.to_owned(), Route::new(prefix, hop)?);
        }
        let default_route = default_hop.map(Route::default_to).transpose()?;
        let mut m = self.master();
        *m = (next, default_route);
        self.publish(&m);
        Ok(())
    }

    /// The current version (for inspection, or several lookups against one version).
    pub fn snapshot(&self) -> Arc<Trie> {
        self.shared.current.load_full()
    }

    /// How many versions have been published.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A reader for one shard.
    pub fn view(&self) -> RoutingView {
        // Read the generation before the trie: if a publish races, the view sees an older
        // generation with a newer trie and merely refreshes once more.
        let generation = self.generation();
        RoutingView {
            shared: self.shared.clone(),
            local: self.snapshot(),
            generation,
        }
    }
}

/// A shard-local reader: lookups cost one atomic load plus the trie walk.
pub struct RoutingView {
    shared: Arc<Shared>,
    local: Arc<Trie>,
    generation: u64,
}

impl RoutingView {
    /// Picks up a newly published version, if any; returns the version to read.
    #[inline]
    pub fn current(&mut self) -> &Trie {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.refresh(g);
        }
        &self.local
    }

    #[cold]
    fn refresh(&mut self, g: u64) {
        self.local = self.shared.current.load_full();
        self.generation = g;
    }

    /// Longest-prefix match against the newest published version.
    #[inline]
    pub fn lookup(&mut self, destination: &[u8]) -> Option<&Route> {
        self.current().lookup(destination)
    }
}
