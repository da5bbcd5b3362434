//! The in-process backplane: several servers in one process form one network, as they would
//! through Redis, with every step under the caller's control.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use async_trait::async_trait;
use futures::task::AtomicWaker;

use super::{Backplane, ClusterIn, ClusterOut, Undelivered};
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo};

/// A bus shared by [`MemoryBackplane`]s, one per server, with the semantics of the Redis
/// backplane: one channel per node (a relay reaches whoever holds the destination, or nobody,
/// and then its sender hears so at once), claims ranked by a counter, presence per instance,
/// and an instance whose connection to the bus drops losing its nodes at once.
///
/// Nothing happens behind the caller's back: [`MemoryBackplane::send`] does what a bus would
/// do, synchronously, and [`MemoryBackplane::poll`] hands over what arrived for one instance.
/// So tests can wire two or three [`SignalServer`](crate::SignalServer)s together, step by
/// step, with virtual time. A changed presence makes every other instance's next `poll`
/// return a fresh [`ClusterIn::Sample`]. Each instance's inbox holds at most `max_inbox`
/// inputs; what does not fit is dropped and counted ([`dropped`](Self::dropped)).
///
/// ```
/// use peer_signal::{ClusterIn, MemoryBus};
///
/// let bus = MemoryBus::new(1024);
/// let mut a = bus.instance();
/// assert_eq!(a.poll(), Some(ClusterIn::Up));
/// ```
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBus")
            .field("instances", &state.instances.len())
            .field("dropped", &state.dropped)
            .finish_non_exhaustive()
    }
}

struct State {
    /// The last rank handed out.
    gen: u64,
    /// Which instances hold (are subscribed for) each node.
    channels: BTreeMap<NodeID, BTreeSet<usize>>,
    instances: Vec<Instance>,
    max_inbox: usize,
    max_sample: usize,
    dropped: u64,
}

struct Instance {
    up: bool,
    /// Gone for good: no more inputs, nothing registered.
    dead: bool,
    /// What the instance's server said it holds, kept through outages to register again.
    held: BTreeMap<NodeID, Held>,
    inbox: VecDeque<ClusterIn>,
    /// Presence changed since this instance's last sample.
    stale_sample: bool,
    waker: Arc<AtomicWaker>,
}

struct Held {
    conn: ConnId,
    info: NodeInfo,
    /// Its claim's rank, once it has one.
    gen: Option<u64>,
}

impl MemoryBus {
    /// An empty bus whose instances' inboxes hold `max_inbox` inputs each. Samples hold up to
    /// 1,000 nodes.
    pub fn new(max_inbox: usize) -> Self {
        let state = State {
            gen: 0,
            channels: BTreeMap::new(),
            instances: Vec::new(),
            max_inbox,
            max_sample: 1000,
            dropped: 0,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// A backplane for one more instance, connected: its first input is [`ClusterIn::Up`].
    pub fn instance(&self) -> MemoryBackplane {
        let mut state = self.lock();
        let index = state.instances.len();
        state.instances.push(Instance {
            up: true,
            dead: false,
            held: BTreeMap::new(),
            inbox: VecDeque::new(),
            stale_sample: true,
            waker: Arc::new(AtomicWaker::new()),
        });
        state.push(index, ClusterIn::Up);
        MemoryBackplane { bus: self.clone(), index }
    }

    /// Cuts instance `index` off the bus (`up: false`), as a lost connection to Redis would:
    /// its nodes vanish from the bus at once and it gets [`ClusterIn::Down`]. Reconnecting
    /// (`up: true`) registers its nodes again, except those another instance holds now (even
    /// when the returning instance's connection is the newer one: it cannot tell), which it is
    /// told about with [`ClusterIn::TakenOver`] of rank `u64::MAX`; then [`ClusterIn::Up`].
    pub fn set_up(&self, index: usize, up: bool) {
        let mut state = self.lock();
        let Some(instance) = state.instances.get(index).filter(|i| !i.dead && i.up != up) else { return };
        let _ = instance;
        if up {
            state.reconnect(index);
        } else {
            state.disconnect(index);
            state.push(index, ClusterIn::Down);
        }
    }

    /// Instance `index` dies: it leaves the bus and hears nothing more.
    pub fn kill(&self, index: usize) {
        let mut state = self.lock();
        state.disconnect(index);
        if let Some(instance) = state.instances.get_mut(index) {
            instance.dead = true;
            instance.inbox.clear();
        }
    }

    /// Inputs dropped because an inbox was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The instances that hold `id` on the bus.
    pub fn holders(&self, id: &NodeID) -> Vec<usize> {
        self.lock().channels.get(id).map(|set| set.iter().copied().collect()).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn push(&mut self, index: usize, input: ClusterIn) {
        let max = self.max_inbox;
        let Some(instance) = self.instances.get_mut(index).filter(|i| !i.dead) else { return };
        if instance.inbox.len() >= max {
            self.dropped += 1;
            return;
        }
        instance.inbox.push_back(input);
        instance.waker.wake();
    }

    fn up(&self, index: usize) -> bool {
        self.instances.get(index).is_some_and(|i| i.up && !i.dead)
    }

    fn presence_changed(&mut self, except: usize) {
        for (i, instance) in self.instances.iter_mut().enumerate() {
            if i != except {
                instance.stale_sample = true;
                instance.waker.wake();
            }
        }
    }

    /// What a bus does with one output of instance `index`'s server.
    fn apply(&mut self, index: usize, output: ClusterOut) {
        match output {
            ClusterOut::Joined { id, conn, info } => {
                if let Some(instance) = self.instances.get_mut(index) {
                    instance.held.insert(id, Held { conn, info, gen: None });
                }
                if self.up(index) {
                    self.claim(index, id);
                }
            }
            ClusterOut::Left { id, conn } => {
                let Some(instance) = self.instances.get_mut(index) else { return };
                if instance.held.get(&id).is_some_and(|held| held.conn == conn) {
                    instance.held.remove(&id);
                    self.unsubscribe(index, id);
                    self.presence_changed(index);
                }
            }
            ClusterOut::Relay { from, to, codec, frame } => {
                let holders = self.holders_of(index, to);
                if holders.is_empty() {
                    let about = to;
                    self.push(
                        index,
                        ClusterIn::Undeliverable { to: from, about, reason: Undelivered::Unknown },
                    );
                }
                for holder in holders {
                    self.push(holder, ClusterIn::Frame { to, codec, frame: frame.clone() });
                }
            }
            ClusterOut::Control { token, to, control } => {
                let holders = self.holders_of(index, to);
                self.push(index, ClusterIn::Controlled { token, reached: !holders.is_empty() });
                for holder in holders {
                    self.push(holder, ClusterIn::Control { to, control: control.clone() });
                }
            }
            ClusterOut::Undeliverable { to, about, reason } => {
                for holder in self.holders_of(index, to) {
                    self.push(holder, ClusterIn::Undeliverable { to, about, reason });
                }
            }
        }
    }

    /// Who receives a message for `id`'s channel published by `index`: nobody while `index` is
    /// cut off.
    fn holders_of(&self, index: usize, id: NodeID) -> Vec<usize> {
        if !self.up(index) {
            return Vec::new();
        }
        self.channels.get(&id).map(|set| set.iter().copied().collect()).unwrap_or_default()
    }

    /// A new claim of `id` by `index`: ranked, announced to the other holders.
    fn claim(&mut self, index: usize, id: NodeID) {
        self.gen += 1;
        let gen = self.gen;
        let Some(held) = self.instances.get_mut(index).and_then(|i| i.held.get_mut(&id)) else { return };
        held.gen = Some(gen);
        let conn = held.conn;
        let others: Vec<usize> = self.holders_of(index, id).into_iter().filter(|&i| i != index).collect();
        self.channels.entry(id).or_default().insert(index);
        self.push(index, ClusterIn::Claimed { id, conn, gen });
        for other in others {
            self.push(other, ClusterIn::TakenOver { id, gen });
        }
        self.presence_changed(index);
    }

    fn unsubscribe(&mut self, index: usize, id: NodeID) {
        if let Some(set) = self.channels.get_mut(&id) {
            set.remove(&index);
            if set.is_empty() {
                self.channels.remove(&id);
            }
        }
    }

    fn disconnect(&mut self, index: usize) {
        let Some(instance) = self.instances.get_mut(index) else { return };
        instance.up = false;
        let ids: Vec<NodeID> = instance.held.keys().copied().collect();
        for id in ids {
            self.unsubscribe(index, id);
        }
        self.presence_changed(index);
    }

    /// Registers `index`'s nodes again: an id someone else holds now stays theirs.
    fn reconnect(&mut self, index: usize) {
        let Some(instance) = self.instances.get_mut(index) else { return };
        instance.up = true;
        instance.stale_sample = true;
        let held: Vec<(NodeID, Option<u64>)> =
            instance.held.iter().map(|(id, held)| (*id, held.gen)).collect();
        for (id, gen) in held {
            let taken = self.channels.get(&id).is_some_and(|set| !set.is_empty());
            // Whoever holds an id on the bus keeps it: a returning instance cannot tell whether
            // its own connection is the newer one, and must not evict a newer owner.
            match gen {
                _ if taken => self.push(index, ClusterIn::TakenOver { id, gen: u64::MAX }),
                // Announced while cut off, and nobody else has it: a claim like any other.
                None => self.claim(index, id),
                Some(_) => {
                    self.channels.entry(id).or_default().insert(index);
                }
            }
        }
        self.presence_changed(index);
        self.push(index, ClusterIn::Up);
    }

    /// The nodes of the other connected instances, up to `max_sample`, and how many there are.
    fn sample(&self, index: usize) -> ClusterIn {
        let mut nodes = Vec::new();
        let mut total = 0u64;
        for (i, instance) in self.instances.iter().enumerate() {
            if i == index || !instance.up || instance.dead {
                continue;
            }
            for (id, held) in &instance.held {
                if self.channels.get(id).is_some_and(|set| set.contains(&i)) {
                    total += 1;
                    if nodes.len() < self.max_sample {
                        nodes.push(held.info.clone());
                    }
                }
            }
        }
        ClusterIn::Sample { nodes, total }
    }
}

/// One instance's connection to a [`MemoryBus`]. Use it by hand ([`send`](Self::send),
/// [`poll`](Self::poll)) in deterministic tests, or give it to a [`Driver`](crate::Driver) as
/// its [`Backplane`].
pub struct MemoryBackplane {
    bus: MemoryBus,
    index: usize,
}

impl fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackplane").field("index", &self.index).finish_non_exhaustive()
    }
}

impl MemoryBackplane {
    /// This instance's index on the bus, for [`MemoryBus::set_up`] and [`MemoryBus::kill`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Does what the bus does with one output of this instance's server.
    pub fn send(&mut self, output: ClusterOut) {
        self.bus.lock().apply(self.index, output);
    }

    /// The next input for this instance's server, if any: its inbox first, then a fresh sample
    /// when presence changed since the last one.
    pub fn poll(&mut self) -> Option<ClusterIn> {
        let mut state = self.bus.lock();
        let instance = state.instances.get_mut(self.index).filter(|i| !i.dead)?;
        if let Some(input) = instance.inbox.pop_front() {
            return Some(input);
        }
        if instance.stale_sample && instance.up {
            instance.stale_sample = false;
            return Some(state.sample(self.index));
        }
        None
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn next_event(&mut self) -> Option<ClusterIn> {
        let waker = self.bus.lock().instances.get(self.index).map(|i| Arc::clone(&i.waker))?;
        poll_fn(|cx| {
            if let Some(input) = self.poll() {
                return Poll::Ready(Some(input));
            }
            if self.bus.lock().instances.get(self.index).is_none_or(|i| i.dead) {
                // Killed: gone for good.
                return Poll::Ready(None);
            }
            waker.register(cx.waker());
            // Checked again: an input between the first check and the registration woke nobody.
            match self.poll() {
                Some(input) => Poll::Ready(Some(input)),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn send(&mut self, output: ClusterOut) {
        MemoryBackplane::send(self, output);
    }
}
