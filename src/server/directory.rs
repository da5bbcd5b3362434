//! The directory of the nodes announced here: who they are, where a list samples them from, and
//! the frames drawn from them (lists, the pushes of new joins, the `SystemConfig`), encoded once
//! where they are the same for everybody.

use std::collections::HashMap;

use bytes::Bytes;
use rand_core::RngCore;
use serde_json::value::RawValue;

use crate::cluster::state::Remote;
use crate::codec::Codec;
use crate::error::CodecError;
use crate::ids::ConnId;
use crate::protocol::{FledgerConfig, ListIDsReplyRef, NodeID, NodeInfo, RealmID, WSSignalMessageToNode};

/// The announced nodes, and what is drawn from them.
#[derive(Default)]
pub(super) struct Directory {
    nodes: HashMap<NodeID, Node>,
    /// Every announced node once, in no particular order: what list samples are drawn from.
    order: Vec<Listed>,
    /// The reply that lists every node, while they all fit in one; cleared when one joins or leaves.
    full_list: PerCodec,
    /// The `SystemConfig` frame, the same for every node: encoded once per codec.
    system_config: PerCodec,
}

/// An announced node.
pub(super) struct Node {
    pub(super) conn: ConnId,
    /// The codec of `conn`, kept here so that a relay needs one lookup.
    pub(super) codec: Codec,
    pub(super) info: NodeInfo,
    /// Index in `Directory::order`.
    slot: usize,
}

/// An entry of `Directory::order`: what a JSON list needs of a node, where a sample finds it
/// without hashing the node's id, so that drawing a list is one pass over the sampled slots.
struct Listed {
    id: NodeID,
    /// The node's `NodeInfo` as JSON, encoded once at the join: lists splice it instead of
    /// encoding it again.
    json: Box<RawValue>,
}

/// One encoded frame per codec.
#[derive(Default)]
struct PerCodec {
    json: Option<Bytes>,
    bincode: Option<Bytes>,
}

impl PerCodec {
    fn slot(&mut self, codec: Codec) -> &mut Option<Bytes> {
        if codec.is_binary() {
            &mut self.bincode
        } else {
            &mut self.json
        }
    }
}

impl Directory {
    /// How many nodes are announced.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// The node `id`, if it is announced here.
    pub(super) fn get(&self, id: &NodeID) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Whether `id` is announced here.
    pub(super) fn contains(&self, id: &NodeID) -> bool {
        self.nodes.contains_key(id)
    }

    /// Every announced node's id and node, in no particular order (the order lists sample).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeID, &Node)> + '_ {
        self.order.iter().filter_map(|listed| self.nodes.get_key_value(&listed.id))
    }

    /// Lists `id` as a node on `conn`.
    pub(super) fn insert(&mut self, id: NodeID, conn: ConnId, codec: Codec, info: NodeInfo) {
        // Our own NodeInfo always encodes; the fallback keeps this free of panics regardless.
        let json = serde_json::value::to_raw_value(&info).unwrap_or_else(|_| RawValue::NULL.to_owned());
        self.nodes.insert(id, Node { conn, codec, info, slot: self.order.len() });
        self.order.push(Listed { id, json });
        self.full_list = PerCodec::default();
    }

    /// Takes `id` off the lists, in O(1): the last node of `order` moves into its slot.
    pub(super) fn remove(&mut self, id: &NodeID) {
        self.full_list = PerCodec::default();
        if let Some(node) = self.nodes.remove(id).filter(|node| node.slot < self.order.len()) {
            self.order.swap_remove(node.slot);
            if let Some(moved) = self.order.get(node.slot).and_then(|moved| self.nodes.get_mut(&moved.id)) {
                moved.slot = node.slot;
            }
        }
    }

    /// Forgets every node (the cached `SystemConfig` stays: it does not depend on them).
    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.order.clear();
        self.full_list = PerCodec::default();
    }

    /// The `SystemConfig` frame for `realm` in `codec`, encoded at its first use.
    pub(super) fn system_config(&mut self, codec: Codec, realm: Option<RealmID>) -> Option<Bytes> {
        let slot = self.system_config.slot(codec);
        if slot.is_none() {
            let message = WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm: realm });
            *slot = codec.encode(&message).ok();
        }
        slot.clone()
    }

    /// A `ListIDsReply` for a node that speaks `codec`: at most `limit` nodes, sampled with `rng`
    /// from the local ones and, in proportion, the `remote` ones of a cluster (see
    /// [`mixed_list`](Self::mixed_list)). `None` only if the reply failed to encode, which
    /// would be a bug in this crate, not the peer's.
    pub(super) fn list(
        &mut self,
        rng: &mut impl RngCore,
        codec: Codec,
        limit: usize,
        remote: Option<(&[Remote], u64)>,
    ) -> Option<Bytes> {
        if let Some((pool, total)) = remote.filter(|(pool, _)| !pool.is_empty()) {
            return self.mixed_list(rng, codec, limit, pool, total);
        }
        if limit >= self.order.len() {
            // Everybody fits: the same reply for every request until a node joins or leaves.
            if self.full_list.slot(codec).is_none() {
                let everyone: Vec<&Listed> = self.order.iter().collect();
                let frame = self.encode_list(codec, &everyone).ok();
                *self.full_list.slot(codec) = frame;
            }
            return self.full_list.slot(codec).clone();
        }
        let slots = sample(rng, self.order.len(), limit);
        let listed: Vec<&Listed> = slots.into_iter().filter_map(|slot| self.order.get(slot)).collect();
        self.encode_list(codec, &listed).ok()
    }

    /// A list of local and remote nodes, in proportion to their numbers: of `limit` places,
    /// remote nodes get their share of all nodes (as the last sample counted them, `total`), at
    /// most the pool; local nodes the rest; and either side fills what the other cannot.
    fn mixed_list(
        &self,
        rng: &mut impl RngCore,
        codec: Codec,
        limit: usize,
        pool: &[Remote],
        total: u64,
    ) -> Option<Bytes> {
        let (local, pool_len) = (self.order.len(), pool.len());
        let remote_total = usize::try_from(total).unwrap_or(usize::MAX).max(pool_len);
        let all = local.saturating_add(remote_total);
        let share = if all <= limit {
            remote_total
        } else {
            // limit * remote / all, rounded; u128 cannot overflow with two usize factors.
            let scaled = (limit as u128 * remote_total as u128 + all as u128 / 2) / all.max(1) as u128;
            usize::try_from(scaled).unwrap_or(limit)
        };
        let mut remote = share.min(pool_len);
        let local_places = local.min(limit.saturating_sub(remote));
        remote = pool_len.min(limit.saturating_sub(local_places));
        let slots = sample(rng, local, local_places);
        let remotes = sample(rng, pool_len, remote);
        let locals = slots.iter().filter_map(|&slot| self.order.get(slot));
        let others = remotes.iter().filter_map(|&slot| pool.get(slot));
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
        frame.ok()
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

    /// The push of the nodes that `joined` since the last one, for up to `fanout` random nodes
    /// other than them that are not `busy`: one `ListIDsReply` with the newcomers first (those
    /// still here), filled up to `limit` with a random sample. It is encoded once per codec and
    /// shared by every recipient, so a join costs at most `fanout` frames, however many nodes are
    /// connected. Empty when none of the newcomers is still here.
    pub(super) fn push_joins(
        &self,
        rng: &mut impl RngCore,
        mut joined: Vec<NodeID>,
        limit: usize,
        fanout: usize,
        busy: impl Fn(ConnId) -> bool,
    ) -> Vec<(ConnId, Bytes)> {
        joined.sort_unstable();
        joined.dedup();
        joined.retain(|id| self.nodes.contains_key(id));
        if joined.is_empty() {
            return Vec::new();
        }
        let mut listed: Vec<&Listed> = joined
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .filter_map(|node| self.order.get(node.slot))
            .take(limit)
            .collect();
        let fill = sample(rng, self.order.len(), limit);
        listed.extend(
            fill.into_iter()
                .filter_map(|slot| self.order.get(slot))
                .filter(|listed| joined.binary_search(&listed.id).is_err())
                .take(limit.saturating_sub(listed.len())),
        );
        let recipients: Vec<(ConnId, Codec)> = sample(rng, self.order.len(), fanout)
            .into_iter()
            .filter_map(|slot| self.order.get(slot))
            .map(|listed| &listed.id)
            .filter(|id| joined.binary_search(id).is_err())
            .filter_map(|id| self.nodes.get(id))
            .filter(|node| !busy(node.conn))
            .map(|node| (node.conn, node.codec))
            .collect();
        // One reply for all recipients, encoded at most once per codec.
        let mut encoded = PerCodec::default();
        for &(_, codec) in &recipients {
            if encoded.slot(codec).is_none() {
                *encoded.slot(codec) = self.encode_list(codec, &listed).ok();
            }
        }
        recipients
            .into_iter()
            .filter_map(|(conn, codec)| Some((conn, encoded.slot(codec).clone()?)))
            .collect()
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

    fn info(n: u8) -> NodeInfo {
        NodeInfo::new(format!("n{n}"), "c", [n; 32])
    }

    fn listed(frame: &Bytes) -> Vec<NodeID> {
        match Codec::Json.decode::<crate::protocol::WSSignalMessageToNode>(frame).unwrap() {
            crate::protocol::WSSignalMessageToNode::ListIDsReply(nodes) => {
                nodes.iter().map(NodeInfo::id).collect()
            }
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn a_node_removed_from_the_middle_leaves_every_other_one_listed_and_the_cached_list_follows() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut directory = Directory::default();
        for n in 1..=4 {
            directory.insert(info(n).id(), ConnId::new(n.into()), Codec::Json, info(n));
        }
        let before = directory.list(&mut rng, Codec::Json, 100, None).unwrap();
        assert_eq!(listed(&before).len(), 4);
        directory.remove(&info(2).id());
        // The last node moved into the freed slot: every lookup still finds its own entry.
        assert_eq!(directory.len(), 3);
        assert!(!directory.contains(&info(2).id()));
        for n in [1, 3, 4] {
            assert_eq!(directory.get(&info(n).id()).map(|node| node.conn), Some(ConnId::new(n.into())));
        }
        let mut ids: Vec<NodeID> = directory.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![info(1).id(), info(3).id(), info(4).id()]);
        // The cached full list was dropped with the node.
        let after = directory.list(&mut rng, Codec::Json, 100, None).unwrap();
        let mut after = listed(&after);
        after.sort_unstable();
        assert_eq!(after, ids);
        // A sample when not everybody fits.
        assert_eq!(listed(&directory.list(&mut rng, Codec::Json, 2, None).unwrap()).len(), 2);
    }

    #[test]
    fn a_push_lists_the_newcomer_first_and_skips_it_and_busy_nodes() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let mut directory = Directory::default();
        for n in 1..=5 {
            directory.insert(info(n).id(), ConnId::new(n.into()), Codec::Json, info(n));
        }
        let busy = ConnId::new(3);
        let pushes =
            directory.push_joins(&mut rng, vec![info(5).id(), info(5).id()], 100, 100, |conn| conn == busy);
        let mut to: Vec<u64> = pushes.iter().map(|(conn, _)| conn.get()).collect();
        to.sort_unstable();
        assert_eq!(to, vec![1, 2, 4]);
        for (_, frame) in &pushes {
            let ids = listed(frame);
            assert_eq!(ids.first(), Some(&info(5).id()));
            assert_eq!(ids.len(), 5, "the newcomer once, then everybody else");
        }
        // A newcomer that left before the push: nothing to tell.
        directory.remove(&info(5).id());
        assert!(directory.push_joins(&mut rng, vec![info(5).id()], 100, 100, |_| false).is_empty());
    }

    #[test]
    fn below_stays_below() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        for n in [1, 2, 3, 7, 1000] {
            assert!((0..100).all(|_| below(&mut rng, n) < n));
        }
    }
}
