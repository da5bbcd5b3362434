//! [`SignalPaths`]: one node's several signalling paths at once, its WebSocket server and each
//! neighbour that hosts signalling, with the nodes each path lists.

use std::collections::HashSet;

use super::async_client::within;
use super::*;

/// An [`AsyncClient`] over any connection: what [`SignalPaths`] holds for each path.
pub type PathClient = AsyncClient<Box<dyn ClientConnection>>;

/// Nodes remembered per path beyond the last full list (from pushes and set-up messages); more
/// are not remembered until the next [`SignalPaths::list`] replaces the set.
const MAX_KNOWN: usize = 1 << 16;

/// What one path said, from [`SignalPaths::next_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// An event of the path's client.
    Event(ClientEvent),
    /// The path sent something its client refused ([`ClientError::Malformed`],
    /// [`ClientError::Unexpected`], …); the path goes on.
    Refused(ClientError),
    /// The path is gone ([`ClientError::Closed`], [`ClientError::Unresponsive`], …) and was
    /// removed; the others go on.
    Lost(ClientError),
}

/// One signalling path: its name, its client and the nodes it lists.
struct Path<P> {
    name: P,
    client: PathClient,
    knows: HashSet<NodeID>,
}

impl<P> Path<P> {
    fn learn(&mut self, node: NodeID) {
        if self.knows.len() < MAX_KNOWN {
            self.knows.insert(node);
        }
    }
}

/// A node's signalling paths, used at once: its WebSocket server and each neighbour that hosts
/// signalling (see [`LinkClient`](crate::LinkClient)), each an [`AsyncClient`] signed in with the
/// node's key and named by a `P` of the application's choice.
///
/// - **Lists say which path knows which node**: [`list`](Self::list) asks every path and says
///   which paths list each node; [`routes`](Self::routes) answers from what the paths said last
///   (lists, pushes of joins, and set-up messages that came over them).
/// - **A connection goes through a path that lists the node**: [`send_init`](Self::send_init)
///   picks the first path, in the order they were added, that lists it; answers go back on the
///   path the set-up message came from ([`send_reply`](Self::send_reply)).
/// - **Events say which path they came from** ([`next_event`](Self::next_event)).
/// - **Losing one path leaves the others working**: a path whose connection is gone is removed
///   and reported once as [`PathEvent::Lost`].
///
/// # Example
///
/// ```no_run
/// # async fn run(server: peer_signal::PathClient, via_bob: peer_signal::PathClient, carol: peer_signal::NodeID)
/// # -> Result<(), peer_signal::ClientError> {
/// use peer_signal::{ClientEvent, PathEvent, PeerMessage, SignalPaths};
///
/// let mut paths = SignalPaths::new();
/// paths.add("server", server);
/// paths.add("bob", via_bob);
/// paths.list().await;
/// let path = paths.send_init(carol).await?; // "server" while it lists carol, else "bob"
/// while let Some((path, event)) = paths.next_event().await {
///     match event {
///         PathEvent::Event(ClientEvent::PeerSetup(setup)) if setup.message == PeerMessage::Init => {
///             paths.send_reply(&path, &setup, PeerMessage::Offer("v=0 …".into())).await?;
///         }
///         PathEvent::Lost(error) => println!("{path} is gone: {error}"),
///         other => println!("{path}: {other:?}"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct SignalPaths<P> {
    paths: Vec<Path<P>>,
    /// Paths lost while the application waited for something else, reported first.
    lost: VecDeque<(P, ClientError)>,
}

impl<P: fmt::Debug> fmt::Debug for SignalPaths<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&P> = self.paths.iter().map(|path| &path.name).collect();
        f.debug_struct("SignalPaths").field("paths", &names).finish_non_exhaustive()
    }
}

impl<P> Default for SignalPaths<P> {
    fn default() -> Self {
        Self { paths: Vec::new(), lost: VecDeque::new() }
    }
}

impl<P: Clone + PartialEq> SignalPaths<P> {
    /// No paths yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a path, signed in already, after the others; a path of the same name is replaced
    /// (and returned).
    pub fn add(&mut self, name: P, client: PathClient) -> Option<PathClient> {
        let old = self.remove(&name);
        self.paths.push(Path { name, client, knows: HashSet::new() });
        old
    }

    /// Removes a path; dropping the client it returns closes the connection.
    pub fn remove(&mut self, name: &P) -> Option<PathClient> {
        let at = self.paths.iter().position(|path| path.name == *name)?;
        Some(self.paths.remove(at).client)
    }

    /// The paths' names, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &P> + '_ {
        self.paths.iter().map(|path| &path.name)
    }

    /// Whether no path is left.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// A path's client, for what this type does not offer (stats, keepalive).
    pub fn get_mut(&mut self, name: &P) -> Option<&mut PathClient> {
        self.paths.iter_mut().find(|path| path.name == *name).map(|path| &mut path.client)
    }

    /// The paths that list `node`, in the order they were added.
    pub fn routes(&self, node: &NodeID) -> Vec<P> {
        self.paths.iter().filter(|path| path.knows.contains(node)).map(|path| path.name.clone()).collect()
    }

    /// Asks every path for its list, at once, and returns each node with the paths that list
    /// it, in the order of the paths. A path's answer replaces what it listed before. Paths that
    /// fail, or (for a client with a clock) do not answer within their
    /// [`ClientConfig::sign_in_timeout`], are removed, and reported as [`PathEvent::Lost`] by the
    /// next [`next_event`](Self::next_event).
    pub async fn list(&mut self) -> Vec<(NodeInfo, Vec<P>)> {
        let answers = futures::future::join_all(self.paths.iter_mut().map(|path| async {
            // A path that does not answer within its sign-in timeout is taken for gone, so that
            // one silent neighbour cannot hold the others' lists.
            let limit = path.client.client().config().sign_in_timeout;
            match path.client.clock() {
                Some(timer) => within(&timer, limit, path.client.list())
                    .await
                    .unwrap_or(Err(ClientError::Unresponsive(limit))),
                None => path.client.list().await,
            }
        }))
        .await;
        let mut nodes: Vec<(NodeInfo, Vec<P>)> = Vec::new();
        let mut failed = Vec::new();
        for (path, answer) in self.paths.iter_mut().zip(answers) {
            match answer {
                Ok(list) => {
                    path.knows = list.iter().take(MAX_KNOWN).map(NodeInfo::id).collect();
                    for info in list {
                        match nodes.iter_mut().find(|(known, _)| known.id() == info.id()) {
                            Some((_, via)) => via.push(path.name.clone()),
                            None => nodes.push((info, vec![path.name.clone()])),
                        }
                    }
                }
                Err(error) if is_terminal(&error) && !path.client.reconnects() => {
                    failed.push((path.name.clone(), error));
                }
                // A frame the client refused; the list comes with the next request.
                Err(_) => {}
            }
        }
        for (name, error) in failed {
            self.remove(&name);
            self.lost.push_back((name, error));
        }
        nodes
    }

    /// Sends `Init` to `to` through the first path that lists it, and returns that path.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoPath`] when no path lists `to`, and the errors of
    /// [`AsyncClient::send_init`] (a path that fails this way is removed and reported as lost).
    pub async fn send_init(&mut self, to: NodeID) -> Result<P, ClientError> {
        let name = self.routes(&to).into_iter().next().ok_or(ClientError::NoPath(to))?;
        let init = PeerInfo { id_init: self.id(), id_follow: to, message: PeerMessage::Init };
        self.send_via(&name, init).await?;
        Ok(name)
    }

    /// Answers `setup`, which came over the path `name`, on the same path.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoPath`] when that path is gone, and the errors of
    /// [`AsyncClient::send_reply`].
    pub async fn send_reply(
        &mut self,
        name: &P,
        setup: &PeerInfo,
        message: PeerMessage,
    ) -> Result<(), ClientError> {
        let Some(path) = self.paths.iter_mut().find(|path| path.name == *name) else {
            return Err(ClientError::NoPath(other_than(setup, self.id())));
        };
        let sent = path.client.send_reply(setup, message).await;
        self.note(name, sent)
    }

    /// Sends a set-up message on the path `name`.
    ///
    /// # Errors
    ///
    /// As [`send_reply`](Self::send_reply).
    pub async fn send_via(&mut self, name: &P, setup: PeerInfo) -> Result<(), ClientError> {
        let Some(path) = self.paths.iter_mut().find(|path| path.name == *name) else {
            return Err(ClientError::NoPath(other_than(&setup, self.id())));
        };
        let sent = path.client.send_setup(setup).await;
        self.note(name, sent)
    }

    /// The next thing a path said, with the path's name; `None` once no path is left. Dropping
    /// the future while it waits loses nothing.
    pub async fn next_event(&mut self) -> Option<(P, PathEvent)> {
        if let Some((name, error)) = self.lost.pop_front() {
            return Some((name, PathEvent::Lost(error)));
        }
        if self.paths.is_empty() {
            return None;
        }
        let (result, at) = {
            let waits = self.paths.iter_mut().map(|path| Box::pin(path.client.next_event()));
            let (result, at, _rest) = futures::future::select_all(waits).await;
            (result, at)
        };
        let path = self.paths.get_mut(at)?;
        let name = path.name.clone();
        let event = match result {
            Ok(event) => {
                match &event {
                    ClientEvent::NodeList(list) => list.iter().for_each(|info| path.learn(info.id())),
                    ClientEvent::PeerSetup(setup) => {
                        path.learn(other_than(setup, path.client.id()));
                    }
                    ClientEvent::Disconnected => path.knows.clear(),
                    _ => {}
                }
                PathEvent::Event(event)
            }
            Err(error) if is_terminal(&error) && !path.client.reconnects() => {
                self.paths.remove(at);
                PathEvent::Lost(error)
            }
            Err(error) => PathEvent::Refused(error),
        };
        Some((name, event))
    }

    /// The node's id, as every path knows it.
    fn id(&self) -> NodeID {
        self.paths.first().map(|path| path.client.id()).unwrap_or_default()
    }

    /// Removes a path whose send found it gone.
    fn note(&mut self, name: &P, sent: Result<(), ClientError>) -> Result<(), ClientError> {
        if let Err(error) = &sent {
            // A client that reconnects is not lost: it reports `Disconnected` and comes back.
            let reconnects = self.get_mut(name).is_some_and(|client| client.reconnects());
            if is_terminal(error) && !reconnects {
                self.remove(name);
                self.lost.push_back((name.clone(), error.clone()));
            }
        }
        sent
    }
}

/// Whether the error ends the path's connection.
fn is_terminal(error: &ClientError) -> bool {
    matches!(error, ClientError::Closed | ClientError::Unresponsive(_) | ClientError::SignInTimeout(_))
}

/// The node of the pair that is not `me`.
fn other_than(setup: &PeerInfo, me: NodeID) -> NodeID {
    if setup.id_init == me {
        setup.id_follow
    } else {
        setup.id_init
    }
}
