//! [`join`]: the adapter between a page's message channel (a `WebSocket` or an `RTCDataChannel`)
//! and the two ends of a peer link, as the crate docs' "Writing an adapter" describes it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BinaryType, MessageEvent, RtcDataChannel, RtcDataChannelState, RtcDataChannelType, WebSocket};

use super::timer::BrowserTimer;
use crate::codec::Codec;
use crate::transport::peer_link::{LinkInbound, LinkOutbound};

/// A data channel that does not open within this is closed.
pub(super) const OPEN_WITHIN: Duration = Duration::from_secs(10);
/// Past this many bytes in the channel's send buffer, the adapter stops taking the link's frames
/// until the buffer drains to half; the link's own queue fills meanwhile, and a hosting server
/// closes the link as a slow reader.
const BUFFERED_HIGH: u32 = 256 * 1024;
/// How long the send buffer may stay over [`BUFFERED_HIGH`] before the channel is closed.
const STALL: Duration = Duration::from_secs(5);
/// How often a full send buffer is looked at again (neither channel has an event for a
/// `WebSocket`'s buffer draining).
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What the adapter needs of a `WebSocket` or an `RTCDataChannel`.
pub(super) trait Channel: Clone + 'static {
    fn send_text(&self, text: &str) -> Result<(), JsValue>;
    fn send_binary(&self, bytes: &[u8]) -> Result<(), JsValue>;
    fn buffered(&self) -> u32;
    fn is_open(&self) -> bool;
    /// The subprotocol (`WebSocket`) or protocol (`RTCDataChannel`) the channel speaks.
    fn protocol(&self) -> String;
    fn close(&self);
    /// Sets (or with `None`, clears) the four event handlers.
    fn set_handlers(&self, handlers: Option<&Handlers>);
}

impl Channel for WebSocket {
    fn send_text(&self, text: &str) -> Result<(), JsValue> {
        self.send_with_str(text)
    }

    fn send_binary(&self, bytes: &[u8]) -> Result<(), JsValue> {
        self.send_with_u8_array(bytes)
    }

    fn buffered(&self) -> u32 {
        self.buffered_amount()
    }

    fn is_open(&self) -> bool {
        self.ready_state() == WebSocket::OPEN
    }

    fn protocol(&self) -> String {
        WebSocket::protocol(self)
    }

    fn close(&self) {
        // Closing a closed socket is no error; a failure here leaves nothing to do.
        let _ = WebSocket::close(self);
    }

    fn set_handlers(&self, handlers: Option<&Handlers>) {
        self.set_binary_type(BinaryType::Arraybuffer);
        self.set_onopen(handlers.map(|h| h.open.as_ref().unchecked_ref()));
        self.set_onmessage(handlers.map(|h| h.message.as_ref().unchecked_ref()));
        self.set_onclose(handlers.map(|h| h.closed.as_ref().unchecked_ref()));
        self.set_onerror(handlers.map(|h| h.closed.as_ref().unchecked_ref()));
    }
}

impl Channel for RtcDataChannel {
    fn send_text(&self, text: &str) -> Result<(), JsValue> {
        self.send_with_str(text)
    }

    fn send_binary(&self, bytes: &[u8]) -> Result<(), JsValue> {
        self.send_with_u8_array(bytes)
    }

    fn buffered(&self) -> u32 {
        self.buffered_amount()
    }

    fn is_open(&self) -> bool {
        self.ready_state() == RtcDataChannelState::Open
    }

    fn protocol(&self) -> String {
        // web-sys has no getter for it.
        js_sys::Reflect::get(self, &JsValue::from_str("protocol"))
            .ok()
            .and_then(|protocol| protocol.as_string())
            .unwrap_or_default()
    }

    fn close(&self) {
        RtcDataChannel::close(self);
    }

    fn set_handlers(&self, handlers: Option<&Handlers>) {
        self.set_binary_type(RtcDataChannelType::Arraybuffer);
        self.set_onopen(handlers.map(|h| h.open.as_ref().unchecked_ref()));
        self.set_onmessage(handlers.map(|h| h.message.as_ref().unchecked_ref()));
        self.set_onclose(handlers.map(|h| h.closed.as_ref().unchecked_ref()));
        self.set_onerror(handlers.map(|h| h.closed.as_ref().unchecked_ref()));
    }
}

/// The channel's event handlers, owned by the adapter's task and dropped when it ends.
pub(super) struct Handlers {
    open: Closure<dyn FnMut(JsValue)>,
    message: Closure<dyn FnMut(MessageEvent)>,
    closed: Closure<dyn FnMut(JsValue)>,
}

/// What the handlers and the adapter's task share.
#[derive(Default)]
struct Ends {
    /// Taken when the channel closes or refuses a message: the link then ends.
    inbound: Option<LinkInbound>,
    opened: Option<oneshot::Sender<()>>,
    ended: Option<oneshot::Sender<()>>,
}

impl Ends {
    fn end(&mut self) {
        self.inbound = None;
        self.opened = None;
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(());
        }
    }
}

/// Joins `channel` to a link: what arrives on it goes to `inbound` from this moment on, what
/// `outbound` gives is sent on it once it is open (text frames for JSON, binary for bincode).
/// The channel is closed when the link is over, when the neighbour floods the link or sends a
/// message over its largest, when the channel does not open within `open_within`, and when its
/// send buffer stays full for [`STALL`]. `report`, if any, learns the channel's protocol once it
/// is open, or `None` if it never opens.
pub(super) fn join<C: Channel>(
    channel: C,
    codec: Codec,
    inbound: LinkInbound,
    outbound: LinkOutbound,
    open_within: Duration,
    report: Option<oneshot::Sender<Option<String>>>,
) {
    let (opened_tx, opened) = oneshot::channel();
    let (ended_tx, ended) = oneshot::channel();
    let ends = Rc::new(RefCell::new(Ends {
        inbound: Some(inbound),
        opened: Some(opened_tx),
        ended: Some(ended_tx),
    }));
    let handlers = Handlers {
        open: Closure::new({
            let ends = Rc::clone(&ends);
            move |_: JsValue| {
                if let Some(opened) = ends.borrow_mut().opened.take() {
                    let _ = opened.send(());
                }
            }
        }),
        message: Closure::new({
            let ends = Rc::clone(&ends);
            let channel = channel.clone();
            move |event: MessageEvent| {
                let mut shared = ends.borrow_mut();
                let Some(link) = shared.inbound.as_mut() else { return };
                let delivered = match frame_of(&event.data()) {
                    Some(frame) => link.deliver(frame).is_ok(),
                    // Neither text nor an ArrayBuffer: not a frame of this protocol.
                    None => false,
                };
                if !delivered {
                    shared.end();
                    drop(shared);
                    channel.close();
                }
            }
        }),
        closed: Closure::new({
            let ends = Rc::clone(&ends);
            move |_: JsValue| ends.borrow_mut().end()
        }),
    };
    channel.set_handlers(Some(&handlers));
    wasm_bindgen_futures::spawn_local(async move {
        let mut ended = ended;
        let open = channel.is_open() || {
            let deadline = BrowserTimer::sleep(open_within);
            matches!(select(opened, select(&mut ended, deadline)).await, Either::Left((Ok(()), _)))
        };
        if let Some(report) = report {
            let _ = report.send(open.then(|| channel.protocol()));
        }
        if open {
            pump(&channel, codec, &outbound, &mut ended).await;
        }
        channel.set_handlers(None);
        channel.close();
        ends.borrow_mut().end();
        drop(handlers);
    });
}

/// Sends what the link gives until it is over or the channel closes.
async fn pump<C: Channel>(
    channel: &C,
    codec: Codec,
    outbound: &LinkOutbound,
    ended: &mut oneshot::Receiver<()>,
) {
    loop {
        let frame = {
            let next = outbound.recv();
            futures::pin_mut!(next);
            match select(next, &mut *ended).await {
                Either::Left((Some(frame), _)) => frame,
                Either::Left((None, _)) | Either::Right(_) => return,
            }
        };
        let sent = match (codec, std::str::from_utf8(&frame)) {
            (Codec::Json, Ok(text)) => channel.send_text(text),
            _ => channel.send_binary(&frame),
        };
        if sent.is_err() || !drained(channel, ended).await {
            return;
        }
    }
}

/// Waits while the channel's send buffer is over [`BUFFERED_HIGH`], until it is below half of
/// it; `false` when it stays full for [`STALL`] or the channel closes.
async fn drained<C: Channel>(channel: &C, ended: &mut oneshot::Receiver<()>) -> bool {
    if channel.buffered() <= BUFFERED_HIGH {
        return true;
    }
    let mut waited = Duration::ZERO;
    while channel.buffered() > BUFFERED_HIGH / 2 {
        if waited >= STALL {
            return false;
        }
        if let Either::Right(_) = select(BrowserTimer::sleep(DRAIN_POLL), &mut *ended).await {
            return false;
        }
        waited += DRAIN_POLL;
    }
    true
}

/// The bytes of a message: a text message as UTF-8, a binary one as it came.
fn frame_of(data: &JsValue) -> Option<Bytes> {
    if let Some(text) = data.as_string() {
        return Some(Bytes::from(text.into_bytes()));
    }
    let buffer = data.dyn_ref::<ArrayBuffer>()?;
    Some(Bytes::from(Uint8Array::new(buffer).to_vec()))
}
