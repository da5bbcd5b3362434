//! Runs a [`SignalServer`] over a [`Transport`]: the only library code that awaits or reads the
//! clock.

use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use web_time::Instant;

use futures::channel::{mpsc, oneshot};
use futures::stream::{FusedStream, Stream, StreamExt};
use futures::task::AtomicWaker;
use futures::{select_biased, FutureExt};

use crate::cluster::{Backplane, ClusterIn, ClusterOut};
use crate::error::ControlError;
use crate::protocol::{NodeID, WSSignalMessageToNode};
use crate::server::{
    Command, CommandReply, ConnectedNode, ServerStats, SignalEvent, SignalIn, SignalOut, SignalServer,
};
use crate::transport::{Transport, TransportEvent};
use crate::turn::TurnConfig;

/// Inputs handled in a row before the driver yields to the executor, so that a transport that is
/// always ready cannot monopolise a thread.
const YIELD_EVERY: u32 = 64;

/// Commands from [`DriverHandle`]s waiting for the driver; further callers wait for room.
const COMMAND_QUEUE: usize = 64;

/// A command from a [`DriverHandle`], with the way back to its caller.
type Request = (Command, oneshot::Sender<CommandReply>);

/// Runs a [`SignalServer`] over a [`Transport`], fed by a stream of timer ticks.
///
/// [`Driver::new`] returns the driver with its [`DriverHandle`] and its [`DriverEvents`]; then
/// [`run`](Self::run) it on any executor. It loops:
///
/// 1. wait for a stop request, a tick or a transport event, in that order of priority;
/// 2. feed it to the server with the current time (a transport that has shut down becomes
///    [`SignalIn::Stop`]);
/// 3. apply every [`SignalOut`]: `Send` and `Close` go to the transport, `Event` to
///    [`DriverEvents`];
///
/// until the server has stopped, and then returns it.
///
/// A server that shares its network with other instances
/// ([`SignalServer::with_cluster`]) is driven with [`with_backplane`](Self::with_backplane): the
/// driver then also waits for the backplane's inputs, and hands it every
/// [`SignalOut::Cluster`]. Without one, it drives exactly as before.
///
/// The driver never decides anything: a failed send needs nothing from it, because the transport
/// reports the connection closed and the server cleans up.
///
/// # Events
///
/// [`DriverEvents`] holds at least `event_capacity` events. When the application falls behind,
/// further events are dropped and counted ([`DriverHandle::dropped_events`]), so that a slow
/// consumer never holds up the server nor makes it buffer without bound. The stream ends when the
/// driver returns.
///
/// # Example
///
/// ```
/// use futures::{SinkExt, StreamExt};
/// use peer_signal::{Driver, MemoryTransport, SignalConfig, SignalEvent, SignalServer};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = SignalConfig::default();
/// let (transport, _connector) = MemoryTransport::new(&config);
/// let (driver, handle, mut events) = Driver::new(SignalServer::new(config).expect("a valid config"), transport, 64);
/// // Real applications tick every second or so, e.g. from `tokio::time::interval`.
/// let (mut ticks, tick_stream) = futures::channel::mpsc::channel::<()>(1);
/// let server = tokio::spawn(driver.run(tick_stream));
///
/// ticks.send(()).await.unwrap();
/// handle.stop();
/// assert_eq!(events.next().await, Some(SignalEvent::Stopped));
/// assert_eq!(events.next().await, None);
/// assert!(server.await.unwrap().is_stopped());
/// # });
/// ```
pub struct Driver<T, B = NoBackplane> {
    server: SignalServer,
    transport: T,
    /// `None` without a cluster, and once the backplane has shut down for good.
    backplane: Option<B>,
    /// Which of the transport and the backplane goes first next time both are ready: they take
    /// turns, so that neither can starve the other.
    backplane_first: bool,
    shared: Arc<Shared>,
    events: mpsc::Sender<SignalEvent>,
    /// A stream rather than the receiver: polling it again after a dropped `next()` keeps its
    /// registration, where a fresh `recv_async` per input would make and drop one each time.
    commands: flume::r#async::RecvStream<'static, Request>,
    /// Keeps the command channel open when every handle is gone, so that waiting on it never
    /// ends.
    _command_sender: flume::Sender<Request>,
    /// Callers waiting for the reply to the command with this token.
    waiting: HashMap<u64, oneshot::Sender<CommandReply>>,
    next_token: u64,
}

/// The backplane of a [`Driver`] that has none: [`Driver::new`] makes such drivers.
#[derive(Debug)]
pub struct NoBackplane {
    _private: (),
}

#[async_trait::async_trait]
impl Backplane for NoBackplane {
    async fn next_event(&mut self) -> Option<ClusterIn> {
        None
    }

    fn send(&mut self, _output: ClusterOut) {}
}

impl<T, B> fmt::Debug for Driver<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").field("server", &self.server).finish_non_exhaustive()
    }
}

/// What the driver and its handles share: a stop flag with its waker, and the drop counter.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    waker: AtomicWaker,
    dropped_events: AtomicU64,
    /// The server's counters as of the last tick, for [`DriverHandle::stats`].
    stats: Mutex<ServerStats>,
}

impl Shared {
    fn poll_stop(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again: a stop between the first check and the registration woke nobody.
        if self.stop.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<T: Transport> Driver<T> {
    /// Wraps `server` and `transport`; events for the application are buffered up to
    /// `event_capacity`, see [Events](Self#events).
    pub fn new(
        server: SignalServer,
        transport: T,
        event_capacity: usize,
    ) -> (Self, DriverHandle, DriverEvents) {
        Self::build(server, transport, None, event_capacity)
    }
}

impl<T: Transport, B: Backplane> Driver<T, B> {
    /// Wraps a clustered `server` (see [`SignalServer::with_cluster`]), its `transport` and the
    /// `backplane` that connects it to the other instances; events as for [`new`](Driver::new).
    pub fn with_backplane(
        server: SignalServer,
        transport: T,
        backplane: B,
        event_capacity: usize,
    ) -> (Self, DriverHandle, DriverEvents) {
        Self::build(server, transport, Some(backplane), event_capacity)
    }

    fn build(
        server: SignalServer,
        transport: T,
        backplane: Option<B>,
        event_capacity: usize,
    ) -> (Self, DriverHandle, DriverEvents) {
        let shared = Arc::new(Shared::default());
        let (events, receiver) = mpsc::channel(event_capacity);
        let (command_sender, commands) = flume::bounded(COMMAND_QUEUE);
        let handle = DriverHandle { shared: Arc::clone(&shared), commands: command_sender.clone() };
        let driver = Self {
            server,
            transport,
            backplane,
            backplane_first: false,
            shared,
            events,
            commands: commands.into_stream(),
            _command_sender: command_sender,
            waiting: HashMap::new(),
            next_token: 0,
        };
        (driver, handle, DriverEvents { receiver })
    }

    /// Runs until the server has stopped, reading the time from [`Instant::now`]. Each item of
    /// `ticks` feeds [`SignalIn::Tick`]; once `ticks` ends, no more ticks are fed.
    pub async fn run<S>(self, ticks: S) -> SignalServer
    where
        S: Stream<Item = ()> + Unpin,
    {
        self.run_with_clock(ticks, Instant::now).await
    }

    /// [`run`](Self::run) with a clock of your own. Tests use it to move time without sleeping.
    ///
    /// `now` is called whenever the driver had to wait for an input, and once every
    /// 64 inputs that were ready one after the other: inputs that arrive together share one
    /// reading of the clock, which keeps it off the relay path.
    pub async fn run_with_clock<S, F>(mut self, ticks: S, mut now: F) -> SignalServer
    where
        S: Stream<Item = ()> + Unpin,
        F: FnMut() -> Instant,
    {
        let mut ticks = ticks.fuse();
        let mut budget = YIELD_EVERY;
        let mut clock = now();
        loop {
            self.apply_outputs();
            if self.server.is_stopped() {
                return self.server;
            }
            // An input that is ready at once shares the clock reading of the batch; one that had
            // to be waited for reads it anew (the sources are cancel-safe, so polling twice loses
            // nothing).
            let input = match self.next_input(&mut ticks).now_or_never() {
                Some(input) => {
                    if budget == YIELD_EVERY {
                        clock = now();
                    }
                    input
                }
                None => {
                    let input = self.next_input(&mut ticks).await;
                    clock = now();
                    input
                }
            };
            let tick = matches!(input, SignalIn::Tick);
            self.server.handle(clock, input);
            if tick {
                // Once per tick, off the relay path: the snapshot behind `DriverHandle::stats`.
                *self.shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.server.stats();
            }
            budget -= 1;
            if budget == 0 {
                budget = YIELD_EVERY;
                YieldNow(false).await;
            }
        }
    }

    fn control_input(&mut self, control: Control) -> SignalIn {
        match control {
            Control::Stop => SignalIn::Stop,
            Control::Tick => SignalIn::Tick,
            Control::Command((command, reply)) => {
                self.next_token = self.next_token.wrapping_add(1);
                self.waiting.insert(self.next_token, reply);
                SignalIn::Command { token: self.next_token, command: Box::new(command) }
            }
        }
    }

    async fn next_input<S>(&mut self, ticks: &mut S) -> SignalIn
    where
        S: FusedStream<Item = ()> + Unpin,
    {
        if self.backplane.is_none() {
            // What is ready at once, without building the sources' futures: the transport's
            // would be a heap allocation per input. Control still goes first.
            let (shared, commands) = (&self.shared, &mut self.commands);
            let ready = poll_fn(|cx| poll_control(shared, ticks, commands, cx)).now_or_never();
            if let Some(control) = ready {
                return self.control_input(control);
            }
            if let Some(event) = self.transport.try_next_event() {
                return SignalIn::from(event);
            }
        }
        self.backplane_first = !self.backplane_first;
        let next = {
            let shared = &self.shared;
            let commands = &mut self.commands;
            let mut control = poll_fn(|cx| poll_control(shared, ticks, commands, cx)).fuse();
            let mut event = self.transport.next_event().fuse();
            match self.backplane.as_mut() {
                None => select_biased! {
                    control = control => Next::Control(control),
                    event = event => Next::Event(event),
                },
                Some(backplane) => {
                    let mut cluster = backplane.next_event().fuse();
                    if self.backplane_first {
                        select_biased! {
                            control = control => Next::Control(control),
                            input = cluster => Next::Cluster(input),
                            event = event => Next::Event(event),
                        }
                    } else {
                        select_biased! {
                            control = control => Next::Control(control),
                            event = event => Next::Event(event),
                            input = cluster => Next::Cluster(input),
                        }
                    }
                }
            }
        };
        match next {
            Next::Control(control) => self.control_input(control),
            Next::Event(event) => event.map_or(SignalIn::Stop, SignalIn::from),
            Next::Cluster(Some(input)) => SignalIn::Cluster(Box::new(input)),
            Next::Cluster(None) => {
                // The backplane is gone for good: the server serves its own nodes from now on.
                self.backplane = None;
                SignalIn::Cluster(Box::new(ClusterIn::Down))
            }
        }
    }

    fn apply_outputs(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                SignalOut::Send { conn, frame } => {
                    // A failed send needs no action here: the transport reports the close.
                    let _ = self.transport.send(conn, frame);
                }
                SignalOut::Close { conn, reason } => self.transport.close(conn, reason),
                SignalOut::Cluster(output) => {
                    if let Some(backplane) = self.backplane.as_mut() {
                        backplane.send(*output);
                    }
                }
                SignalOut::Reply { token, reply } => {
                    // The caller may have given up waiting: then nobody wants the reply.
                    if let Some(caller) = self.waiting.remove(&token) {
                        let _ = caller.send(*reply);
                    }
                }
                SignalOut::Event(event) => {
                    if let Err(e) = self.events.try_send(event) {
                        if e.is_full() {
                            self.shared.dropped_events.fetch_add(1, Ordering::Relaxed);
                            crate::telemetry::event_dropped();
                        }
                    }
                }
            }
        }
    }
}

/// Controls a running [`Driver`] from anywhere. Cheap to clone, `Send`.
///
/// Besides stopping the server and reading its counters, it acts on the nodes connected to this
/// server: [`nodes`](Self::nodes), [`disconnect`](Self::disconnect), [`send`](Self::send). Each
/// goes through the driver as a [`SignalIn::Command`] and waits for its [`SignalOut::Reply`]; so
/// it resolves only while the driver runs, and fails with [`ControlError::Stopped`] once it has
/// returned.
///
/// ```
/// use futures::StreamExt;
/// use peer_signal::{
///     AsyncClient, ClientError, ClientEvent, Codec, Driver, MemoryTransport, NodeInfo, SignalConfig,
///     SignalEvent, SignalServer,
/// };
/// use peer_signal::ed25519_dalek::SigningKey;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = SignalConfig::default();
/// let (transport, connector) = MemoryTransport::new(&config);
/// let (driver, handle, mut events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
/// tokio::spawn(driver.run(futures::stream::pending()));
///
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let connection = connector.connect(Codec::Json).await.unwrap();
/// let mut alice = AsyncClient::connect(connection, key, info).await.unwrap();
/// let Some(SignalEvent::NewNode(joined)) = events.next().await else { panic!("alice joins") };
/// assert_eq!(joined.info.name, "alice");
///
/// let nodes = handle.nodes().await.unwrap();
/// assert_eq!(nodes, [*joined.clone()]);
///
/// handle.disconnect(joined.id, "maintenance").await.unwrap();
/// loop {
///     match alice.next_event().await {
///         Ok(ClientEvent::Error(reason)) => break assert_eq!(reason, "maintenance"),
///         Ok(_) => {} // the list that follows the join
///         Err(e) => panic!("{e}"),
///     }
/// }
/// assert_eq!(alice.next_event().await, Err(ClientError::Closed));
/// assert!(handle.nodes().await.unwrap().is_empty());
/// # });
/// ```
#[derive(Clone)]
pub struct DriverHandle {
    shared: Arc<Shared>,
    commands: flume::Sender<Request>,
}

impl fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverHandle")
            .field("stopping", &self.shared.stop.load(Ordering::Relaxed))
            .field("dropped_events", &self.dropped_events())
            .finish()
    }
}

impl DriverHandle {
    /// Asks the driver to feed [`SignalIn::Stop`]: the server closes every connection, emits
    /// [`SignalEvent::Stopped`], and the driver returns. Calling it again does nothing.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.waker.wake();
    }

    /// Whether [`stop`](Self::stop) has been called: the server is stopping or has stopped, and
    /// should get no new clients (a readiness probe answers "not ready").
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// The server's counters as of the driver's last tick (all zero before the first).
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Events dropped because [`DriverEvents`] was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    /// Feeds `command` to the server and waits for its reply. Waits for room first when 64
    /// commands are already waiting for the driver.
    ///
    /// # Errors
    ///
    /// [`ControlError::Stopped`] when the driver has returned, or returns before it replies.
    pub async fn command(&self, command: Command) -> Result<CommandReply, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send_async((command, reply)).await.map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)
    }

    /// The nodes announced on this server, with their info, connection and address, in no
    /// particular order ([`Command::ListNodes`]).
    ///
    /// # Errors
    ///
    /// [`ControlError::Stopped`] when the driver has returned.
    pub async fn nodes(&self) -> Result<Vec<ConnectedNode>, ControlError> {
        match self.command(Command::ListNodes).await? {
            CommandReply::Nodes(nodes) => Ok(nodes),
            _ => Err(ControlError::Stopped),
        }
    }

    /// Sends `node` an `Error` with `reason` and closes its connection
    /// ([`Command::Disconnect`]). The node leaves as for any close. In a cluster, a node on
    /// another instance is reached through the bus.
    ///
    /// # Errors
    ///
    /// [`ControlError::UnknownNode`] when no such node is announced here (nor, in a cluster, on
    /// an instance the bus reaches within 10 s),
    /// [`ControlError::Stopped`] when the driver has returned.
    pub async fn disconnect(&self, node: NodeID, reason: impl Into<String>) -> Result<(), ControlError> {
        done(self.command(Command::Disconnect { node, reason: reason.into() }).await?)
    }

    /// Sends `node` a message, in its codec ([`Command::Send`]): for example a new
    /// `SystemConfig`. In a cluster, a node on another instance is reached through the bus.
    ///
    /// # Errors
    ///
    /// [`ControlError::UnknownNode`] when no such node is announced here,
    /// [`ControlError::Stopped`] when the driver has returned.
    pub async fn send(&self, node: NodeID, message: WSSignalMessageToNode) -> Result<(), ControlError> {
        done(self.command(Command::Send { node, message }).await?)
    }

    /// Where `node` is on the network: [`Located::Here`] with it, or (in a cluster)
    /// [`Located::Elsewhere`] when another instance holds it ([`Command::Locate`]).
    ///
    /// # Errors
    ///
    /// [`ControlError::UnknownNode`] when no instance holds it, [`ControlError::Stopped`] when the
    /// driver has returned.
    pub async fn locate(&self, node: NodeID) -> Result<Located, ControlError> {
        match self.command(Command::Locate { node }).await? {
            CommandReply::Nodes(mut nodes) => {
                nodes.pop().map(Located::Here).ok_or(ControlError::UnknownNode(node))
            }
            CommandReply::Elsewhere(_) => Ok(Located::Elsewhere),
            CommandReply::UnknownNode(node) => Err(ControlError::UnknownNode(node)),
            _ => Err(ControlError::Stopped),
        }
    }

    /// Replaces the server's TURN settings ([`Command::SetTurn`]), for example to rotate the
    /// secret; `None` stops issuing credentials.
    ///
    /// # Errors
    ///
    /// [`ControlError::Config`] for a setting the server refuses (it keeps the old one),
    /// [`ControlError::Stopped`] when the driver has returned.
    pub async fn set_turn(&self, turn: Option<TurnConfig>) -> Result<(), ControlError> {
        done(self.command(Command::SetTurn(turn.map(Box::new))).await?)
    }
}

/// Where a node is, from [`DriverHandle::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Located {
    /// On this server.
    Here(ConnectedNode),
    /// On another instance of the cluster.
    Elsewhere,
}

fn done(reply: CommandReply) -> Result<(), ControlError> {
    match reply {
        CommandReply::UnknownNode(node) => Err(ControlError::UnknownNode(node)),
        CommandReply::Refused(error) => Err(ControlError::Config(error)),
        _ => Ok(()),
    }
}

/// The server's [`SignalEvent`]s, as a bounded stream; it ends when the driver returns.
pub struct DriverEvents {
    receiver: mpsc::Receiver<SignalEvent>,
}

impl fmt::Debug for DriverEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverEvents").finish_non_exhaustive()
    }
}

impl Stream for DriverEvents {
    type Item = SignalEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SignalEvent>> {
        self.receiver.poll_next_unpin(cx)
    }
}

impl FusedStream for DriverEvents {
    fn is_terminated(&self) -> bool {
        self.receiver.is_terminated()
    }
}

/// Returns `Pending` once, after asking to be polled again: lets other tasks run, on any
/// executor.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What the driver waits for, ahead of the transport and the backplane.
enum Control {
    Stop,
    Tick,
    Command(Request),
}

/// The source the driver's next input came from.
enum Next {
    Control(Control),
    Event(Option<TransportEvent>),
    Cluster(Option<ClusterIn>),
}

/// The driver's own inputs, in order of priority: a stop request, a tick, a command. An ended
/// tick stream feeds no more ticks; the command stream never ends (the driver holds a sender).
fn poll_control<S>(
    shared: &Shared,
    ticks: &mut S,
    commands: &mut flume::r#async::RecvStream<'static, Request>,
    cx: &mut Context<'_>,
) -> Poll<Control>
where
    S: FusedStream<Item = ()> + Unpin,
{
    if shared.poll_stop(cx).is_ready() {
        return Poll::Ready(Control::Stop);
    }
    if !ticks.is_terminated() {
        if let Poll::Ready(Some(())) = ticks.poll_next_unpin(cx) {
            return Poll::Ready(Control::Tick);
        }
    }
    if let Poll::Ready(Some(request)) = commands.poll_next_unpin(cx) {
        return Poll::Ready(Control::Command(request));
    }
    Poll::Pending
}
