//! Accounts: what each peer owes us, the limits on it, and the amounts in each peer's asset.
//!
//! - [`convert`]: exact integer conversion between two assets (rates, spread, scales);
//! - [`limits`]: a limit's headroom shared by the shards as an atomic pool plus per-shard
//!   leases (no lock, no message per packet; never overshot);
//! - [`journal`]: the on-disk record of committed balance changes, and recovery;
//! - [`rate`]: `rateLimit` and `throughput` buckets (one atomic each, shared by the shards);
//! - [`settings`]: the configuration keys;
//! - [`Book`] (here): the node-wide state of every accounted peer — recovered balance,
//!   limits and their pools, per-shard committed sums (each written by one shard only), and
//!   settlements (posted on the admin port, journaled before they count).
//!
//! Balance = what the peer owes us: a fulfilled Prepare *from* the peer adds its amount, one
//! *to* the peer subtracts what we sent. A peer is accounted when it has `balance` in the
//! config; only accounted peers have a balance, limits and journal records.
//! `balance(peer) = recovered + settled + Σ committed[shard]`.

pub mod convert;
pub mod journal;
pub mod limits;
pub mod rate;
pub mod settings;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use self::journal::{Appender, JournalError, Record};
use self::limits::Pool;
use self::settings::{Durability, Limits};
use crate::codec::ErrorCode;
use crate::config::Config;

/// A shard's view of one account, written only by that shard (own cache line).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ShardSlot {
    /// Balance change committed on this shard since start.
    pub committed: AtomicI64,
    /// Reserved and not yet answered: Prepares from the peer, and to it.
    pub reserved_in: AtomicI64,
    pub reserved_out: AtomicI64,
    /// Prepares from this peer rejected by this shard, by code ([`ErrorCode::slot`]).
    pub rejected: [AtomicU64; ErrorCode::SLOTS],
}

/// One accounted peer.
#[derive(Debug)]
pub struct Account {
    pub id: String,
    pub limits: Limits,
    recovered: i64,
    settled: AtomicI64,
    /// Headroom below `maximum` (Prepares from the peer reserve it), if there is a maximum.
    pub max_pool: Option<Pool>,
    /// Headroom above `minimum` (Prepares to the peer reserve it), if there is a minimum.
    pub min_pool: Option<Pool>,
    pub shards: Vec<ShardSlot>,
}

impl Account {
    pub fn balance(&self) -> i64 {
        self.shards.iter().map(|s| s.committed.load(Relaxed)).fold(
            self.recovered.saturating_add(self.settled.load(Relaxed)),
            i64::saturating_add,
        )
    }

    pub fn reserved_in(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.reserved_in.load(Relaxed))
            .sum()
    }

    pub fn reserved_out(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.reserved_out.load(Relaxed))
            .sum()
    }

    /// Flagged for settlement: the balance is at or below `settleThreshold`.
    pub fn needs_settlement(&self) -> bool {
        self.limits
            .settle_threshold
            .is_some_and(|t| self.balance() <= t)
    }
}

/// A peer's rate buckets (`rateLimit`, `throughput`).
#[derive(Debug)]
pub struct Throttle {
    pub id: String,
    pub packets: Option<rate::Bucket>,
    pub amount: Option<rate::Bucket>,
}

/// Settlements posted on the admin port: their journal and the keys already applied.
#[derive(Debug)]
struct Settlements {
    appender: Option<Appender>,
    keys: HashSet<String>,
}

/// Every accounted peer of the node, and where their changes are journaled.
#[derive(Debug)]
pub struct Book {
    pub accounts: Vec<Account>,
    /// Peers with `rateLimit` or `throughput`.
    pub throttles: Vec<Throttle>,
    /// The clock of the rate buckets.
    epoch: std::time::Instant,
    pub node_id: String,
    pub dir: Option<PathBuf>,
    pub durability: Durability,
    pub sync_interval_ms: u64,
    pub generation: u64,
    settlements: Mutex<Settlements>,
    /// Each shard's journal file, created at open (so a disk problem fails the start), taken
    /// by its shard.
    shard_journals: Mutex<Vec<Option<Appender>>>,
    /// Held while the node runs: no second process may recover (and rewrite) this journal.
    _lock: Option<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("no accounted peer {0:?}")]
    UnknownPeer(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What a settlement did.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    Applied {
        balance: i64,
    },
    /// The key was seen before: nothing changed.
    Duplicate {
        balance: i64,
    },
}

impl Book {
    /// Recovers the accounted peers' balances from the journal (creating it if new) and
    /// builds their pools. `warn` gets one line per torn tail that was dropped.
    pub fn open(config: &Config, shards: usize) -> Result<Book, JournalError> {
        let peers: Vec<(String, Limits)> = config
            .peers
            .iter()
            .filter_map(|p| {
                let l = p.balance.as_ref()?.limits().ok()?;
                Some((p.id.clone(), l))
            })
            .collect();
        let ids: Vec<String> = peers.iter().map(|(id, _)| id.clone()).collect();
        let (dir, durability, sync_interval_ms) = match &config.journal {
            Some(j) => (
                Some(PathBuf::from(&j.dir)),
                j.durability,
                j.sync_interval_ms,
            ),
            None => (None, Durability::Strict, 100),
        };
        let mut lock = None;
        let (recovered, generation, keys, appender, shard_journals) = match (&dir, peers.is_empty())
        {
            (Some(dir), false) => {
                lock = Some(journal::lock(dir)?);
                let r = journal::recover(dir, &config.node_id, &ids)?;
                for w in &r.warnings {
                    tracing::warn!(nodeId = %config.node_id, component = "accounts", event = "journal_tail_dropped", detail = %w);
                }
                let appender = Appender::create(
                    dir,
                    journal::settlements_path(dir, r.generation),
                    &journal::header(r.generation, u16::MAX, &config.node_id, &ids),
                )?;
                let shard_journals = (0..shards)
                    .map(|s| {
                        Appender::create(
                            dir,
                            journal::journal_path(dir, r.generation, s),
                            &journal::header(r.generation, s as u16, &config.node_id, &ids),
                        )
                        .map(Some)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (
                    r.balances,
                    r.generation,
                    r.settlement_keys,
                    Some(appender),
                    shard_journals,
                )
            }
            _ => (vec![0; ids.len()], 0, HashSet::new(), None, Vec::new()),
        };
        let accounts = peers
            .into_iter()
            .zip(recovered)
            .map(|((id, limits), balance)| Account {
                max_pool: limits.maximum.map(|m| Pool::new(m.saturating_sub(balance))),
                min_pool: limits.minimum.map(|m| Pool::new(balance.saturating_sub(m))),
                id,
                limits,
                recovered: balance,
                settled: AtomicI64::new(0),
                shards: (0..shards).map(|_| ShardSlot::default()).collect(),
            })
            .collect();
        let throttles = config
            .peers
            .iter()
            .filter(|p| p.rate_limit.is_some() || p.throughput.is_some())
            .map(|p| Throttle {
                id: p.id.clone(),
                packets: p.rate_limit.map(|r| {
                    rate::Bucket::new(
                        r.packets_per_second,
                        r.burst.unwrap_or(r.packets_per_second),
                    )
                }),
                amount: p
                    .throughput
                    .and_then(|t| t.amount_per_second().ok())
                    .map(|a| rate::Bucket::new(a, a)),
            })
            .collect();
        Ok(Book {
            accounts,
            throttles,
            epoch: std::time::Instant::now(),
            node_id: config.node_id.clone(),
            dir,
            durability,
            sync_interval_ms,
            generation,
            settlements: Mutex::new(Settlements { appender, keys }),
            shard_journals: Mutex::new(shard_journals),
            _lock: lock,
        })
    }

    /// The journal file of `shard` (once; `None` when nothing is journaled).
    pub fn take_shard_journal(&self, shard: usize) -> Option<Appender> {
        self.shard_journals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(shard)
            .and_then(Option::take)
    }

    pub fn index_of(&self, peer: &str) -> Option<u16> {
        self.accounts
            .iter()
            .position(|a| a.id == peer)
            .map(|i| i as u16)
    }

    pub fn throttle_of(&self, peer: &str) -> Option<u16> {
        self.throttles
            .iter()
            .position(|t| t.id == peer)
            .map(|i| i as u16)
    }

    /// Nanoseconds on the rate buckets' clock.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn get(&self, peer: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == peer)
    }

    /// The peers' ids in journal order.
    pub fn ids(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.id.clone()).collect()
    }

    /// Applies a settlement once per `key`: `amount` is added to the balance (positive: we
    /// paid the peer, as when settling what we owe; negative: the peer paid us). Durable in
    /// the journal before it counts.
    pub fn settle(&self, peer: &str, amount: i64, key: &str) -> Result<Settled, SettleError> {
        let i = self
            .index_of(peer)
            .ok_or_else(|| SettleError::UnknownPeer(peer.into()))?;
        let account = &self.accounts[i as usize];
        if key.is_empty() || key.len() > 256 {
            return Err(SettleError::Invalid(
                "idempotencyKey must be 1 to 256 bytes".into(),
            ));
        }
        // Held across the write: two posts of one key cannot both apply.
        let mut s = self.settlements.lock().unwrap_or_else(|e| e.into_inner());
        if s.keys.contains(key) {
            return Ok(Settled::Duplicate {
                balance: account.balance(),
            });
        }
        if let Some(app) = s.appender.as_mut() {
            let mut bytes = Vec::new();
            Record::Settlement {
                peer: i,
                amount,
                key: key.into(),
            }
            .encode(&mut bytes);
            app.append(&bytes)?;
        }
        s.keys.insert(key.into());
        account.settled.fetch_add(amount, Relaxed);
        // The balance rose by `amount`: less headroom below the maximum, more above the minimum.
        if let Some(p) = &account.max_pool {
            p.give(amount.saturating_neg());
        }
        if let Some(p) = &account.min_pool {
            p.give(amount);
        }
        Ok(Settled::Applied {
            balance: account.balance(),
        })
    }
}
