//! What the transport and its connection tasks tell each other: the events a task reports, the
//! frames and closes the transport queues, and the state they share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::telemetry::Stamp;
use crate::{CloseReason, Codec, ConnId};

/// What a connection task tells the transport.
#[derive(Debug)]
pub(super) enum Event {
    Opened { conn: ConnId, codec: Codec, addr: IpAddr, handle: ConnHandle },
    Frame { conn: ConnId, frame: Bytes },
    Busy { conn: ConnId, busy: bool },
    Closed { conn: ConnId },
}

/// The transport's side of one connection.
#[derive(Debug)]
pub(super) struct ConnHandle {
    /// `futures`' channel rather than tokio's: it allocates nothing up front, where tokio's
    /// preallocates a block of 32 slots, a fair share of an idle connection's memory.
    pub(super) queue: futures::channel::mpsc::Sender<Outbound>,
    pub(super) shared: Arc<Shared>,
    /// The transport gave up on it; its task is ending and will report the close.
    pub(super) killed: bool,
    /// What it had queued when it was killed: counted in [`Counters::queued`] until its task
    /// ends, but already on its way out, so not shed twice.
    pub(super) dying: usize,
}

/// What the transport and a connection's task share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Ends the task at once, without a closing handshake.
    pub(super) kill: Notify,
    /// Payload bytes queued for the connection and not written yet.
    pub(super) queued: AtomicUsize,
    /// Whether the transport reported the connection busy (`queued` over half the backlog) and
    /// has not heard it drained since.
    pub(super) busy: AtomicBool,
}

/// What the transport tells a connection task.
#[derive(Debug)]
pub(super) enum Outbound {
    /// A frame, and when the transport queued it.
    Frame(Bytes, Stamp),
    Close(CloseReason),
}
