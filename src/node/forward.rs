//! The packet path of one shard: from an incoming ILP Prepare to its one answer.
//!
//! **Run to completion.** A BTP MESSAGE is handled on the task of the link that read it
//! ([`Shard::on_message`]): admission, rules, route lookup, reservations, then the frame is
//! encoded into the next hop's link queue with [`Link::relay`]. Nobody waits for the answer:
//! the Prepare's state (incoming link, its request id, its condition, the reservation,
//! timing; nothing of the incoming frame, see [`Pledge`]) sits in the shard's `relayed`
//! slab, and whichever task learns the outcome (the outgoing link's task reading the
//! RESPONSE, the deadline driver, a failing link) calls [`AnswerSink::answered`], which
//! settles it and queues the answer on the incoming link.
//! Steady state: no task hand-off, no wake-up of a third task, no allocation (slab entries
//! and frame buffers are reused).
//!
//! Only what must wait goes to a pooled worker task ([`Workers`]): a next hop over
//! ILP-over-HTTP, a next hop whose link is on another shard (hand-over, `handover.rs`), and
//! strict durability (the Fulfill waits for its journal batch). An ILP-over-HTTP request
//! runs the same steps on its connection's task ([`Shard::answer_http`]).
//!
//! Invariant: every Prepare that enters [`Shard::begin`] leaves through
//! [`Shard::finish`] exactly once, with its answer: each step either returns an answer, or
//! hands the Prepare to exactly one of the relay slab or a worker, both of which answer it
//! (the link guarantees its sink is called once per relayed request: answer, deadline or
//! link failure).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::accounting::{Reserved, TermsCache};
use super::rules::{self, Decision, Refusal, Timing};
use super::shard::Shard;
use crate::btp::link::AnswerSink;
use crate::btp::{IncomingHandler, Link, LinkError};
use crate::codec::btp::{self as btpc, BtpBody, ProtocolData, CONTENT_OCTET_STREAM};
use crate::codec::ilp::rewrite_prepare;
use crate::codec::{BtpPacket, ErrorCode, Packet, Prepare, Timestamp};
use crate::http::client::HttpPeerClient;

/// BTP entry that carries the correlation id from hop to hop (secondary, so peers that do
/// not know it ignore it).
const CORRELATION_ENTRY: &[u8] = b"correlationId";

/// Idle workers beyond this many end (the pool shrinks back after a burst).
const MAX_IDLE_WORKERS: usize = 256;

/// What the packet path keeps about one source peer on a shard, shared by its links and
/// HTTP requests.
#[derive(Default)]
pub(super) struct Source {
    /// Its Prepares in flight on this shard.
    load: Cell<usize>,
    /// Its accounting terms, looked up once per peer-set change rather than per packet.
    terms: TermsCache,
    /// The next hop of its latest Prepare and that hop's terms: a source's packets mostly
    /// take one route, whose next-hop id is one shared string (compared by address).
    last_hop: RefCell<Option<(Arc<str>, TermsCache)>>,
}

/// A Prepare from a peer while it is being answered.
pub(super) struct Incoming {
    started: Instant,
    /// The correlation id it came with (or, with DEBUG logs, one made from the packet).
    cid: Option<[u8; 16]>,
    /// The source peer (its in-flight count on this shard is `source.load`).
    source: Rc<Source>,
    /// Counted in `load` (it got past admission and routing).
    counted: bool,
}

/// What answering a forwarded Prepare needs once the next hop has spoken.
struct Outgoing {
    prepare: Prepare,
    reserved: Reserved,
    expires_at: Timestamp,
}

impl Outgoing {
    /// What is kept once the Prepare has been sent (the frame it came in can go).
    fn pledge(self) -> Pledge {
        Pledge {
            condition: *self.prepare.execution_condition(),
            reserved: self.reserved,
            expires_at: self.expires_at,
        }
    }
}

/// What settling a forwarded Prepare needs: the condition its Fulfill must meet, the
/// reservation to commit or release, the outgoing expiry (for our Reject if the next hop
/// fails). It holds no part of the incoming frame, so the link's read buffer is free for
/// reuse as soon as a batch has been forwarded.
struct Pledge {
    condition: [u8; 32],
    reserved: Reserved,
    expires_at: Timestamp,
}

/// How the Prepare leaves this shard.
enum Via {
    Link(Link),
    Http(Rc<HttpPeerClient>),
    /// The next hop's link is on that shard.
    Shard(usize),
}

/// A Prepare routed and reserved, ready to go out.
pub(super) struct Route {
    next_hop: Arc<str>,
    out: Outgoing,
    via: Via,
    /// When we stop waiting for the next hop (outgoing expiry plus a short grace).
    deadline: Instant,
}

/// A relayed Prepare awaiting its answer (see the module doc).
pub(super) struct Relayed {
    from: Link,
    request_id: u32,
    incoming: Incoming,
    pledge: Pledge,
}

/// What a Prepare is answered with: the ILP Fulfill or Reject, and the Reject's code.
pub(super) struct Answer {
    ilp: Bytes,
    reject: Option<ErrorCode>,
    /// A route protocol message (counted apart from forwarded packets).
    ccp: bool,
}

/// A Prepare whose forwarding has to wait (see the module doc), and where to answer it.
type Job = (Link, u32, Incoming, Route);

/// The shard's workers for Prepares that must wait: jobs in an unbounded local queue (bounded
/// in practice: each link stops reading while too many of its MESSAGEs are unanswered),
/// `idle` workers waiting on it, `queued` jobs not yet taken; a worker is spawned only when
/// jobs outnumber idle workers, so no task is spawned per packet in steady state.
pub(super) struct Workers {
    tx: LocalSender<Job>,
    rx: LocalReceiver<Job>,
    idle: Cell<usize>,
    queued: Cell<usize>,
}

impl Workers {
    pub(super) fn new() -> Workers {
        let (tx, rx) = local_channel::new_unbounded();
        Workers {
            tx,
            rx,
            idle: Cell::new(0),
            queued: Cell::new(0),
        }
    }
}

impl Shard {
    /// The handler for a link of `peer`: each MESSAGE is handled on the link's task.
    pub(super) fn handler(self: &Rc<Self>, peer: &str) -> IncomingHandler {
        let shard = self.clone();
        let source = self.source(peer);
        Rc::new(move |link: &Link, packet: BtpPacket| shard.on_message(link, packet, &source))
    }

    /// One MESSAGE from `link`: answered now, relayed, or given to a worker.
    fn on_message(self: &Rc<Self>, link: &Link, packet: BtpPacket, source: &Rc<Source>) {
        let request_id = packet.request_id();
        let cid = packet.entry(CORRELATION_ENTRY).map(|e| {
            let mut c = [b'0'; 16];
            let n = e.data.len().min(16);
            c[..n].copy_from_slice(&e.data[..n]);
            c
        });
        let Some(ilp) = packet.into_ilp() else {
            let mut out = link.frame_buf(16);
            btpc::encode(&mut out, request_id, BtpBody::Response, &[]);
            let _ = link.send(out.freeze());
            return;
        };
        let mut incoming = self.begin(cid, source, &ilp);
        let route = match self.route(link.peer_id(), ilp, &mut incoming) {
            Ok(r) => r,
            Err(a) => return self.reply(link, request_id, incoming, a),
        };
        match &route.via {
            Via::Link(out) if !self.accounts.strict() => {
                let out = out.clone();
                self.relay(link, request_id, incoming, route, &out);
            }
            _ => self.to_worker((link.clone(), request_id, incoming, route)),
        }
    }

    /// Gives `job` to an idle worker, spawning one if none is idle.
    ///
    /// Out of line on purpose: a worker's future is tens of KiB (an HTTP exchange, a
    /// hand-over), and built inline it made every MESSAGE's stack frame ~192 KiB (a probe of
    /// every page of it per packet: 11 % of the CPU per packet at saturation). The packets
    /// that come here (next hops over HTTP, hand-overs, strict durability) wait anyway.
    #[inline(never)]
    #[cold]
    fn to_worker(self: &Rc<Self>, job: Job) {
        let w = &self.workers;
        if w.tx.try_send(job).is_err() {
            return; // Only once the shard is gone.
        }
        w.queued.set(w.queued.get() + 1);
        if w.queued.get() > w.idle.get() {
            w.idle.set(w.idle.get() + 1);
            glommio::spawn_local(self.clone().worker()).detach();
        }
    }

    /// Sends `route` on `out` and leaves the answer to [`AnswerSink::answered`].
    fn relay(&self, from: &Link, request_id: u32, incoming: Incoming, route: Route, out: &Link) {
        let frame = encode_forward(
            out.frame_buf(route.out.prepare.as_bytes().len() + 64),
            &route.out,
            incoming.cid.as_ref(),
        );
        let Some(frame) = frame else {
            return self.reply(from, request_id, incoming, cannot_rewrite(self));
        };
        self.log_forwarded(&incoming, &route);
        let amount = route.out.reserved.out_amount;
        let key = self.relayed.borrow_mut().insert(Relayed {
            from: from.clone(),
            request_id,
            incoming,
            pledge: route.out.pledge(),
        });
        if let Err(e) = out.relay(frame, route.deadline, amount, self.sink(), key) {
            let r = self.relayed.borrow_mut().remove(key);
            let (answer, _) = self.settle(Err(e), r.pledge);
            self.reply(&r.from, r.request_id, r.incoming, answer);
        }
    }

    /// Takes jobs until there are more than enough idle workers.
    async fn worker(self: Rc<Self>) {
        while let Some((link, request_id, incoming, route)) = self.workers.rx.recv().await {
            let w = &self.workers;
            w.queued.set(w.queued.get().saturating_sub(1));
            w.idle.set(w.idle.get().saturating_sub(1));
            let answer = self.forward(route, &incoming).await;
            self.reply(&link, request_id, incoming, answer);
            let w = &self.workers;
            if w.idle.get() >= MAX_IDLE_WORKERS {
                return;
            }
            w.idle.set(w.idle.get() + 1);
        }
    }

    /// An ILP-over-HTTP request from `peer` (see `crate::http::server`).
    pub(super) async fn answer_http(&self, peer: String, body: Bytes) -> Bytes {
        let source = self.source(&peer);
        let mut incoming = self.begin(None, &source, &body);
        let answer = match self.route(&peer, body, &mut incoming) {
            Ok(route) => self.forward(route, &incoming).await,
            Err(a) => a,
        };
        let ilp = answer.ilp.clone();
        self.finish(&peer, incoming, answer);
        ilp
    }

    /// Answers a BTP MESSAGE with `answer` and accounts for it.
    fn reply(&self, link: &Link, request_id: u32, incoming: Incoming, answer: Answer) {
        let mut out = link.frame_buf(answer.ilp.len() + 32);
        btpc::encode_ilp(&mut out, btpc::BtpType::Response, request_id, &answer.ilp);
        self.finish(link.peer_id(), incoming, answer);
        let _ = link.send(out.freeze());
    }

    /// A Prepare enters: counted in flight from now.
    fn begin(&self, cid: Option<[u8; 16]>, source: &Rc<Source>, ilp: &[u8]) -> Incoming {
        self.metrics.packet_started();
        Incoming {
            started: crate::clock::instant(),
            cid: cid.or_else(|| {
                tracing::enabled!(tracing::Level::DEBUG).then(|| rules::correlation_id(ilp))
            }),
            source: source.clone(),
            counted: false,
        }
    }

    /// A Prepare leaves with `answer`: metrics, the source's reject counts, its load.
    fn finish(&self, source: &str, incoming: Incoming, answer: Answer) {
        if incoming.counted {
            let load = &incoming.source.load;
            load.set(load.get().saturating_sub(1));
        }
        let latency_us = crate::clock::instant()
            .saturating_duration_since(incoming.started)
            .as_micros() as u64;
        if answer.ccp {
            self.metrics.ccp_message_done();
        } else {
            self.metrics.packet_done(answer.reject, latency_us);
            if let Some(code) = answer.reject {
                self.accounts.count_reject(source, code);
            }
        }
        if let Some(c) = &incoming.cid {
            tracing::debug!(nodeId = %self.node.config.node_id, component = "handler", event = "packet_response",
                correlationId = %std::str::from_utf8(c).unwrap_or("?"), result = answer.reject.as_ref().map_or("fulfilled", ErrorCode::as_str),
                latency_us);
        }
    }

    fn refuse(&self, r: Refusal) -> Answer {
        Answer {
            ilp: r.encode(self.node.identity.triggered_by()),
            reject: Some(r.code),
            ccp: false,
        }
    }

    /// Admission, then the rules: either the answer now (a refusal, ILDCP, CCP) or the
    /// Prepare routed, reserved and counted in its source's load.
    fn route(&self, source: &str, ilp: Bytes, incoming: &mut Incoming) -> Result<Route, Answer> {
        let node = &self.node;
        let cfg = &node.config;
        let refusal = if self.stopping() {
            Some((ErrorCode::T03_CONNECTOR_BUSY, "connector is shutting down"))
        } else if node.identity.get().is_none() {
            Some((
                ErrorCode::T01_PEER_UNREACHABLE,
                "connector is starting: its address is not known yet (asking the parent)",
            ))
        } else if self.metrics.in_flight() > cfg.max_in_flight_per_shard as i64 {
            Some((
                ErrorCode::T03_CONNECTOR_BUSY,
                "too many packets in flight on this shard",
            ))
        } else if incoming.source.load.get() >= cfg.max_in_flight_per_peer {
            Some((
                ErrorCode::T05_RATE_LIMITED,
                "too many of your packets in flight",
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            return Err(self.refuse(Refusal::new(code, message)));
        }
        let prepare = Prepare::decode(ilp).map_err(|e| {
            self.refuse(Refusal::new(
                ErrorCode::F01_INVALID_PACKET,
                format!("invalid ILP Prepare: {e}"),
            ))
        })?;
        // Borrowed, not copied: a propagated id must cost nothing when DEBUG logs are off.
        let cid_str = incoming
            .cid
            .as_ref()
            .map(|c| std::str::from_utf8(c).unwrap_or("?"));
        if let Some(c) = &cid_str {
            tracing::debug!(nodeId = %cfg.node_id, component = "handler", event = "packet_received",
                correlationId = %c, from = %source, destination = %prepare.destination_str(), amount = prepare.amount());
        }
        let now = crate::clock::timestamp();
        let timing = Timing {
            margin_ms: cfg.expiry_margin_ms as i64,
            max_hold_ms: cfg.max_hold_time_ms as i64,
            send_timeout_ms: cfg.send_timeout_ms as i64,
        };
        let terms = self.accounts.terms_cached(source, &incoming.source.terms);
        let decision = {
            let mut view = self.routing.borrow_mut();
            rules::decide(&prepare, now, timing, terms.child, |d| {
                view.lookup(d).map(|r| r.next_hop_arc().clone())
            })
        };
        let (next_hop, expires_at) = match decision {
            Decision::Refuse(r) => return Err(self.refuse(r)),
            Decision::Ccp => {
                return Err(match super::ccp::answer(node, source, &prepare) {
                    Ok(ilp) => Answer {
                        ilp,
                        reject: None,
                        ccp: true,
                    },
                    Err(r) => Answer {
                        ccp: true,
                        ..self.refuse(r)
                    },
                })
            }
            Decision::Ildcp => return Err(self.ildcp(source)),
            Decision::Forward {
                next_hop,
                expires_at,
            } => (next_hop, expires_at),
        };
        if let Some(c) = &cid_str {
            tracing::debug!(nodeId = %cfg.node_id, component = "handler", event = "route_lookup", correlationId = %c, next_hop = %next_hop);
        }
        if *next_hop == *source {
            return Err(self.refuse(Refusal::new(
                ErrorCode::F02_UNREACHABLE,
                "route loops back to the sender",
            )));
        }
        // Amount checks, conversion and both balance reservations, before anything goes out;
        // released when `reserved` is dropped on any path unless committed.
        let hop_terms = {
            let mut last = incoming.source.last_hop.borrow_mut();
            let (_, cache) = match &mut *last {
                Some(l) if Arc::ptr_eq(&l.0, &next_hop) => l,
                other => other.insert((next_hop.clone(), TermsCache::default())),
            };
            self.accounts.terms_cached(&next_hop, cache)
        };
        let reserved = self
            .accounts
            .reserve(terms, hop_terms, prepare.amount())
            .map_err(|r| self.refuse(r))?;
        // An ILP-over-HTTP peer, else a link on this shard, else the shard that has one,
        // else T01 now.
        let http = self.peers.borrow().http.get(&*next_hop).cloned();
        let via = match http {
            Some(client) => Via::Http(client),
            None => match self.pick_link(&next_hop) {
                Some(link) => Via::Link(link),
                None => match self.shard_with_link(&next_hop) {
                    Some(shard) => Via::Shard(shard),
                    None => {
                        return Err(self.refuse(Refusal::new(
                            ErrorCode::T01_PEER_UNREACHABLE,
                            format!("no live link to next hop {next_hop}"),
                        )))
                    }
                },
            },
        };
        // Until the outgoing expiry (already capped by the send timeout) and a short grace
        // for a Fulfill still on the wire: we never give up on a Prepare that can still be
        // fulfilled.
        let wait_ms = (expires_at.unix_millis() - now.unix_millis()).max(0) + timing.grace_ms();
        let load = &incoming.source.load;
        load.set(load.get() + 1);
        incoming.counted = true;
        Ok(Route {
            next_hop,
            via,
            deadline: incoming.started + Duration::from_millis(wait_ms as u64),
            out: Outgoing {
                prepare,
                reserved,
                expires_at,
            },
        })
    }

    /// Our ILDCP answer to `source` (a child).
    fn ildcp(&self, source: &str) -> Answer {
        let node = &self.node;
        // Known: `route` answers nothing else until it is.
        let Some(own) = node.identity.get() else {
            return self.refuse(Refusal::new(
                ErrorCode::T01_PEER_UNREACHABLE,
                "our address is not known yet",
            ));
        };
        let p = node.peers.get(source);
        let p = p.as_ref().map(|p| &p.config);
        Answer {
            ilp: rules::ildcp_fulfill(
                &format!("{}.{source}", own.address),
                p.and_then(|p| p.asset_scale).unwrap_or(own.asset_scale),
                p.and_then(|p| p.asset_code.as_deref())
                    .unwrap_or(&own.asset_code),
            ),
            reject: None,
            ccp: false,
        }
    }

    /// Forwards `route` and waits for the answer (the worker's and HTTP's path).
    async fn forward(&self, route: Route, incoming: &Incoming) -> Answer {
        let cid = incoming.cid.as_ref();
        let out = &route.out;
        let result = match &route.via {
            Via::Http(client) => {
                let mut body = BytesMut::from(&out.prepare.as_bytes()[..]);
                if rewrite_prepare(&mut body, out.reserved.out_amount, out.expires_at).is_err() {
                    return cannot_rewrite(self);
                }
                self.log_forwarded(incoming, &route);
                client.send(body.freeze(), route.deadline).await.map(Some)
            }
            Via::Link(link) => {
                let buf = link.frame_buf(out.prepare.as_bytes().len() + 64);
                let Some(frame) = encode_forward(buf, out, cid) else {
                    return cannot_rewrite(self);
                };
                self.log_forwarded(incoming, &route);
                link.request_until(frame, route.deadline, out.reserved.out_amount)
                    .await
                    .map(BtpPacket::into_ilp)
            }
            Via::Shard(shard) => {
                let buf = BytesMut::with_capacity(out.prepare.as_bytes().len() + 64);
                let Some(frame) = encode_forward(buf, out, cid) else {
                    return cannot_rewrite(self);
                };
                self.log_forwarded(incoming, &route);
                let (amount, next_hop) = (out.reserved.out_amount, route.next_hop.clone());
                self.hand_over(*shard, next_hop, frame, route.deadline, amount)
                    .await
                    .map(BtpPacket::into_ilp)
            }
        };
        let expires = route.out.prepare.expires_at();
        let (answer, seq) = self.settle(result, route.out.pledge());
        if let Some(seq) = seq {
            self.until_durable(seq, expires).await;
        }
        answer
    }

    fn log_forwarded(&self, incoming: &Incoming, route: &Route) {
        if let Some(c) = &incoming.cid {
            tracing::debug!(nodeId = %self.node.config.node_id, component = "handler", event = "packet_forwarded",
                correlationId = %std::str::from_utf8(c).unwrap_or("?"), next_hop = %route.next_hop, expires_at = %route.out.expires_at);
        }
    }

    /// The answer upstream from what the next hop said (its ILP answer, if any) or why it
    /// said nothing: a valid Fulfill commits the reservation (returning the journal
    /// sequence to wait for in strict mode), a Reject passes through, the rest maps to our
    /// Reject (and releases the reservation).
    fn settle(
        &self,
        result: Result<Option<Bytes>, LinkError>,
        pledge: Pledge,
    ) -> (Answer, Option<u64>) {
        let ilp = match result {
            Ok(ilp) => ilp,
            Err(e) => {
                let r =
                    rules::reject_for_link_error(&e, crate::clock::timestamp(), pledge.expires_at);
                return (self.refuse(r), None);
            }
        };
        match ilp.map(Packet::decode) {
            Some(Ok(Packet::Fulfill(f))) => match rules::check_fulfill(&pledge.condition, &f) {
                Ok(()) => {
                    let seq = pledge.reserved.commit();
                    let answer = Answer {
                        ilp: f.into_bytes(),
                        reject: None,
                        ccp: false,
                    };
                    (answer, seq)
                }
                Err(r) => (self.refuse(r), None),
            },
            Some(Ok(Packet::Reject(r))) => {
                let answer = Answer {
                    reject: Some(r.code()),
                    ilp: r.into_bytes(),
                    ccp: false,
                };
                (answer, None)
            }
            _ => {
                let r = Refusal::new(
                    ErrorCode::T00_INTERNAL_ERROR,
                    "next hop answered without a valid Fulfill or Reject",
                );
                (self.refuse(r), None)
            }
        }
    }

    /// Strict durability: holds a Fulfill until its balance change is on disk, at most
    /// until the incoming Prepare expires (then it goes anyway, logged: the next hop has
    /// been paid, so withholding the Fulfill would only lose the money).
    async fn until_durable(&self, seq: u64, expires: Timestamp) {
        if !self.accounts.strict() {
            return;
        }
        let left = (expires.unix_millis() - Timestamp::now().unix_millis()).max(0) as u64;
        if !self
            .accounts
            .durable(seq, Duration::from_millis(left))
            .await
        {
            tracing::error!(nodeId = %self.node.config.node_id, component = "accounts", event = "journal_too_slow",
                "a Fulfill went upstream before its balance change was durable");
        }
    }
}

impl AnswerSink for Shard {
    /// The next hop's answer to a relayed Prepare (or its deadline, or its link's failure).
    fn answered(&self, key: usize, result: Result<BtpPacket, LinkError>) {
        let Some(r) = self.relayed.borrow_mut().try_remove(key) else {
            return;
        };
        let (answer, _) = self.settle(result.map(BtpPacket::into_ilp), r.pledge);
        self.reply(&r.from, r.request_id, r.incoming, answer);
    }
}

fn cannot_rewrite(shard: &Shard) -> Answer {
    shard.refuse(Refusal::new(
        ErrorCode::T00_INTERNAL_ERROR,
        "cannot rewrite Prepare",
    ))
}

/// The BTP MESSAGE for the next hop in `frame`: the correlation id (when there is one) and
/// the Prepare, patched in place with the outgoing amount and expiry (it goes last in the
/// frame, so nothing is copied twice). Request id 0: the link sets its own.
fn encode_forward(mut frame: BytesMut, out: &Outgoing, cid: Option<&[u8; 16]>) -> Option<BytesMut> {
    let prepare = out.prepare.as_bytes();
    match cid {
        Some(c) => btpc::encode(
            &mut frame,
            0,
            BtpBody::Message,
            &[
                ProtocolData {
                    name: CORRELATION_ENTRY,
                    content_type: btpc::CONTENT_TEXT_UTF8,
                    data: c,
                },
                ProtocolData {
                    name: b"ilp",
                    content_type: CONTENT_OCTET_STREAM,
                    data: prepare,
                },
            ],
        ),
        None => btpc::encode_ilp(&mut frame, btpc::BtpType::Message, 0, prepare),
    }
    let at = frame.len() - prepare.len();
    rewrite_prepare(&mut frame[at..], out.reserved.out_amount, out.expires_at).ok()?;
    Some(frame)
}
