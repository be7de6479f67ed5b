//! One shard's side of the accounts (see `crate::accounts`): per Prepare, before it is
//! forwarded, [`ShardAccounts::reserve`] checks `maxPacketAmount` (F08), converts the amount
//! into the next hop's asset (F02 without a rate, F08 when it would not fit), and reserves it
//! against the source's maximum and the next hop's minimum (T04 when over); the returned
//! [`Reserved`] is committed on a valid Fulfill and released otherwise (also when dropped, so
//! no exit path can leak a reservation).
//!
//! Committed changes go to this shard's journal (`journal-<gen>-<shard>`) in batches: the
//! journal task writes and `fdatasync`s everything committed since its last write on
//! glommio's blocking pool, so the shard never blocks on the disk. Strict: the Fulfill is
//! answered once its batch is durable (group commit); relaxed: within `syncIntervalMs`.
//! The same task returns this shard's leases to the pools every idle tick.
//!
//! Everything here is single-threaded (`Cell`/`RefCell` on the shard); the only shared
//! state touched per packet is this shard's own [`ShardSlot`] (relaxed stores) and, when a
//! lease runs out, the pool's atomic.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::connector::NodeShared;
use super::rules::Refusal;
use crate::accounts::convert::{Asset, Decimal, Factor};
use crate::accounts::journal::{Appender, Record};
use crate::accounts::limits::{Lease, Sharing};
use crate::accounts::settings::{Dec, Durability};
use crate::accounts::{Account, Book};
use crate::codec::ErrorCode;
use crate::config::Relation;

/// How often an idle shard hands its leases back to the pools.
const LEASE_TICK: Duration = Duration::from_millis(100);
/// A shard's journal is compacted to one record once it grows past this.
const COMPACT_AT: u64 = 16 << 20;

/// What the shard knows about one peer for accounting (and whether it is our child: the
/// one other fact the packet path needs about its source, looked up with these).
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub child: bool,
    /// Index into `assets`.
    asset: u32,
    max_packet: Option<u64>,
    account: Option<u16>,
    throttle: Option<u16>,
}

/// One peer's [`Terms`] kept by whoever looks them up per packet (a link's handler), valid
/// while the shard's peer set has not changed since: a generation compare instead of a map
/// probe by peer id.
#[derive(Debug, Default)]
pub struct TermsCache(Cell<Option<(u64, Terms)>>);

/// This shard's leases on one account's pools.
#[derive(Debug, Default)]
struct Leases {
    max: Lease,
    min: Lease,
}

pub struct ShardAccounts {
    node: Arc<NodeShared>,
    shard: usize,
    sharing: Sharing,
    leases: Vec<Leases>,
    /// Per peer id; cleared when the peer set changes.
    terms: RefCell<ahash::AHashMap<Box<str>, Terms>>,
    /// Bumped when `terms` is cleared: a [`TermsCache`] of an older generation is stale.
    terms_generation: Cell<u64>,
    assets: RefCell<Vec<Asset>>,
    factors: RefCell<ahash::AHashMap<(u32, u32), Result<Factor, String>>>,
    rates: BTreeMap<String, Decimal>,
    spread: Decimal,
    journal: Option<ShardJournal>,
    /// Set once the shard has answered every Prepare: the journal task writes the rest and ends.
    finishing: Cell<bool>,
}

/// A reservation for one Prepare: released on drop unless committed.
pub struct Reserved {
    accounts: Rc<ShardAccounts>,
    /// The amount to forward, in the next hop's units.
    pub out_amount: u64,
    incoming: Option<(u16, i64)>,
    outgoing: Option<(u16, i64)>,
}

impl ShardAccounts {
    pub fn new(node: Arc<NodeShared>, shard: usize) -> ShardAccounts {
        let journal = node
            .book
            .take_shard_journal(shard)
            .map(|a| ShardJournal::new(a, node.book.accounts.len()));
        let config = &node.config;
        ShardAccounts {
            shard,
            sharing: Sharing {
                shards: config.shard_count() as u32,
            },
            leases: node
                .book
                .accounts
                .iter()
                .map(|_| Leases::default())
                .collect(),
            terms: RefCell::default(),
            terms_generation: Cell::new(0),
            assets: RefCell::default(),
            factors: RefCell::default(),
            rates: config
                .rates
                .iter()
                .map(|(k, Dec(v))| (k.clone(), *v))
                .collect(),
            spread: config.spread(),
            journal,
            finishing: Cell::new(false),
            node,
        }
    }

    fn book(&self) -> &Book {
        &self.node.book
    }

    /// Forgets what it derived from the peer set (a peer was added or removed).
    pub fn peers_changed(&self) {
        self.terms.borrow_mut().clear();
        self.terms_generation.set(self.terms_generation.get() + 1);
    }

    /// The terms of `peer`, from `cache` if the peer set has not changed since it was filled.
    #[inline]
    pub fn terms_cached(&self, peer: &str, cache: &TermsCache) -> Terms {
        let generation = self.terms_generation.get();
        match cache.0.get() {
            Some((g, t)) if g == generation => t,
            _ => {
                let t = self.terms(peer);
                cache.0.set(Some((generation, t)));
                t
            }
        }
    }

    /// The terms of `peer` (cached until the peer set changes).
    pub fn terms(&self, peer: &str) -> Terms {
        if let Some(t) = self.terms.borrow().get(peer) {
            return *t;
        }
        let entry = self.node.peers.get(peer);
        let config = &self.node.config;
        let own = self.node.identity.get();
        let learned = own.map(|o| (o.asset_code.as_str(), o.asset_scale));
        // Unknown peer (removed meanwhile): the node's own asset.
        let asset = entry
            .as_ref()
            .and_then(|e| config.peer_asset(&e.config, learned))
            .or_else(|| {
                own.map(|o| Asset {
                    code: o.asset_code.clone(),
                    scale: o.asset_scale,
                })
            })
            .unwrap_or(Asset {
                code: String::new(),
                scale: 0,
            });
        let mut assets = self.assets.borrow_mut();
        let asset = match assets.iter().position(|a| *a == asset) {
            Some(i) => i as u32,
            None => {
                assets.push(asset);
                (assets.len() - 1) as u32
            }
        };
        let t = Terms {
            child: entry
                .as_ref()
                .is_some_and(|e| e.config.relation == Relation::Child),
            asset,
            max_packet: entry.as_ref().and_then(|e| e.config.max_packet_amount()),
            account: self.book().index_of(peer),
            throttle: self.book().throttle_of(peer),
        };
        self.terms.borrow_mut().insert(peer.into(), t);
        t
    }

    fn factor(&self, from: u32, to: u32) -> Result<Factor, String> {
        if from == to {
            return Ok(Factor::ONE);
        }
        if let Some(f) = self.factors.borrow().get(&(from, to)) {
            return f.clone();
        }
        let assets = self.assets.borrow();
        let f = Factor::between(
            &assets[from as usize],
            &assets[to as usize],
            &self.rates,
            self.spread,
        )
        .map_err(|e| e.to_string());
        self.factors.borrow_mut().insert((from, to), f.clone());
        f
    }

    /// Checks and reserves a Prepare of `amount` from the source whose terms are `src` to
    /// the next hop whose terms are `dst`.
    pub fn reserve(
        self: &Rc<Self>,
        src: Terms,
        dst: Terms,
        amount: u64,
    ) -> Result<Reserved, Refusal> {
        if let Some(max) = src.max_packet {
            if amount > max {
                return Err(amount_too_large(amount, max));
            }
        }
        let throttle = src.throttle.map(|i| &self.book().throttles[i as usize]);
        let now_ns = throttle.map_or(0, |_| self.book().now_ns());
        if let Some(b) = throttle.and_then(|t| t.packets.as_ref()) {
            if !b.take(1, now_ns) {
                return Err(Refusal::new(
                    ErrorCode::T05_RATE_LIMITED,
                    "over the packet rate allowed for you",
                ));
            }
        }
        let factor = self
            .factor(src.asset, dst.asset)
            .map_err(|e| Refusal::new(ErrorCode::F02_UNREACHABLE, e))?;
        let Some(out_amount) = factor.apply(amount) else {
            return Err(amount_too_large(
                amount,
                factor.max_input().min(src.max_packet.unwrap_or(u64::MAX)),
            ));
        };
        let mut r = Reserved {
            accounts: self.clone(),
            out_amount,
            incoming: None,
            outgoing: None,
        };
        if let Some(i) = src.account {
            let amt = fits(amount)?;
            self.reserve_side(i, amt, true)?;
            r.incoming = Some((i, amt));
        }
        if let Some(i) = dst.account {
            let amt = fits(out_amount)?;
            // On failure `r` is dropped: the incoming reservation is released.
            self.reserve_side(i, amt, false)?;
            r.outgoing = Some((i, amt));
        }
        // Last, so a packet refused above does not use up the peer's throughput.
        if let Some(b) = throttle.and_then(|t| t.amount.as_ref()) {
            if !b.take(amount, now_ns) {
                return Err(Refusal::new(
                    ErrorCode::T04_INSUFFICIENT_LIQUIDITY,
                    "over the amount per second allowed for you",
                ));
            }
        }
        Ok(r)
    }

    /// Reserves `amount` of account `i` against its maximum (a Prepare from the peer) or its
    /// minimum (a Prepare to it); a side without a limit reserves nothing.
    fn reserve_side(&self, i: u16, amount: i64, incoming: bool) -> Result<(), Refusal> {
        let a = self.account(i);
        let l = &self.leases[i as usize];
        let (lease, pool, message) = if incoming {
            (&l.max, &a.max_pool, "exceeds the sender's maximum balance")
        } else {
            (
                &l.min,
                &a.min_pool,
                "exceeds the next hop's minimum balance",
            )
        };
        if let Some(pool) = pool {
            if !lease.reserve(pool, amount, self.sharing) {
                return Err(Refusal::new(ErrorCode::T04_INSUFFICIENT_LIQUIDITY, message));
            }
            self.publish(i);
        }
        Ok(())
    }

    fn account(&self, i: u16) -> &Account {
        &self.book().accounts[i as usize]
    }

    /// Publishes this shard's reservations of account `i` for `/accounts`.
    fn publish(&self, i: u16) {
        let slot = &self.account(i).shards[self.shard];
        let l = &self.leases[i as usize];
        slot.reserved_in.store(l.max.reserved(), Relaxed);
        slot.reserved_out.store(l.min.reserved(), Relaxed);
    }

    fn commit_side(&self, i: u16, delta: i64, incoming: bool) -> Option<u64> {
        let a = self.account(i);
        let l = &self.leases[i as usize];
        let amount = delta.abs();
        // The balance moves toward one limit (its reservation becomes balance) and away
        // from the other (this shard may use that headroom).
        let (toward, toward_pool, away, away_pool) = if incoming {
            (&l.max, &a.max_pool, &l.min, &a.min_pool)
        } else {
            (&l.min, &a.min_pool, &l.max, &a.max_pool)
        };
        if toward_pool.is_some() {
            toward.commit(amount);
        }
        if away_pool.is_some() {
            away.credit(amount);
        }
        let slot = &a.shards[self.shard];
        slot.committed
            .store(slot.committed.load(Relaxed).saturating_add(delta), Relaxed);
        self.publish(i);
        self.journal.as_ref().map(|j| j.add(i, delta))
    }

    fn release_side(&self, i: u16, amount: i64, incoming: bool) {
        let a = self.account(i);
        let l = &self.leases[i as usize];
        match incoming {
            true if a.max_pool.is_some() => l.max.release(amount),
            false if a.min_pool.is_some() => l.min.release(amount),
            _ => return,
        }
        self.publish(i);
    }

    /// Counts a Reject sent to an accounted peer.
    pub fn count_reject(&self, source: &str, code: ErrorCode) {
        if let Some(i) = self.terms(source).account {
            let slot = &self.account(i).shards[self.shard];
            let c = &slot.rejected[code.slot()];
            c.store(c.load(Relaxed) + 1, Relaxed);
        }
    }

    /// Ends [`run`](Self::run) (within a tick), after it writes what is left.
    pub fn finish(&self) {
        self.finishing.set(true);
    }

    /// Runs until [`finish`](Self::finish): writes committed changes (strict: at once, as a
    /// group; relaxed: every `syncIntervalMs`), returns idle leases every tick, and at the
    /// end writes what is left.
    pub async fn run(self: Rc<Self>) {
        if self.book().accounts.is_empty() {
            // No pools, no journal: nothing to do (and no timer to wake the shard).
            return;
        }
        let relaxed = self.book().durability == Durability::Relaxed;
        let interval = Duration::from_millis(self.book().sync_interval_ms);
        loop {
            let dirty = match &self.journal {
                Some(j) => crate::alarm::within(LEASE_TICK, j.wait_dirty())
                    .await
                    .is_some(),
                None => {
                    crate::alarm::sleep(LEASE_TICK).await;
                    false
                }
            };
            if !dirty {
                self.return_leases();
            }
            if self.finishing.get() {
                break;
            }
            if dirty && relaxed {
                crate::alarm::sleep(interval).await;
            }
            self.flush().await;
        }
        self.flush().await;
    }

    /// Writes (and syncs) what was committed since the last write.
    async fn flush(&self) {
        if let Some(j) = &self.journal {
            j.flush(&self.node.config.node_id).await;
        }
    }

    fn return_leases(&self) {
        for (l, a) in self.leases.iter().zip(&self.book().accounts) {
            if let Some(p) = &a.max_pool {
                l.max.return_to(p);
            }
            if let Some(p) = &a.min_pool {
                l.min.return_to(p);
            }
        }
    }

    /// Waits (bounded) until the change numbered `seq` is durable.
    pub async fn durable(&self, seq: u64, bound: Duration) -> bool {
        match &self.journal {
            Some(j) => crate::btp::within(bound, j.wait_durable(seq))
                .await
                .is_some(),
            None => true,
        }
    }

    pub fn strict(&self) -> bool {
        self.journal.is_some() && self.book().durability == Durability::Strict
    }
}

impl Reserved {
    /// The Prepare was fulfilled: the balances change. Returns the journal sequence number
    /// to wait for (strict durability), if anything was journaled.
    pub fn commit(mut self) -> Option<u64> {
        let mut seq = None;
        if let Some((i, amt)) = self.incoming.take() {
            seq = self.accounts.commit_side(i, amt, true);
        }
        if let Some((i, amt)) = self.outgoing.take() {
            seq = self.accounts.commit_side(i, -amt, false).or(seq);
        }
        seq
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some((i, amt)) = self.incoming.take() {
            self.accounts.release_side(i, amt, true);
        }
        if let Some((i, amt)) = self.outgoing.take() {
            self.accounts.release_side(i, amt, false);
        }
    }
}

/// An accounted amount must fit the balance arithmetic (i64).
fn fits(amount: u64) -> Result<i64, Refusal> {
    i64::try_from(amount).map_err(|_| {
        Refusal::new(
            ErrorCode::T04_INSUFFICIENT_LIQUIDITY,
            "amount beyond what an account can hold",
        )
    })
}

/// F08 with the RFC-0027 data: amount received and maximum amount, u64 big-endian each.
fn amount_too_large(received: u64, max: u64) -> Refusal {
    let mut data = BytesMut::with_capacity(16);
    data.put_u64(received);
    data.put_u64(max);
    Refusal::new(
        ErrorCode::F08_AMOUNT_TOO_LARGE,
        format!("amount {received} exceeds the maximum packet amount {max}"),
    )
    .with_data(data.freeze())
}

/// A shard's journal: committed changes batched until the journal task writes them.
struct ShardJournal {
    /// Taken while a write runs on the blocking pool.
    appender: RefCell<Option<Appender>>,
    /// Changes since the last write, by account.
    pending: RefCell<Vec<i64>>,
    /// Everything this shard wrote this generation (compaction writes it as one record).
    totals: RefCell<Vec<i64>>,
    dirty: Cell<bool>,
    /// The batch being filled, and the last one known durable.
    open_seq: Cell<u64>,
    durable_seq: Cell<u64>,
    task: RefCell<Option<Waker>>,
    waiters: RefCell<Vec<Waker>>,
}

impl ShardJournal {
    fn new(appender: Appender, accounts: usize) -> ShardJournal {
        ShardJournal {
            appender: RefCell::new(Some(appender)),
            pending: RefCell::new(vec![0; accounts]),
            totals: RefCell::new(vec![0; accounts]),
            dirty: Cell::new(false),
            open_seq: Cell::new(1),
            durable_seq: Cell::new(0),
            task: RefCell::default(),
            waiters: RefCell::default(),
        }
    }

    fn add(&self, i: u16, delta: i64) -> u64 {
        let mut p = self.pending.borrow_mut();
        p[i as usize] = p[i as usize].saturating_add(delta);
        if !self.dirty.replace(true) {
            if let Some(w) = self.task.borrow_mut().take() {
                w.wake();
            }
        }
        self.open_seq.get()
    }

    async fn wait_dirty(&self) {
        std::future::poll_fn(|cx| {
            if self.dirty.get() {
                Poll::Ready(())
            } else {
                *self.task.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    async fn wait_durable(&self, seq: u64) {
        std::future::poll_fn(|cx| {
            if self.durable_seq.get() >= seq {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    async fn flush(&self, node_id: &str) {
        if !self.dirty.replace(false) {
            return;
        }
        let Some(mut app) = self.appender.borrow_mut().take() else {
            // Another flush is writing; this batch stays open for the next one.
            self.dirty.set(true);
            return;
        };
        let seq = self.open_seq.get();
        self.open_seq.set(seq + 1);
        let deltas: Vec<(u16, i64)> = {
            let mut p = self.pending.borrow_mut();
            let mut t = self.totals.borrow_mut();
            p.iter_mut()
                .enumerate()
                .filter(|(_, d)| **d != 0)
                .map(|(i, d)| {
                    t[i] = t[i].saturating_add(*d);
                    (i as u16, std::mem::take(d))
                })
                .collect()
        };
        let mut bytes = Vec::with_capacity(16 + deltas.len() * 10);
        Record::Deltas(deltas).encode(&mut bytes);
        let compact = (app.len() + bytes.len() as u64 > COMPACT_AT).then(|| Record::Balances {
            balances: self
                .totals
                .borrow()
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u16, *v))
                .collect(),
            keys: Vec::new(),
        });
        let (app, result) = glommio::executor()
            .spawn_blocking(move || {
                let r = match compact {
                    // The summary already includes this batch.
                    Some(summary) => app.compact(&summary),
                    None => app.append(&bytes),
                };
                (app, r)
            })
            .await;
        *self.appender.borrow_mut() = Some(app);
        if let Err(e) = result {
            // The disk failed us: the Fulfills are still answered (the next hop has been
            // paid; withholding them would lose the money outright), loudly.
            tracing::error!(nodeId = %node_id, component = "accounts", event = "journal_write_failed", error = %e,
                "balance changes may not survive a crash");
        }
        self.durable_seq.set(seq);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}
