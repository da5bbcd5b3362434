//! The node directory: who is announced here, and the lists drawn from it.

use bytes::Bytes;
use rand_core::RngCore;
use serde_json::value::RawValue;

use crate::codec::Codec;
use crate::error::CodecError;
use crate::ids::ConnId;
use crate::protocol::{ListIDsReplyRef, NodeID, NodeInfo};

use super::SignalServer;

pub(super) struct Node {
    pub(super) conn: ConnId,
    /// The codec of `conn`, kept here so that a relay needs one lookup.
    pub(super) codec: Codec,
    pub(super) info: NodeInfo,
    /// Index in `SignalServer::order`.
    pub(super) slot: usize,
}

/// An entry of `SignalServer::order`: what a JSON list needs of a node, where a sample finds it
/// without hashing the node's id, so that drawing a list is one pass over the sampled slots.
pub(super) struct Listed {
    pub(super) id: NodeID,
    /// The node's `NodeInfo` as JSON, encoded once at the join: lists splice it instead of
    /// encoding it again.
    pub(super) json: Box<RawValue>,
}

/// One encoded frame per codec.
#[derive(Default)]
pub(super) struct PerCodec {
    json: Option<Bytes>,
    bincode: Option<Bytes>,
}

impl PerCodec {
    pub(super) fn slot(&mut self, codec: Codec) -> &mut Option<Bytes> {
        if codec.is_binary() {
            &mut self.bincode
        } else {
            &mut self.json
        }
    }
}

impl SignalServer {
    /// Lists `id` as a node on `conn`.
    pub(super) fn insert_node(&mut self, id: NodeID, conn: ConnId, codec: Codec, info: NodeInfo) {
        // Our own NodeInfo always encodes; the fallback keeps this free of panics regardless.
        let json = serde_json::value::to_raw_value(&info).unwrap_or_else(|_| RawValue::NULL.to_owned());
        self.nodes.insert(id, Node { conn, codec, info, slot: self.order.len() });
        self.order.push(Listed { id, json });
        self.full_list = PerCodec::default();
    }

    /// Takes `id` off the lists, in O(1): the last node of `order` moves into its slot.
    pub(super) fn remove_node(&mut self, id: &NodeID) {
        self.full_list = PerCodec::default();
        if let Some(node) = self.nodes.remove(id).filter(|node| node.slot < self.order.len()) {
            self.order.swap_remove(node.slot);
            if let Some(moved) = self.order.get(node.slot).and_then(|moved| self.nodes.get_mut(&moved.id)) {
                moved.slot = node.slot;
            }
        }
    }

    pub(super) fn send_list(&mut self, conn: ConnId, codec: Codec) {
        if self.cluster.as_ref().is_some_and(|cluster| !cluster.pool.is_empty()) {
            return self.send_mixed_list(conn, codec);
        }
        if self.config.max_list_len >= self.order.len() {
            // Everybody fits: the same reply for every request until a node joins or leaves.
            if self.full_list.slot(codec).is_none() {
                let everyone: Vec<&Listed> = self.order.iter().collect();
                let frame = self.encode_list(codec, &everyone).ok();
                *self.full_list.slot(codec) = frame;
            }
            if let Some(frame) = self.full_list.slot(codec).clone() {
                self.reply(conn, frame);
            }
            return;
        }
        let slots = sample(&mut self.rng, self.order.len(), self.config.max_list_len);
        let listed: Vec<&Listed> = slots.into_iter().filter_map(|slot| self.order.get(slot)).collect();
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = self.encode_list(codec, &listed) {
            self.reply(conn, frame);
        }
    }

    /// A list of local and remote nodes, in proportion to their numbers: of `max_list_len`
    /// places, remote nodes get their share of all nodes (as the last sample counted them), at
    /// most the pool; local nodes the rest; and either side fills what the other cannot.
    fn send_mixed_list(&mut self, conn: ConnId, codec: Codec) {
        let Some(cluster) = self.cluster.as_ref() else { return };
        let limit = self.config.max_list_len;
        let (local, pool) = (self.order.len(), cluster.pool.len());
        let remote_total = usize::try_from(cluster.remote_total).unwrap_or(usize::MAX).max(pool);
        let all = local.saturating_add(remote_total);
        let share = if all <= limit {
            remote_total
        } else {
            // limit * remote / all, rounded; u128 cannot overflow with two usize factors.
            let scaled = (limit as u128 * remote_total as u128 + all as u128 / 2) / all.max(1) as u128;
            usize::try_from(scaled).unwrap_or(limit)
        };
        let mut remote = share.min(pool);
        let local_places = local.min(limit.saturating_sub(remote));
        remote = pool.min(limit.saturating_sub(local_places));
        let slots = sample(&mut self.rng, local, local_places);
        let remotes = sample(&mut self.rng, pool, remote);
        let Some(cluster) = self.cluster.as_ref() else { return };
        let locals = slots.iter().filter_map(|&slot| self.order.get(slot));
        let others = remotes.iter().filter_map(|&slot| cluster.pool.get(slot));
        let frame = match codec {
            Codec::Json => {
                let raw: Vec<&RawValue> =
                    locals.map(|listed| &*listed.json).chain(others.map(|remote| &*remote.json)).collect();
                json_list(&raw)
            }
            Codec::Bincode => {
                let infos: Vec<&NodeInfo> = locals
                    .filter_map(|listed| self.nodes.get(&listed.id))
                    .map(|node| &node.info)
                    .chain(others.map(|remote| &remote.info))
                    .collect();
                codec.encode(&ListIDsReplyRef(&infos))
            }
        };
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = frame {
            self.reply(conn, frame);
        }
    }

    /// A `ListIDsReply` of the nodes `listed`. JSON splices each node's pre-encoded text.
    fn encode_list(&self, codec: Codec, listed: &[&Listed]) -> Result<Bytes, CodecError> {
        match codec {
            Codec::Json => json_list(&listed.iter().map(|listed| &*listed.json).collect::<Vec<_>>()),
            Codec::Bincode => {
                let infos: Vec<&NodeInfo> = listed
                    .iter()
                    .filter_map(|listed| self.nodes.get(&listed.id))
                    .map(|node| &node.info)
                    .collect();
                codec.encode(&ListIDsReplyRef(&infos))
            }
        }
    }

    /// Tells up to `list_push_fanout` random nodes about the nodes that joined since the last
    /// push: one `ListIDsReply` with the newcomers first, filled up with a random sample. It is
    /// encoded once per codec and shared by every recipient, so a join costs at most
    /// `list_push_fanout` frames, however many nodes are connected.
    pub(super) fn push_joins(&mut self) {
        let mut joined = std::mem::take(&mut self.push.joined);
        self.push.due = None;
        joined.sort_unstable();
        joined.dedup();
        joined.retain(|id| self.nodes.contains_key(id));
        if joined.is_empty() {
            return;
        }
        let limit = self.config.max_list_len;
        let mut listed: Vec<&Listed> = joined
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .filter_map(|node| self.order.get(node.slot))
            .take(limit)
            .collect();
        let fill = sample(&mut self.rng, self.order.len(), limit);
        listed.extend(
            fill.into_iter()
                .filter_map(|slot| self.order.get(slot))
                .filter(|listed| joined.binary_search(&listed.id).is_err())
                .take(limit.saturating_sub(listed.len())),
        );
        let recipients: Vec<(ConnId, Codec)> =
            sample(&mut self.rng, self.order.len(), self.config.list_push_fanout)
                .into_iter()
                .filter_map(|slot| self.order.get(slot))
                .map(|listed| &listed.id)
                .filter(|id| joined.binary_search(id).is_err())
                .filter_map(|id| self.nodes.get(id))
                .filter(|node| !self.conns.get(&node.conn).is_some_and(|c| c.busy))
                .map(|node| (node.conn, node.codec))
                .collect();
        // One reply for all recipients, encoded at most once per codec.
        let mut encoded = PerCodec::default();
        for &(_, codec) in &recipients {
            if encoded.slot(codec).is_none() {
                *encoded.slot(codec) = self.encode_list(codec, &listed).ok();
            }
        }
        for (conn, codec) in recipients {
            if let Some(frame) = encoded.slot(codec).clone() {
                self.push_frame(conn, frame);
            }
        }
    }
}

/// A JSON `ListIDsReply` of pre-encoded `NodeInfo`s, written into a buffer of its final size.
fn json_list(raw: &[&RawValue]) -> Result<Bytes, CodecError> {
    let mut out = Vec::with_capacity(json_list_len(raw));
    serde_json::to_writer(&mut out, &ListIDsReplyRef(raw)).map_err(|e| CodecError::Json(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// The length of [`json_list`]'s output, or a few bytes more: `{"ListIDsReply":[` and `]}`
/// around the entries, a comma after each.
fn json_list_len(raw: &[&RawValue]) -> usize {
    raw.iter().map(|raw| raw.get().len() + 1).sum::<usize>() + 20
}

/// `min(k, n)` distinct indices below `n`, each subset equally likely (Floyd's algorithm, O(k)).
/// With `k >= n`, all of them in order.
fn sample(rng: &mut impl RngCore, n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    // The indices come from our own generator, never from a peer: a fast hash serves.
    let mut chosen = rustc_hash::FxHashSet::with_capacity_and_hasher(k, Default::default());
    let mut picked = Vec::with_capacity(k);
    for j in n - k..n {
        let t = below(rng, j + 1);
        let pick = if chosen.insert(t) { t } else { j };
        chosen.insert(pick);
        picked.push(pick);
    }
    picked
}

/// A uniform integer in `0..n`, for `n > 0`, without modulo bias.
fn below(rng: &mut impl RngCore, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn sample_is_distinct_in_range_and_covers_everything() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let mut seen = [0u32; 10];
        for _ in 0..2000 {
            let picked = sample(&mut rng, 10, 3);
            assert_eq!(picked.len(), 3);
            let mut sorted = picked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "indices repeat: {picked:?}");
            for i in picked {
                seen[i] += 1;
            }
        }
        // Each index is expected 600 times; uniformity within a generous margin.
        assert!(seen.iter().all(|&c| (450..750).contains(&c)), "{seen:?}");
        assert_eq!(sample(&mut rng, 4, 10), vec![0, 1, 2, 3]);
        assert!(sample(&mut rng, 0, 3).is_empty());
    }

    #[test]
    fn a_spliced_json_list_is_the_encoded_list_in_a_buffer_that_never_grows() {
        use crate::protocol::WSSignalMessageToNode;
        let infos: Vec<NodeInfo> =
            (0..4u8).map(|i| NodeInfo::new(format!("n\"{i}\\ \u{1}é"), "c", [i; 32])).collect();
        for len in 0..=infos.len() {
            let infos = &infos[..len];
            let raw: Vec<Box<RawValue>> =
                infos.iter().map(|info| serde_json::value::to_raw_value(info).unwrap()).collect();
            let raw: Vec<&RawValue> = raw.iter().map(|raw| &**raw).collect();
            let spliced = json_list(&raw).unwrap();
            let owned = Codec::Json.encode(&WSSignalMessageToNode::ListIDsReply(infos.to_vec())).unwrap();
            assert_eq!(spliced, owned);
            assert!(json_list_len(&raw) >= spliced.len(), "{} < {}", json_list_len(&raw), spliced.len());
        }
    }

    #[test]
    fn below_stays_below() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        for n in [1, 2, 3, 7, 1000] {
            assert!((0..100).all(|_| below(&mut rng, n) < n));
        }
    }
}
