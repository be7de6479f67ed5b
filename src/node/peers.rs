//! The peer manager: the node's peers (from config, then added or removed at runtime) and, per
//! peer, how many live links each shard holds.
//!
//! Invariants:
//! - The set of peers changes only through [`Peers::add`] and [`Peers::remove`], each of which
//!   bumps [`Peers::generation`]; shards poll the generation (off the packet path) and then
//!   re-read credentials, start dialling new peers and close links to removed ones.
//! - A shard counts a link on the [`PeerEntry`] it authenticated against, so a peer removed
//!   and re-added under the same id starts from fresh counts.
//! - Per packet, nothing here is touched unless the next hop has no link on the current
//!   shard ([`Peers::shard_with_link`], the hand-over path).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::{ConfigError, PeerConfig};

/// One peer and its live links per shard.
pub struct PeerEntry {
    pub config: PeerConfig,
    links: Box<[AtomicUsize]>,
    removed: AtomicBool,
    /// Links the peer said (in its auth answer to our home shard's dial) it accepts; 0
    /// until the home shard has dialled it.
    offered_links: AtomicUsize,
}

impl PeerEntry {
    fn new(config: PeerConfig, shards: usize) -> Self {
        PeerEntry {
            config,
            links: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            removed: AtomicBool::new(false),
            offered_links: AtomicUsize::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Removed from the node: links to it close and nobody dials it again.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }

    pub fn link_up(&self, shard: usize) {
        if let Some(c) = self.links.get(shard) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn link_down(&self, shard: usize) {
        if let Some(c) = self.links.get(shard) {
            let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        }
    }

    /// The shard that dials this peer first (and alone, unless the peer accepts more
    /// links): stable for a peer id, so dialled peers spread over the shards.
    pub fn home_shard(&self) -> usize {
        // FNV-1a: the same on every run and build.
        let h = self.id().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.links.len().max(1) as u64) as usize
    }

    /// Records what the peer offered when the home shard dialled it (`None`: nothing, so
    /// one link).
    pub fn set_offered_links(&self, offered: Option<usize>) {
        self.offered_links
            .store(offered.unwrap_or(1).max(1), Relaxed);
    }

    /// Whether `shard` should keep a link to this peer (a peer we dial): the home shard
    /// always; the others, in order after it, while the count allows (`links: N`, or under
    /// `auto` what the peer offered).
    pub fn shard_dials(&self, shard: usize) -> bool {
        let shards = self.links.len().max(1);
        let rank = (shard + shards - self.home_shard()) % shards;
        let allowed = match self.config.links {
            crate::config::Links::Fixed(n) => n,
            crate::config::Links::Auto => self.offered_links.load(Relaxed).max(1),
        };
        rank < allowed
    }

    /// Live links on every shard together.
    pub fn link_count(&self) -> usize {
        self.links.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Live links per shard, by shard index.
    pub fn links_per_shard(&self) -> Vec<usize> {
        self.links.iter().map(|c| c.load(Relaxed)).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0:?} already exists")]
    Exists(String),
    #[error("no peer {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// All peers of a node, shared by its shards and the admin thread.
pub struct Peers {
    by_id: RwLock<BTreeMap<String, Arc<PeerEntry>>>,
    generation: AtomicU64,
    /// The generation each shard has applied.
    applied: Box<[AtomicU64]>,
    shards: usize,
}

impl Peers {
    pub fn new(configs: impl IntoIterator<Item = PeerConfig>, shards: usize) -> Self {
        Peers {
            by_id: RwLock::new(
                configs
                    .into_iter()
                    .map(|c| (c.id.clone(), Arc::new(PeerEntry::new(c, shards))))
                    .collect(),
            ),
            generation: AtomicU64::new(0),
            applied: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
            shards,
        }
    }

    /// Shard `shard` now acts on `generation`.
    pub fn mark_applied(&self, shard: usize, generation: u64) {
        if let Some(a) = self.applied.get(shard) {
            a.store(generation, std::sync::atomic::Ordering::Release);
        }
    }

    /// Waits (blocking, for the admin thread or an API caller) until every shard has applied
    /// the current generation or `bound` passes; returns whether they all did.
    pub fn wait_applied(&self, bound: std::time::Duration) -> bool {
        let target = self.generation();
        let until = std::time::Instant::now() + bound;
        loop {
            let done = self.applied.iter().all(|a| {
                let g = a.load(std::sync::atomic::Ordering::Acquire);
                g != u64::MAX && g >= target
            });
            if done {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    // The map is only replaced whole-entry under the lock, so a poisoned lock still holds a
    // consistent map.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<PeerEntry>>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<PeerEntry>>> {
        self.by_id.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever a peer is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn add(&self, config: PeerConfig) -> Result<Arc<PeerEntry>, PeerError> {
        config.validate()?;
        let mut map = self.write();
        if map.contains_key(&config.id) {
            return Err(PeerError::Exists(config.id));
        }
        let entry = Arc::new(PeerEntry::new(config, self.shards));
        map.insert(entry.id().to_owned(), entry.clone());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(entry)
    }

    pub fn remove(&self, id: &str) -> Result<Arc<PeerEntry>, PeerError> {
        let entry = self
            .write()
            .remove(id)
            .ok_or_else(|| PeerError::Unknown(id.to_owned()))?;
        entry.removed.store(true, Relaxed);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(entry)
    }

    pub fn get(&self, id: &str) -> Option<Arc<PeerEntry>> {
        self.read().get(id).cloned()
    }

    /// Every peer, ordered by id.
    pub fn list(&self) -> Vec<Arc<PeerEntry>> {
        self.read().values().cloned().collect()
    }

    /// A shard other than `except` with a live link to `id` (the one with most links).
    pub fn shard_with_link(&self, id: &str, except: usize) -> Option<usize> {
        let entry = self.get(id)?;
        entry
            .links
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != except && c.load(Relaxed) > 0)
            .max_by_key(|(_, c)| c.load(Relaxed))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Relation;

    fn peer(id: &str) -> PeerConfig {
        PeerConfig {
            id: id.into(),
            relation: Relation::Peer,
            url: None,
            auth_token: Some("t".into()),
            auth_token_file: None,
            asset_code: None,
            asset_scale: None,
            links: Default::default(),
            max_packet_amount: None,
            balance: None,
            rate_limit: None,
            throughput: None,
            send_routes: None,
            receive_routes: None,
            outgoing_auth_token: None,
            http2: false,
        }
    }

    #[test]
    fn add_remove_and_links_per_shard() {
        let peers = Peers::new([peer("a")], 2);
        let g0 = peers.generation();
        assert!(matches!(peers.add(peer("a")), Err(PeerError::Exists(_))));
        let b = peers.add(peer("b")).unwrap();
        assert!(peers.generation() > g0);
        assert_eq!(peers.shard_with_link("b", 0), None);
        b.link_up(1);
        assert_eq!(peers.get("b").map(|e| e.link_count()), Some(1));
        assert_eq!(peers.shard_with_link("b", 0), Some(1));
        assert_eq!(peers.shard_with_link("b", 1), None);
        let gone = peers.remove("b").unwrap();
        assert!(gone.is_removed());
        assert!(peers.get("b").is_none());
        assert!(matches!(peers.remove("b"), Err(PeerError::Unknown(_))));
        // A re-added peer starts with fresh counts; the old entry's link going down is harmless.
        let b2 = peers.add(peer("b")).unwrap();
        gone.link_down(1);
        assert_eq!(b2.link_count(), 0);
        assert_eq!(b2.links_per_shard(), vec![0, 0]);
    }

    #[test]
    fn invalid_peer_is_refused() {
        let peers = Peers::new([], 1);
        let mut p = peer("x");
        p.id = String::new();
        assert!(matches!(peers.add(p), Err(PeerError::Invalid(_))));
    }
}
