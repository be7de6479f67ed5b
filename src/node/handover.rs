//! Hand-over between shards: the fallback for a Prepare whose next hop has no link on the
//! shard that read it (a peer that dialled in and landed on another shard). The encoded frame
//! goes through the node's channel mesh (bounded SPSC per shard pair) to a shard that has a
//! link; that shard sends it and returns the answer through a oneshot channel. Both waits are
//! bounded by the packet's deadline, and a shard that goes away resolves to link-lost. It
//! costs a cross-thread wake-up per packet, so it is counted
//! (`ilp_packets_handed_over_total`) and kept off the usual path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Receivers;

use super::shard::Shard;
use crate::btp::LinkError;
use crate::codec::BtpPacket;

/// A packet handed to the shard that holds a link to its next hop.
pub struct Handoff {
    next_hop: Arc<str>,
    /// The BTP MESSAGE, ready to send (its request id is set by the link).
    frame: BytesMut,
    /// Already bounded by the send timeout.
    deadline: Instant,
    amount: u64,
    reply: oneshot::Sender<Result<BtpPacket, LinkError>>,
}

impl Shard {
    /// The other shard that has a live link to `next_hop`, if this node can hand over.
    pub(super) fn shard_with_link(&self, next_hop: &str) -> Option<usize> {
        self.handoff.as_ref()?;
        self.node.peers.shard_with_link(next_hop, self.index)
    }

    /// Sends what the other shards hand over, until they are gone.
    pub(super) fn serve_handed(self: &std::rc::Rc<Self>, mut receivers: Receivers<Handoff>) {
        for (_, rx) in receivers.streams() {
            let me = self.clone();
            glommio::spawn_local(async move {
                while let Some(h) = rx.recv().await {
                    let me = me.clone();
                    glommio::spawn_local(async move { me.send_handed(h).await }).detach();
                }
            })
            .detach();
        }
    }

    /// Sends a packet another shard handed over on a link of this shard; the answer (or the
    /// failure) goes back through the oneshot channel.
    async fn send_handed(&self, h: Handoff) {
        let result = match self.pick_link(&h.next_hop) {
            Some(link) => link.request_until(h.frame, h.deadline, h.amount).await,
            None => Err(LinkError::LinkLost),
        };
        let _ = h.reply.send(result);
    }

    /// Sends `frame` on a link of `shard` and waits for the answer.
    pub(super) async fn hand_over(
        &self,
        shard: usize,
        next_hop: Arc<str>,
        frame: BytesMut,
        deadline: Instant,
        amount: u64,
    ) -> Result<BtpPacket, LinkError> {
        let Some(senders) = &self.handoff else {
            return Err(LinkError::LinkLost);
        };
        let (reply, answer) = oneshot::channel();
        let h = Handoff {
            next_hop,
            frame,
            deadline,
            amount,
            reply,
        };
        // Both waits bounded: a shard that is gone or stuck must not hold the packet.
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::btp::within(left, senders.send_to(shard, h)).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(LinkError::LinkLost),
            None => return Err(LinkError::Timeout),
        }
        self.metrics.handed_over();
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match crate::btp::within(left, answer).await {
            Some(r) => r.unwrap_or(Err(LinkError::LinkLost)),
            None => Err(LinkError::Timeout),
        }
    }
}
