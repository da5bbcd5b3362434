//! The Redis backplane (feature `redis`): several processes, one network.
//!
//! What lives in Redis, under a prefix (`peer-signal` by default), on each of the servers the
//! nodes are sharded over (for the nodes whose ids hash to it):
//!
//! - `<prefix>:i:<instance>`, a hash per instance: node id (hex) → its `NodeInfo` as JSON. It
//!   expires after [`RedisConfig::presence_ttl`] unless the instance's heartbeat renews it, so
//!   an instance that dies takes its nodes off every list with it.
//! - `<prefix>:instances`, a sorted set of instances by their last heartbeat (Redis's clock).
//! - `<prefix>:gen`, the counter that ranks claims; never below Redis's clock in microseconds,
//!   so that ranks do not go backwards when Redis restarts empty.
//! - `<prefix>:n:<node id>`, a channel per node, which the instance that holds the node
//!   subscribes to. A relay is one `PUBLISH`; Redis answers how many instances received it, so
//!   a relay to a node that nobody holds (or whose instance lost its connection, which drops
//!   its subscriptions at once) is answered `unknown destination` in one round trip.
//!
//! One channel per node rather than per instance: a per-instance channel would need a lookup
//! of the node's instance before each relay (a second round trip, or a cache that goes stale),
//! and could not say "nobody holds it" without a message back from the other instance. Redis
//! keeps a channel in a hash table: a subscription costs about 100 bytes in Redis and one
//! command per join and leave.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::wire::{self, BusMessage};
use super::{Backplane, ClusterIn, ClusterOut, Undelivered};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ConfigError;
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo};

/// Settings of a [`RedisBackplane`]. Every wait on Redis has a deadline, every queue a bound.
///
/// ```
/// use peer_signal::RedisConfig;
///
/// let config = RedisConfig::default().with_url("redis://127.0.0.1:6379");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where Redis is, e.g. `redis://127.0.0.1:6379` (a user and password, if any, go in the URL:
    /// `redis://user:password@host:6379`), or `rediss://host:6380` for TLS, trusting the
    /// system's roots or [`tls_roots`](Self::tls_roots).
    pub url: String,
    /// For `rediss://`: the certificates (PEM) to trust instead of the system's roots, e.g. a
    /// private CA's. Default `None`.
    pub tls_roots: Option<Vec<u8>>,
    /// More Redis servers, independent of each other and of [`url`](Self::url): the nodes are
    /// sharded over all of them by their id (a stable hash), each node's presence, claims and
    /// relays on its shard only, so that an outage of one takes only its share of the nodes off
    /// the bus. Every instance must list the same servers in the same order. Adding one moves a
    /// `1 / (n + 1)` share of the ids to it, once the instances restart with the longer list.
    /// Default none.
    pub shard_urls: Vec<String>,
    /// This instance's name on the bus: unique among the instances, at most 64 ASCII
    /// letters, digits, `-`, `_` or `.`. Empty: a random one.
    pub instance: String,
    /// The prefix of every key and channel. Default `peer-signal`.
    pub prefix: String,
    /// How long an instance's nodes stay listed after its last heartbeat. Default 10 s.
    pub presence_ttl: Duration,
    /// How often the heartbeat renews them. Default 2 s.
    pub heartbeat: Duration,
    /// How often the pool of remote nodes for lists is refreshed. Default 2 s.
    pub sample_interval: Duration,
    /// Remote nodes in one sample. Default 1,000.
    pub max_sample: usize,
    /// The deadline of every Redis command; a command that misses it takes the bus down until
    /// Redis answers again. Default 1 s.
    pub command_timeout: Duration,
    /// The key the instances of one network share ([`ClusterKey`]): every message on the bus and
    /// every presence entry carries an HMAC-SHA256 under it, and what fails the check is
    /// dropped and counted in [`RedisStats::rejected`], so whoever can reach Redis without the
    /// key cannot close, list or speak for a node. Default `None`: nothing is authenticated, as
    /// before; every instance of a network must have the same setting.
    pub cluster_key: Option<ClusterKey>,
    /// Messages waiting to be published (relays and bounces). When full, a relay is answered
    /// `unknown destination` at once and counted. Default 4,096.
    pub max_queue: usize,
    /// Bytes waiting to be published, as for `max_queue`. Default 16 MiB.
    pub max_queue_bytes: usize,
    /// Frames and bounces from other instances waiting for the server. When full, what arrives
    /// is dropped and counted (`dropped_in`). The bus's state (up or down, claims, takeovers,
    /// samples) waits apart and is never dropped: the latest up/down and sample, and one claim
    /// and the highest takeover per node held here. Default 65,536.
    pub max_events: usize,
    /// Bytes of frames waiting for the server, as for `max_events`. Default 16 MiB.
    pub max_event_bytes: usize,
    /// The longest message accepted from the bus: a frame of the server's `max_frame_size`
    /// and the header. Default 64 KiB + 64.
    pub max_message_size: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            instance: String::new(),
            tls_roots: None,
            shard_urls: Vec::new(),
            prefix: "peer-signal".into(),
            presence_ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            sample_interval: Duration::from_secs(2),
            max_sample: 1000,
            command_timeout: Duration::from_secs(1),
            cluster_key: None,
            max_queue: 4096,
            max_queue_bytes: 16 << 20,
            max_events: 65_536,
            max_event_bytes: 16 << 20,
            max_message_size: 64 * 1024 + 64,
        }
    }
}

setters! {
    RedisConfig {
        with_presence_ttl => presence_ttl: Duration,
        with_heartbeat => heartbeat: Duration,
        with_sample_interval => sample_interval: Duration,
        with_max_sample => max_sample: usize,
        with_command_timeout => command_timeout: Duration,
        with_max_queue => max_queue: usize,
        with_max_queue_bytes => max_queue_bytes: usize,
        with_max_events => max_events: usize,
        with_max_event_bytes => max_event_bytes: usize,
        with_max_message_size => max_message_size: usize,
        with_shard_urls => shard_urls: Vec<String>,
    }
    optional {
        with_cluster_key => cluster_key: ClusterKey,
        with_tls_roots => tls_roots: Vec<u8>,
    }
}

impl RedisConfig {
    /// Which Redis server holds node `id`: 0 for [`url`](Self::url), `i` for the `i`-th of
    /// [`shard_urls`](Self::shard_urls).
    pub fn shard_of(&self, id: &NodeID) -> usize {
        shard_of(id, 1 + self.shard_urls.len())
    }

    /// Sets [`url`](Self::url).
    #[must_use]
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets [`instance`](Self::instance).
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// Sets [`prefix`](Self::prefix).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            // url: not printed, it may hold a password.
            .field("tls_roots", &self.tls_roots.as_ref().map(|pem| format!("<{} bytes>", pem.len())))
            .field("instance", &self.instance)
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .field("heartbeat", &self.heartbeat)
            .field("sample_interval", &self.sample_interval)
            .field("max_sample", &self.max_sample)
            .field("command_timeout", &self.command_timeout)
            .field("max_queue", &self.max_queue)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("max_events", &self.max_events)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_message_size", &self.max_message_size)
            .field("cluster_key", &self.cluster_key)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Checks the settings: durations and sizes more than zero, the heartbeat shorter than the
    /// presence TTL, and an instance id of at most 64 of the allowed characters.
    ///
    /// # Errors
    ///
    /// The first refused setting, as a [`ConfigError`] that names it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::limits::{at_least, at_most, duration, nonzero, MAX_QUEUE};
        duration("presence_ttl", self.presence_ttl)?;
        duration("heartbeat", self.heartbeat)?;
        if self.heartbeat >= self.presence_ttl {
            return Err(ConfigError::Below {
                field: "presence_ttl",
                value: u64::try_from(self.presence_ttl.as_millis()).unwrap_or(u64::MAX),
                other: "heartbeat",
                other_value: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            });
        }
        duration("sample_interval", self.sample_interval)?;
        nonzero("max_sample", self.max_sample)?;
        duration("command_timeout", self.command_timeout)?;
        nonzero("max_queue", self.max_queue)?;
        nonzero("max_queue_bytes", self.max_queue_bytes)?;
        nonzero("max_events", self.max_events)?;
        // The events' channel allocates its slots' index up front and panics far below usize::MAX.
        at_most("max_events", self.max_events, MAX_QUEUE)?;
        nonzero("max_event_bytes", self.max_event_bytes)?;
        nonzero("max_message_size", self.max_message_size)?;
        if let Some(key) = &self.cluster_key {
            at_least("cluster_key", key.0.len(), "16 bytes", MIN_KEY_LEN)?;
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.instance.len() > wire::MAX_INSTANCE_LEN || !self.instance.chars().all(valid) {
            return Err(ConfigError::Invalid { field: "instance" });
        }
        if self.prefix.is_empty() || !self.prefix.chars().all(|c| valid(c) || c == ':') {
            return Err(ConfigError::Invalid { field: "prefix" });
        }
        Ok(())
    }
}

/// Why a [`RedisBackplane`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// A setting of [`RedisConfig`] is refused.
    #[error("invalid configuration: {0}")]
    Config(#[source] ConfigError),
    /// The URL is not one of Redis.
    #[error("invalid redis url: {0}")]
    Url(String),
}

/// The shortest [`ClusterKey`]: 16 bytes.
const MIN_KEY_LEN: usize = 16;
/// The length of the tag a [`ClusterKey`] adds to every message and presence entry.
const TAG_LEN: usize = 32;

/// The secret the instances of one network share, for [`RedisConfig::cluster_key`]: at least 16
/// bytes (32 random ones recommended). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// A key from its bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts`: HMAC-SHA256 over each part, length first, so that no two ways of
    /// cutting the same bytes share a tag.
    fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts`, in constant time.
    fn verifies(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(parts).verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(<{} bytes>)", self.0.len())
    }
}

/// Domains of the tags, so that a tag of one kind never passes for another.
const BUS_DOMAIN: &[u8] = b"peer-signal bus v1";
const PRESENCE_DOMAIN: &[u8] = b"peer-signal presence v1";

/// Counters of a [`RedisBackplane`], from [`RedisHandle::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// The Redis servers the nodes are sharded over.
    pub shards: usize,
    /// Of them, those that answer.
    pub shards_up: usize,
    /// Whether Redis answers and every local node is registered.
    pub up: bool,
    /// Times the bus went down.
    pub downs: u64,
    /// Relays published.
    pub published: u64,
    /// Relays that reached no instance (or could not be published), answered with an error.
    pub undeliverable: u64,
    /// Messages received from the bus for local nodes.
    pub received: u64,
    /// Relays and bounces dropped because the queue to Redis was full.
    pub dropped_out: u64,
    /// Inputs dropped because the server did not take them fast enough.
    pub dropped_in: u64,
    /// Messages from the bus refused by the checks.
    pub rejected: u64,
    /// Local nodes this instance holds.
    pub held: usize,
    /// Local nodes registered in Redis now.
    pub registered: usize,
}

/// The [`Backplane`] over Redis: give it to a [`Driver`](crate::Driver) with a server made by
/// [`SignalServer::with_cluster`](crate::SignalServer::with_cluster). Keep its
/// [`RedisHandle`] for readiness, metrics and a clean shutdown.
///
/// It starts down and connects in the background: until Redis answers, the server serves its
/// own nodes. Needs a tokio runtime.
pub struct RedisBackplane {
    shards: Vec<Shard>,
    /// Which shards are up, and whether the server was last told that the bus is.
    up: Vec<bool>,
    told_up: bool,
    /// The latest sample of each shard; the server gets them merged.
    samples: Vec<(Vec<NodeInfo>, u64)>,
    max_sample: usize,
}

/// One Redis server's share of the backplane: the nodes whose ids hash to it ([`shard_of`]).
struct Shard {
    shared: Arc<Shared>,
    events: mpsc::Receiver<ClusterIn>,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let instance = self.shards.first().map(|shard| shard.shared.instance.as_str());
        f.debug_struct("RedisBackplane")
            .field("instance", &instance)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// Readiness, counters and shutdown of a [`RedisBackplane`]. Cheap to clone.
#[derive(Clone)]
pub struct RedisHandle {
    shards: Arc<[Arc<Shared>]>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHandle")
            .field("instance", &self.instance())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// The shard of `id` among `n`: jump consistent hashing (Lamping and Veach) of the id's first 8
/// bytes, so that going from `n` to `n + 1` shards moves only a `1 / (n + 1)` share of the ids.
pub(crate) fn shard_of(id: &NodeID, n: usize) -> usize {
    let mut head = [0; 8];
    head.copy_from_slice(id.as_bytes().get(..8).unwrap_or(&[0; 8]));
    let mut key = u64::from_be_bytes(head);
    let (mut bucket, mut jump) = (-1_i64, 0_i64);
    let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
    while jump < n {
        bucket = jump;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let scale = (1_u64 << 31) as f64 / ((key >> 33).wrapping_add(1)) as f64;
        jump = ((bucket.wrapping_add(1)) as f64 * scale) as i64;
    }
    usize::try_from(bucket).unwrap_or(0)
}

struct Shared {
    config: RedisConfig,
    instance: String,
    state: Mutex<State>,
    events: mpsc::Sender<ClusterIn>,
    event_bytes: AtomicUsize,
    /// State for the server that is never dropped, beside `events`, which may drop frames.
    pending: Mutex<Pending>,
    pending_wake: Notify,
    presence_wake: Notify,
    relay_wake: Notify,
    up: AtomicBool,
    /// `up`, for those who wait for it to change.
    up_watch: watch::Sender<bool>,
    /// Redis may have forgotten our subscriptions or our hash: register everything again.
    reregister: AtomicBool,
    stop: AtomicBool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    downs: AtomicU64,
    published: AtomicU64,
    undeliverable: AtomicU64,
    received: AtomicU64,
    dropped_out: AtomicU64,
    dropped_in: AtomicU64,
    rejected: AtomicU64,
    registered: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// What the server said it holds: kept through outages, to register again.
    held: HashMap<NodeID, Held>,
    /// The ids registered in Redis now (as far as this instance knows), with the connection of
    /// their claim.
    on_bus: HashMap<NodeID, ConnId>,
    /// The channels this instance may be subscribed to: a registration that failed halfway
    /// leaves its subscription here, to be undone.
    subscribed: std::collections::HashSet<NodeID>,
    /// Ids whose registration may differ from `held`: a subset of `held` and `on_bus`, so it is
    /// bounded by the nodes held, however many come and go while Redis is down.
    dirty: BTreeSet<NodeID>,
    outgoing: VecDeque<Outgoing>,
    outgoing_bytes: usize,
}

/// What the server must hear however full the frame queue is: the bus up or down (the latest
/// state), each held id's claim and the highest takeover seen for it (entries only for ids this
/// instance holds or is subscribed to, so bounded by its nodes), and the latest sample.
#[derive(Default)]
struct Pending {
    up: Option<bool>,
    claimed: HashMap<NodeID, (ConnId, u64)>,
    taken_over: HashMap<NodeID, u64>,
    sample: Option<(Vec<NodeInfo>, u64)>,
}

impl Pending {
    /// Keeps `input` if it is state; gives it back if it is a frame or a bounce.
    fn keep(&mut self, input: ClusterIn) -> Option<ClusterIn> {
        match input {
            ClusterIn::Up => self.up = Some(true),
            ClusterIn::Down => self.up = Some(false),
            ClusterIn::Claimed { id, conn, gen } => {
                let newer = self.claimed.get(&id).is_none_or(|&(_, held)| gen >= held);
                if newer {
                    self.claimed.insert(id, (conn, gen));
                }
            }
            ClusterIn::TakenOver { id, gen } => {
                let highest = self.taken_over.entry(id).or_insert(gen);
                *highest = (*highest).max(gen);
            }
            ClusterIn::Sample { nodes, total } => self.sample = Some((nodes, total)),
            other => return Some(other),
        }
        None
    }

    /// The next state input: the bus's state first, then claims, takeovers, the sample.
    fn take(&mut self) -> Option<ClusterIn> {
        if let Some(up) = self.up.take() {
            return Some(if up { ClusterIn::Up } else { ClusterIn::Down });
        }
        if let Some(&id) = self.claimed.keys().next() {
            let (conn, gen) = self.claimed.remove(&id)?;
            return Some(ClusterIn::Claimed { id, conn, gen });
        }
        if let Some(&id) = self.taken_over.keys().next() {
            let gen = self.taken_over.remove(&id)?;
            return Some(ClusterIn::TakenOver { id, gen });
        }
        let (nodes, total) = self.sample.take()?;
        Some(ClusterIn::Sample { nodes, total })
    }
}

struct Held {
    conn: ConnId,
    json: String,
    /// The rank of its claim, once Redis gave one.
    gen: Option<u64>,
}

struct Outgoing {
    /// The node whose channel it goes to.
    channel: NodeID,
    payload: Vec<u8>,
    /// For a relay: its sender, to tell when it reaches nobody.
    relay_from: Option<NodeID>,
    /// For an application's command: its token, to tell whether it reached an instance.
    control: Option<u64>,
}

fn hex_id(id: &NodeID) -> String {
    hex::encode(id.as_bytes())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every step leaves the state consistent, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `payload` as it goes on the channel of node `to`: with the cluster key, its tag over the
    /// channel's name and the payload appended. Without a key it is the payload as it is, and the
    /// channel's name is not even formatted: this is on every relay's path.
    fn seal(&self, to: &NodeID, mut payload: Vec<u8>) -> Vec<u8> {
        if let Some(key) = &self.config.cluster_key {
            let tag = key.tag(&[BUS_DOMAIN, self.channel(to).as_bytes(), &payload]);
            payload.extend_from_slice(&tag);
        }
        payload
    }

    /// The payload of a message from `channel`, its tag checked and cut off; `None` for one
    /// that fails the check.
    fn open<'a>(&self, channel: &str, payload: &'a [u8]) -> Option<&'a [u8]> {
        let Some(key) = &self.config.cluster_key else { return Some(payload) };
        let body_len = payload.len().checked_sub(TAG_LEN)?;
        let (body, tag) = payload.split_at(body_len);
        key.verifies(&[BUS_DOMAIN, channel.as_bytes(), body], tag).then_some(body)
    }

    /// A node's presence entry: its `NodeInfo` JSON, after the hex of its tag with the key.
    fn presence_value(&self, json: String) -> String {
        match &self.config.cluster_key {
            Some(key) => {
                let mut value = hex::encode(key.tag(&[PRESENCE_DOMAIN, json.as_bytes()]));
                value.push_str(&json);
                value
            }
            None => json,
        }
    }

    /// The JSON of a presence entry, its tag checked; `None` for one that fails the check.
    fn presence_json<'a>(&self, value: &'a [u8]) -> Option<&'a [u8]> {
        let Some(key) = &self.config.cluster_key else { return Some(value) };
        let (tag, json) = value.split_at_checked(TAG_LEN * 2)?;
        let tag = hex::decode(tag).ok()?;
        key.verifies(&[PRESENCE_DOMAIN, json], &tag).then_some(json)
    }

    fn channel(&self, id: &NodeID) -> String {
        format!("{}:n:{}", self.config.prefix, hex_id(id))
    }

    fn hash(&self) -> String {
        format!("{}:i:{}", self.config.prefix, self.instance)
    }

    /// Hands an input to the server: state on the path that never drops it, frames and bounces
    /// on the bounded queue, where they are counted dropped when it is full.
    fn emit(&self, input: ClusterIn) {
        let Some(input) = self.pending.lock().unwrap_or_else(PoisonError::into_inner).keep(input) else {
            self.pending_wake.notify_one();
            return;
        };
        let bytes = match &input {
            ClusterIn::Frame { frame, .. } => frame.len(),
            _ => 0,
        };
        if bytes > 0 {
            let held = self.event_bytes.fetch_add(bytes, Ordering::AcqRel);
            if held.saturating_add(bytes) > self.config.max_event_bytes {
                self.event_bytes.fetch_sub(bytes, Ordering::AcqRel);
                self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if self.events.try_send(input).is_err() {
            self.event_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn undeliverable(&self, from: NodeID, about: NodeID) {
        self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
        self.emit(ClusterIn::Undeliverable { to: from, about, reason: Undelivered::Unknown });
    }

    /// Redis stopped answering: everything must be registered again once it does.
    fn down(&self) {
        self.reregister.store(true, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            self.counters.downs.fetch_add(1, Ordering::Relaxed);
            self.up_watch.send_replace(false);
            self.emit(ClusterIn::Down);
        }
        self.presence_wake.notify_one();
        self.relay_wake.notify_one();
    }

    /// A push from Redis: a message on a node's channel, or the connection's end.
    fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => self.down(),
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                match self.parse(&channel, &payload) {
                    Some(Some(input)) => {
                        self.counters.received.fetch_add(1, Ordering::Relaxed);
                        self.emit(input);
                    }
                    Some(None) => {}
                    None => {
                        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }

    /// A message from the bus as an input: `None` when it is refused, `Some(None)` when it is
    /// this instance's own takeover coming back.
    fn parse(&self, channel: &[u8], payload: &[u8]) -> Option<Option<ClusterIn>> {
        let channel = std::str::from_utf8(channel).ok()?;
        let id = channel.strip_prefix(&self.config.prefix)?.strip_prefix(":n:")?;
        let id: NodeID = id.parse().ok()?;
        let payload = self.open(channel, payload)?;
        let input = match wire::decode(payload, self.config.max_message_size).ok()? {
            BusMessage::Frame { codec, frame } => ClusterIn::Frame { to: id, codec, frame },
            BusMessage::TakenOver { instance, .. } if instance == self.instance => return Some(None),
            BusMessage::TakenOver { gen, .. } => ClusterIn::TakenOver { id, gen },
            BusMessage::Undeliverable { about, reason } => ClusterIn::Undeliverable { to: id, about, reason },
            BusMessage::Control(control) => ClusterIn::Control { to: id, control: Box::new(control) },
        };
        Some(Some(input))
    }

    fn queue(&self, item: Outgoing) -> Result<(), Outgoing> {
        let mut state = self.lock();
        let bytes = state.outgoing_bytes.saturating_add(item.payload.len());
        if state.outgoing.len() >= self.config.max_queue || bytes > self.config.max_queue_bytes {
            return Err(item);
        }
        state.outgoing_bytes = bytes;
        state.outgoing.push_back(item);
        drop(state);
        self.relay_wake.notify_one();
        Ok(())
    }
}

impl RedisBackplane {
    /// Starts the backplane's two tasks per Redis server on the current tokio runtime (one publishes relays in
    /// order, one keeps presence and samples) and returns at once: Redis is reached in the
    /// background, and the server hears [`ClusterIn::Up`] once it answers.
    ///
    /// # Errors
    ///
    /// [`RedisError`] for settings that [`RedisConfig::validate`] refuses or a URL that is not
    /// Redis's.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(config: RedisConfig) -> Result<(Self, RedisHandle), RedisError> {
        config.validate().map_err(RedisError::Config)?;
        let instance = if config.instance.is_empty() { random_instance() } else { config.instance.clone() };
        let urls: Vec<String> =
            std::iter::once(config.url.clone()).chain(config.shard_urls.iter().cloned()).collect();
        let (mut shards, mut shared, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for url in urls {
            let (shard, shard_tasks) = Shard::start(RedisConfig { url, ..config.clone() }, instance.clone())?;
            shared.push(Arc::clone(&shard.shared));
            shards.push(shard);
            tasks.extend(shard_tasks);
        }
        let n = shards.len();
        let handle = RedisHandle { shards: shared.into(), tasks: Arc::new(Mutex::new(tasks)) };
        let backplane = Self {
            shards,
            up: vec![false; n],
            told_up: false,
            samples: vec![(Vec::new(), 0); n],
            max_sample: config.max_sample,
        };
        Ok((backplane, handle))
    }
}

impl Shard {
    /// The share of the backplane on `config.url`, and its tasks.
    fn start(config: RedisConfig, instance: String) -> Result<(Self, Vec<JoinHandle<()>>), RedisError> {
        let info = config.url.as_str().into_connection_info().map_err(|e| RedisError::Url(e.to_string()))?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = match &config.tls_roots {
            Some(roots) => {
                // rustls needs a crypto provider; this crate builds ring's. Another installed
                // first (by the application) is as good.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certificates =
                    redis::TlsCertificates { client_tls: None, root_cert: Some(roots.clone()) };
                redis::Client::build_with_tls(info, certificates)
            }
            None => {
                if config.url.starts_with("rediss://") {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                redis::Client::open(info)
            }
        }
        .map_err(|e| RedisError::Url(e.to_string()))?;
        let (events, receiver) = mpsc::channel(config.max_events);
        let shared = Arc::new(Shared {
            instance,
            state: Mutex::new(State::default()),
            events,
            event_bytes: AtomicUsize::new(0),
            pending: Mutex::new(Pending::default()),
            pending_wake: Notify::new(),
            presence_wake: Notify::new(),
            relay_wake: Notify::new(),
            up: AtomicBool::new(false),
            up_watch: watch::Sender::new(false),
            reregister: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            config,
        });
        let pushes = Arc::clone(&shared);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(shared.config.command_timeout))
            .set_response_timeout(Some(shared.config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(shared.config.command_timeout)
            .set_push_sender(move |push: PushInfo| {
                pushes.on_push(push);
                Ok::<(), ()>(())
            });
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| RedisError::Url(e.to_string()))?;
        let presence = tokio::spawn(presence_task(Arc::clone(&shared), manager.clone()));
        let relays = tokio::spawn(relay_task(Arc::clone(&shared), manager));
        Ok((Shard { shared, events: receiver }, vec![presence, relays]))
    }
}

/// 16 random hex digits.
fn random_instance() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl RedisHandle {
    /// This instance's name on the bus.
    pub fn instance(&self) -> &str {
        self.shards.first().map_or("", |shard| shard.instance.as_str())
    }

    /// Whether every Redis server answers and every local node is registered.
    pub fn is_up(&self) -> bool {
        self.shards.iter().all(|shard| shard.up.load(Ordering::Acquire))
    }

    /// Redis servers that answer, of [`shards`](Self::shards). While one does, the instance
    /// serves the nodes of the others' shares but theirs: an instance is worth keeping in a
    /// load balancer while this is more than zero.
    pub fn shards_up(&self) -> usize {
        self.shards.iter().filter(|shard| shard.up.load(Ordering::Acquire)).count()
    }

    /// The Redis servers the nodes are sharded over.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Waits until [`is_up`](Self::is_up) is `up`; at once when it already is.
    pub async fn wait_up(&self, up: bool) {
        if up {
            for shard in self.shards.iter() {
                let mut watch = shard.up_watch.subscribe();
                // The sender lives in the shard, which this handle keeps: the wait cannot fail.
                let _ = watch.wait_for(|now| *now).await;
            }
        } else {
            // Down: as soon as one shard is.
            let waits = self.shards.iter().map(|shard| {
                let mut watch = shard.up_watch.subscribe();
                Box::pin(async move {
                    let _ = watch.wait_for(|now| !*now).await;
                })
            });
            futures::future::select_all(waits).await;
        }
    }

    /// Sets the backplane's metrics (feature `metrics`) to its counters now: the gauges
    /// `peer_signal_cluster_up` and `peer_signal_cluster_presence`, and the counters
    /// `peer_signal_cluster_{downs,published,received,dropped_out,dropped_in}_total` and
    /// `peer_signal_cluster_rejected_total{stage="backplane"}`. Call it before each scrape (or on
    /// a timer, for an exporter that pushes); the core emits its own metrics as they happen.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        publish_redis(&self.stats());
    }

    /// The backplane's counters, summed over its Redis servers.
    pub fn stats(&self) -> RedisStats {
        let sum = |count: fn(&Counters) -> &AtomicU64| {
            self.shards.iter().map(|shard| count(&shard.counters).load(Ordering::Relaxed)).sum::<u64>()
        };
        RedisStats {
            up: self.is_up(),
            shards: self.shards.len(),
            shards_up: self.shards_up(),
            downs: sum(|c| &c.downs),
            published: sum(|c| &c.published),
            undeliverable: sum(|c| &c.undeliverable),
            received: sum(|c| &c.received),
            dropped_out: sum(|c| &c.dropped_out),
            dropped_in: sum(|c| &c.dropped_in),
            rejected: sum(|c| &c.rejected),
            held: self.shards.iter().map(|shard| shard.lock().held.len()).sum(),
            registered: self
                .shards
                .iter()
                .map(|shard| shard.counters.registered.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Takes this instance off the bus (its hash and its heartbeat entry), within the command
    /// deadline, and stops the backplane's tasks. Call it after the driver has returned.
    pub async fn shutdown(&self) {
        for shard in self.shards.iter() {
            shard.stop.store(true, Ordering::Release);
            shard.presence_wake.notify_one();
            shard.relay_wake.notify_one();
        }
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let timeout =
            self.shards.first().map_or(Duration::from_secs(1), |shard| shard.config.command_timeout);
        let deadline = timeout.saturating_mul(3);
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Shard {
    /// What the bus said for this shard's nodes: state first, then frames. Cancel-safe.
    async fn next_event(&mut self) -> Option<ClusterIn> {
        loop {
            // State first: a full frame queue must not hold up an `Up` or a takeover.
            let pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner).take();
            if pending.is_some() {
                return pending;
            }
            // Cancel-safe: a notification that arrives while no one waits is kept for the next.
            tokio::select! {
                biased;
                () = self.shared.pending_wake.notified() => {}
                input = self.events.recv() => {
                    let input = input?;
                    if let ClusterIn::Frame { frame, .. } = &input {
                        self.shared.event_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                    }
                    return Some(input);
                }
            }
        }
    }

    /// Carries out what the server said about one of this shard's nodes.
    fn send(&mut self, output: ClusterOut) {
        let shared = &self.shared;
        match output {
            ClusterOut::Joined { id, conn, info } => {
                // Our own NodeInfo always encodes; "null" keeps this free of panics regardless.
                let json =
                    shared.presence_value(serde_json::to_string(&info).unwrap_or_else(|_| "null".into()));
                let mut state = shared.lock();
                state.held.insert(id, Held { conn, json, gen: None });
                state.dirty.insert(id);
                drop(state);
                shared.presence_wake.notify_one();
            }
            ClusterOut::Left { id, conn } => {
                let mut state = shared.lock();
                if state.held.get(&id).is_some_and(|held| held.conn == conn) {
                    state.held.remove(&id);
                    if state.on_bus.contains_key(&id) || state.subscribed.contains(&id) {
                        state.dirty.insert(id);
                        drop(state);
                        shared.presence_wake.notify_one();
                    } else {
                        // Never registered: nothing to undo.
                        state.dirty.remove(&id);
                    }
                }
            }
            ClusterOut::Relay { from, to, codec, frame } => {
                if !shared.up.load(Ordering::Acquire) {
                    return shared.undeliverable(from, to);
                }
                let item = Outgoing {
                    channel: to,
                    payload: shared.seal(&to, wire::encode_frame(codec, &frame)),
                    relay_from: Some(from),
                    control: None,
                };
                if shared.queue(item).is_err() {
                    shared.counters.dropped_out.fetch_add(1, Ordering::Relaxed);
                    shared.undeliverable(from, to);
                }
            }
            ClusterOut::Control { token, to, control } => {
                if !shared.up.load(Ordering::Acquire) {
                    return shared.emit(ClusterIn::Controlled { token, reached: false });
                }
                let item = Outgoing {
                    channel: to,
                    payload: shared.seal(&to, wire::encode_control(&control)),
                    relay_from: None,
                    control: Some(token),
                };
                if shared.queue(item).is_err() {
                    shared.counters.dropped_out.fetch_add(1, Ordering::Relaxed);
                    shared.emit(ClusterIn::Controlled { token, reached: false });
                }
            }
            ClusterOut::Undeliverable { to, about, reason } => {
                let item = Outgoing {
                    channel: to,
                    payload: shared.seal(&to, wire::encode_undeliverable(about, reason)),
                    relay_from: None,
                    control: None,
                };
                if shared.queue(item).is_err() {
                    shared.counters.dropped_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Messages published in one pipeline: one round trip for a burst, in order.
const PUBLISH_BATCH: usize = 256;

#[async_trait]
impl Backplane for RedisBackplane {
    async fn next_event(&mut self) -> Option<ClusterIn> {
        loop {
            // Every shard at once; each one's `next_event` is cancel-safe, so the ones that lose
            // the race lose nothing.
            let (input, at) = match self.shards.as_mut_slice() {
                // One Redis, the usual case: no boxing on the path of every relay from the bus.
                [only] => (only.next_event().await?, 0),
                shards => {
                    let waits = shards.iter_mut().map(|shard| Box::pin(shard.next_event()));
                    let (input, at, _rest) = futures::future::select_all(waits).await;
                    (input?, at)
                }
            };
            match input {
                // The bus is up while one shard is: relays to the nodes of a shard that is down
                // are answered `unknown destination` by that shard at once.
                ClusterIn::Up => {
                    if let Some(up) = self.up.get_mut(at) {
                        *up = true;
                    }
                    if !self.told_up {
                        self.told_up = true;
                        return Some(ClusterIn::Up);
                    }
                }
                ClusterIn::Down => {
                    if let Some(up) = self.up.get_mut(at) {
                        *up = false;
                    }
                    if self.told_up && !self.up.contains(&true) {
                        self.told_up = false;
                        return Some(ClusterIn::Down);
                    }
                }
                // Each shard samples its own nodes: the server gets all shards' latest together.
                ClusterIn::Sample { nodes, total } => {
                    if let Some(sample) = self.samples.get_mut(at) {
                        *sample = (nodes, total);
                    }
                    let total = self.samples.iter().map(|(_, total)| total).sum();
                    let nodes = self
                        .samples
                        .iter()
                        .flat_map(|(nodes, _)| nodes.iter().cloned())
                        .take(self.max_sample)
                        .collect();
                    return Some(ClusterIn::Sample { nodes, total });
                }
                other => return Some(other),
            }
        }
    }

    fn send(&mut self, output: ClusterOut) {
        let id = match &output {
            ClusterOut::Joined { id, .. } | ClusterOut::Left { id, .. } => *id,
            ClusterOut::Relay { to, .. }
            | ClusterOut::Undeliverable { to, .. }
            | ClusterOut::Control { to, .. } => *to,
        };
        let n = self.shards.len();
        if let Some(shard) = self.shards.get_mut(shard_of(&id, n)) {
            shard.send(output);
        }
    }
}

/// Publishes relays and bounces, in the order the server emitted them.
async fn relay_task(shared: Arc<Shared>, mut redis: ConnectionManager) {
    let timeout = shared.config.command_timeout;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let batch: Vec<Outgoing> = {
            let mut state = shared.lock();
            let n = state.outgoing.len().min(PUBLISH_BATCH);
            let batch: Vec<Outgoing> = state.outgoing.drain(..n).collect();
            let bytes: usize = batch.iter().map(|item| item.payload.len()).sum();
            state.outgoing_bytes = state.outgoing_bytes.saturating_sub(bytes);
            batch
        };
        if batch.is_empty() {
            shared.relay_wake.notified().await;
            continue;
        }
        let counts = if shared.up.load(Ordering::Acquire) {
            let mut pipe = redis::pipe();
            for item in &batch {
                pipe.publish(shared.channel(&item.channel), item.payload.as_slice());
            }
            match tokio::time::timeout(timeout, pipe.query_async::<Vec<i64>>(&mut redis)).await {
                Ok(Ok(counts)) if counts.len() == batch.len() => Some(counts),
                _ => {
                    shared.down();
                    None
                }
            }
        } else {
            None
        };
        for (i, item) in batch.into_iter().enumerate() {
            let reached = counts.as_ref().and_then(|counts| counts.get(i)).is_some_and(|&n| n > 0);
            match item.relay_from {
                Some(from) if !reached => shared.undeliverable(from, item.channel),
                Some(_) => {
                    shared.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
            if let Some(token) = item.control {
                shared.emit(ClusterIn::Controlled { token, reached });
            }
        }
    }
}

const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('PEXPIRE', KEYS[2], ARGV[2])
";

/// A claim's rank: the counter, but never below Redis's clock in microseconds, so that ranks
/// do not go backwards when Redis comes back empty (it needs no persistence) and a node that
/// moves to another instance afterwards still outranks its older connection. Formatted with
/// `%d`: Lua prints numbers this large in exponent form otherwise. The instance publishes the
/// takeover itself, so that it can carry the cluster key's tag.
const CLAIM: &str = r"
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
local g = redis.call('INCR', KEYS[1])
if g < floor then
  g = floor
  redis.call('SET', KEYS[1], string.format('%d', g))
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return g
";
const SAMPLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')
local sizes = {}
local total = 0
for _, inst in ipairs(alive) do
  if inst ~= ARGV[1] then
    local n = redis.call('HLEN', ARGV[4] .. inst)
    sizes[#sizes + 1] = {inst, n}
    total = total + n
  end
end
local out = {tostring(total)}
local want = tonumber(ARGV[3])
for _, s in ipairs(sizes) do
  if s[2] > 0 then
    local k = math.ceil(want * s[2] / total)
    local got = redis.call('HRANDFIELD', ARGV[4] .. s[1], k, 'WITHVALUES')
    for j = 2, #got, 2 do out[#out + 1] = got[j] end
  end
end
return out
";

/// The longest `NodeInfo` JSON accepted from a sample.
const MAX_INFO_JSON: usize = 4096;

struct Presence {
    shared: Arc<Shared>,
    redis: ConnectionManager,
    heartbeat: redis::Script,
    claim: redis::Script,
    sample: redis::Script,
}

/// A Redis command that missed its deadline or failed: the bus is down.
struct Unreachable;

impl Presence {
    async fn run<T: redis::FromRedisValue>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unreachable> {
        match tokio::time::timeout(self.shared.config.command_timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            _ => {
                self.shared.down();
                Err(Unreachable)
            }
        }
    }

    async fn beat(&mut self) -> Result<(), Unreachable> {
        let ttl = u64::try_from(self.shared.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let key = format!("{}:instances", self.shared.config.prefix);
        let hash = self.shared.hash();
        let mut invocation = self.heartbeat.key(key);
        invocation.key(hash).arg(&self.shared.instance).arg(ttl);
        let mut redis = self.redis.clone();
        let exists: i64 = self.run(invocation.invoke_async(&mut redis)).await?;
        if exists == 0 && !self.shared.lock().on_bus.is_empty() {
            // The hash expired (this process was paused, or Redis restarted): register again.
            self.shared.reregister.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Registers every held id again, after Redis may have lost them: an id that another
    /// instance holds now stays theirs.
    async fn reregister(&mut self) -> Result<(), Unreachable> {
        let mut redis = self.redis.clone();
        let _: String = self.run(redis::cmd("PING").query_async(&mut redis)).await?;
        self.shared.reregister.store(false, Ordering::Release);
        let previous: Vec<NodeID> = {
            let state = self.shared.lock();
            state.on_bus.keys().chain(state.subscribed.iter()).copied().collect()
        };
        // Our own subscriptions, if the connection survived, must not count as someone else's.
        // Until they are all gone, `on_bus` keeps them, so that a failure here is retried.
        for chunk in previous.chunks(PUBLISH_BATCH) {
            let channels: Vec<String> = chunk.iter().map(|id| self.shared.channel(id)).collect();
            let mut redis = self.redis.clone();
            self.run(redis.unsubscribe(channels)).await?;
        }
        // Entries of nodes that left while Redis was unreachable would stay listed for as long
        // as the other nodes keep the hash alive: start it afresh, the held nodes come back.
        let mut redis = self.redis.clone();
        let _: i64 = self.run(redis::cmd("DEL").arg(self.shared.hash()).query_async(&mut redis)).await?;
        let mut state = self.shared.lock();
        state.on_bus.clear();
        state.subscribed.clear();
        let ids: Vec<NodeID> = state.held.keys().copied().collect();
        state.dirty.clear();
        state.dirty.extend(ids);
        self.shared.counters.registered.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Brings one id's registration in line with what the server holds.
    async fn sync(&mut self, id: NodeID) -> Result<(), Unreachable> {
        let result = self.sync_one(id).await;
        let mut state = self.shared.lock();
        // The server may have said more about `id` while its registration was under way (a leave
        // that found nothing registered yet): look again until the two agree.
        let held = state.held.get(&id).map(|held| held.conn);
        let registered = state.on_bus.get(&id).copied();
        if held != registered && (registered.is_some() || state.subscribed.contains(&id)) {
            state.dirty.insert(id);
        }
        self.shared.counters.registered.store(state.on_bus.len(), Ordering::Relaxed);
        result
    }

    async fn sync_one(&mut self, id: NodeID) -> Result<(), Unreachable> {
        let (held, registered, subscribed) = {
            let state = self.shared.lock();
            let held = state.held.get(&id).map(|held| (held.conn, held.json.clone(), held.gen));
            (held, state.on_bus.get(&id).copied(), state.subscribed.contains(&id))
        };
        let channel = self.shared.channel(&id);
        let mut redis = self.redis.clone();
        match (held, registered) {
            (Some((conn, _, _)), Some(registered)) if conn == registered => Ok(()),
            (Some((conn, json, gen)), registered) => {
                if gen.is_some() && registered.is_none() {
                    // Registered before Redis lost it: an id someone else took meanwhile is theirs.
                    let counts: Vec<(String, i64)> = self
                        .run(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut redis))
                        .await?;
                    if counts.first().is_some_and(|(_, n)| *n > 0) {
                        self.shared.emit(ClusterIn::TakenOver { id, gen: u64::MAX });
                        return Ok(());
                    }
                    self.subscribe(&channel, id).await?;
                    let ttl = u64::try_from(self.shared.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
                    let mut pipe = redis::pipe();
                    pipe.hset(self.shared.hash(), hex_id(&id), &json).ignore();
                    pipe.pexpire(self.shared.hash(), i64::try_from(ttl).unwrap_or(i64::MAX)).ignore();
                    let _: () = self.run(pipe.query_async(&mut redis)).await?;
                    self.shared.lock().on_bus.insert(id, conn);
                    return Ok(());
                }
                // A new claim: subscribe first, so that nothing for it is missed once it is known.
                self.subscribe(&channel, id).await?;
                let ttl = u64::try_from(self.shared.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
                let mut invocation = self.claim.key(format!("{}:gen", self.shared.config.prefix));
                invocation.key(self.shared.hash()).arg(hex_id(&id)).arg(&json).arg(ttl);
                let gen: u64 = self.run(invocation.invoke_async(&mut redis)).await?;
                // Whoever held the id before, on another instance, learns of the newer claim.
                let takeover = self.shared.seal(&id, wire::encode_takeover(gen, &self.shared.instance));
                let _: i64 = self
                    .run(redis::cmd("PUBLISH").arg(&channel).arg(takeover).query_async(&mut redis))
                    .await?;
                let mut state = self.shared.lock();
                state.on_bus.insert(id, conn);
                if let Some(held) = state.held.get_mut(&id).filter(|held| held.conn == conn) {
                    held.gen = Some(gen);
                }
                drop(state);
                self.shared.emit(ClusterIn::Claimed { id, conn, gen });
                Ok(())
            }
            (None, registered) if registered.is_some() || subscribed => {
                self.run(redis.unsubscribe(&channel)).await?;
                self.shared.lock().subscribed.remove(&id);
                let _: i64 = self
                    .run(redis::cmd("HDEL").arg(self.shared.hash()).arg(hex_id(&id)).query_async(&mut redis))
                    .await?;
                self.shared.lock().on_bus.remove(&id);
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    async fn subscribe(&self, channel: &str, id: NodeID) -> Result<(), Unreachable> {
        let mut redis = self.redis.clone();
        self.run(redis.subscribe(channel)).await?;
        self.shared.lock().subscribed.insert(id);
        Ok(())
    }

    async fn take_sample(&mut self) -> Result<(), Unreachable> {
        let config = &self.shared.config;
        let ttl = u64::try_from(config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.sample.key(format!("{}:instances", config.prefix));
        invocation
            .arg(&self.shared.instance)
            .arg(ttl)
            .arg(config.max_sample)
            .arg(format!("{}:i:", config.prefix));
        let mut redis = self.redis.clone();
        let values: Vec<Vec<u8>> = self.run(invocation.invoke_async(&mut redis)).await?;
        let mut values = values.into_iter();
        let total =
            values.next().and_then(|t| std::str::from_utf8(&t).ok()?.parse::<u64>().ok()).unwrap_or(0);
        let mut nodes = Vec::new();
        for value in values {
            if nodes.len() >= self.shared.config.max_sample {
                break;
            }
            let json = self.shared.presence_json(&value).filter(|json| json.len() <= MAX_INFO_JSON);
            match json.map(serde_json::from_slice::<NodeInfo>) {
                Some(Ok(info)) => nodes.push(info),
                _ => {
                    self.shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.shared.emit(ClusterIn::Sample { nodes, total });
        Ok(())
    }

    /// One round: recover if needed, sync what changed, and the timed work that is due.
    async fn round(&mut self, beat: bool, sample: bool) -> Result<(), Unreachable> {
        if self.shared.reregister.load(Ordering::Acquire) {
            self.reregister().await?;
        }
        loop {
            let next = self.shared.lock().dirty.pop_first();
            let Some(id) = next else { break };
            if let Err(e) = self.sync(id).await {
                self.shared.lock().dirty.insert(id);
                return Err(e);
            }
        }
        if !self.shared.up.swap(true, Ordering::AcqRel) {
            self.shared.up_watch.send_replace(true);
            self.shared.emit(ClusterIn::Up);
            self.take_sample().await?;
        }
        if beat {
            self.beat().await?;
        }
        if sample {
            self.take_sample().await?;
        }
        Ok(())
    }

    /// Takes this instance off the bus.
    async fn leave(&mut self) {
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.del(self.shared.hash()).ignore();
        pipe.zrem(format!("{}:instances", self.shared.config.prefix), &self.shared.instance).ignore();
        let _ = self.run::<()>(pipe.query_async(&mut redis)).await;
    }
}

/// Keeps presence in line with the server, beats, samples, and recovers after outages.
async fn presence_task(shared: Arc<Shared>, redis: ConnectionManager) {
    let mut presence = Presence {
        shared: Arc::clone(&shared),
        redis,
        heartbeat: redis::Script::new(HEARTBEAT),
        claim: redis::Script::new(CLAIM),
        sample: redis::Script::new(SAMPLE),
    };
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    let mut sample = tokio::time::interval(shared.config.sample_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While Redis is unreachable, try again this often.
    let mut retry = tokio::time::interval(shared.config.heartbeat.min(Duration::from_millis(500)));
    loop {
        let (mut beat, mut resample) = (false, false);
        tokio::select! {
            () = shared.presence_wake.notified() => {}
            _ = heartbeat.tick() => beat = true,
            _ = sample.tick() => resample = true,
            _ = retry.tick(), if !shared.up.load(Ordering::Acquire) => {}
        }
        if shared.stop.load(Ordering::Acquire) {
            presence.leave().await;
            return;
        }
        if !shared.up.load(Ordering::Acquire) {
            beat = true;
        }
        resample &= shared.up.load(Ordering::Acquire);
        let _ = presence.round(beat, resample).await;
    }
}

/// Sets the Redis backplane's `peer_signal_cluster_*` metrics to a snapshot of its counters.
#[cfg(feature = "metrics")]
fn publish_redis(redis: &RedisStats) {
    use metrics::{counter, describe_counter, describe_gauge, gauge};

    use crate::telemetry::names::CLUSTER_REJECTED;
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        describe_gauge!(
            "peer_signal_cluster_up",
            "1 while every Redis server answers and every local node is registered."
        );
        describe_gauge!("peer_signal_cluster_presence", "Local nodes registered in Redis.");
        describe_gauge!(
            "peer_signal_cluster_shards_up",
            "Redis servers that answer, of those the nodes are sharded over."
        );
        describe_counter!("peer_signal_cluster_downs_total", "Times Redis became unreachable.");
        describe_counter!("peer_signal_cluster_published_total", "Relays published to Redis.");
        describe_counter!("peer_signal_cluster_received_total", "Messages from Redis for local nodes.");
        describe_counter!(
            "peer_signal_cluster_dropped_out_total",
            "Messages dropped: the queue to Redis was full."
        );
        describe_counter!(
            "peer_signal_cluster_dropped_in_total",
            "Messages dropped: the queue to the server was full."
        );
        describe_counter!(CLUSTER_REJECTED, "Bus inputs refused by the checks, by where.");
    });
    gauge!("peer_signal_cluster_up").set(if redis.up { 1.0 } else { 0.0 });
    gauge!("peer_signal_cluster_presence").set(redis.registered as f64);
    gauge!("peer_signal_cluster_shards_up").set(redis.shards_up as f64);
    counter!("peer_signal_cluster_downs_total").absolute(redis.downs);
    counter!("peer_signal_cluster_published_total").absolute(redis.published);
    counter!("peer_signal_cluster_received_total").absolute(redis.received);
    counter!("peer_signal_cluster_dropped_out_total").absolute(redis.dropped_out);
    counter!("peer_signal_cluster_dropped_in_total").absolute(redis.dropped_in);
    counter!(CLUSTER_REJECTED, "stage" => "backplane").absolute(redis.rejected);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::Codec;

    fn frame(to: u8) -> ClusterIn {
        ClusterIn::Frame { to: NodeID::from([to; 32]), codec: Codec::Json, frame: Bytes::from_static(b"{}") }
    }

    #[tokio::test]
    async fn state_reaches_the_server_when_the_frame_queue_is_full_and_takeovers_coalesce() {
        // No Redis at this address: the backplane starts down and stays so; the test feeds its
        // queues directly.
        let config =
            RedisConfig::default().with_url("redis://127.0.0.1:1").with_instance("t").with_max_events(2);
        let (mut backplane, handle) = RedisBackplane::start(config).unwrap();
        let mut shard = backplane.shards.remove(0);
        let shared = Arc::clone(&shard.shared);
        for to in 0..5 {
            shared.emit(frame(to));
        }
        assert_eq!(shared.counters.dropped_in.load(Ordering::Relaxed), 3, "frames beyond the queue dropped");
        let id = NodeID::from([9; 32]);
        shared.emit(ClusterIn::Up);
        shared.emit(ClusterIn::TakenOver { id, gen: 7 });
        shared.emit(ClusterIn::TakenOver { id, gen: 9 });
        shared.emit(ClusterIn::TakenOver { id, gen: 8 });
        shared.emit(ClusterIn::Claimed { id, conn: ConnId::new(1), gen: 5 });
        shared.emit(ClusterIn::Down);
        shared.emit(ClusterIn::Sample { nodes: Vec::new(), total: 1 });
        shared.emit(ClusterIn::Sample { nodes: Vec::new(), total: 2 });
        assert_eq!(shared.counters.dropped_in.load(Ordering::Relaxed), 3, "no state dropped");

        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(shard.next_event().await.unwrap());
        }
        assert_eq!(
            got,
            [
                ClusterIn::Down,
                ClusterIn::Claimed { id, conn: ConnId::new(1), gen: 5 },
                ClusterIn::TakenOver { id, gen: 9 },
                ClusterIn::Sample { nodes: Vec::new(), total: 2 },
                frame(0),
                frame(1),
            ]
        );
        handle.shutdown().await;
    }

    #[test]
    fn ids_spread_over_the_shards_and_one_more_shard_moves_a_share_of_them_only() {
        let ids: Vec<NodeID> = (0..3000u32)
            .map(|i| {
                let mut bytes = [0; 32];
                bytes[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                bytes[4..8].copy_from_slice(&i.to_le_bytes());
                NodeID::from(bytes)
            })
            .collect();
        for n in 1..6 {
            let mut counts = vec![0; n];
            for id in &ids {
                counts[shard_of(id, n)] += 1;
            }
            let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(*most < 3000 / n * 5 / 4 && *least > 3000 / n * 3 / 4, "{n} shards: {counts:?}");
            let moved = ids.iter().filter(|id| shard_of(id, n) != shard_of(id, n + 1)).count();
            // A 1 / (n + 1) share, give or take.
            let share = 3000 / (n + 1);
            assert!(moved > share * 3 / 4 && moved < share * 5 / 4, "{n} → {}: {moved} moved", n + 1);
            assert!(ids.iter().all(|id| shard_of(id, n + 1) == shard_of(id, n) || shard_of(id, n + 1) == n));
        }
    }
}
