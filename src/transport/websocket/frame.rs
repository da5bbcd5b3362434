//! WebSocket framing on the server side (RFC 6455 §5), without I/O: complete messages out of a
//! read buffer, frame headers into a write queue.
//!
//! tungstenite parses each header; this module owns the buffers and the rules around them, so that
//! the connection task decides how much it reads per system call, when a large read buffer is
//! given back, and which frames go out together in one vectored write.

use std::io::Cursor;

use bytes::{Buf, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::telemetry::Stamp;

/// Longest payload of a control frame (§5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest length a frame header may give: the most significant bit of the 64-bit length must be
/// 0 (§5.2).
const MAX_FRAME_LEN: u64 = i64::MAX as u64;

/// One thing the peer sent: a whole data message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    /// A text message, checked to be UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong: proof of life, nothing to answer.
    Pong,
    /// The peer starts or answers the closing handshake, with its status code if it gave one.
    Close(Option<u16>),
}

/// Why the peer's bytes are not an acceptable WebSocket stream; each fails the connection with its
/// close code (§7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Violation {
    /// Not WebSocket as RFC 6455 defines it (1002).
    Protocol(&'static str),
    /// A text message that is not UTF-8 (1007).
    NotUtf8,
    /// A message longer than the limit (1009).
    TooBig,
}

impl Violation {
    /// The close code and reason the server answers with.
    pub(super) fn close(self) -> (CloseCode, &'static str) {
        match self {
            Self::Protocol(reason) => (CloseCode::Protocol, reason),
            Self::NotUtf8 => (CloseCode::Invalid, "text message is not UTF-8"),
            Self::TooBig => (CloseCode::Size, "message too big"),
        }
    }
}

/// A data message whose first frames arrived, waiting for the rest.
struct Partial {
    text: bool,
    data: BytesMut,
    /// For text: how much of `data` is checked to be UTF-8. What follows is at most the start of
    /// a character that the next fragment completes.
    checked: usize,
}

impl Partial {
    /// Checks the text assembled so far, up to its last whole character (§8.1: a text message
    /// that cannot become UTF-8 fails at once, not when its last fragment arrives).
    fn check_text(&mut self) -> Result<(), Violation> {
        if !self.text {
            return Ok(());
        }
        let rest = self.data.get(self.checked..).unwrap_or_default();
        match std::str::from_utf8(rest) {
            Ok(_) => self.checked = self.data.len(),
            // An incomplete character at the end: valid so far.
            Err(error) if error.error_len().is_none() => self.checked += error.valid_up_to(),
            Err(_) => return Err(Violation::NotUtf8),
        }
        Ok(())
    }
}

/// Takes complete messages out of a read buffer.
pub(super) struct Reader {
    max_message: usize,
    /// The header of a frame whose payload is not all in the buffer yet.
    header: Option<(FrameHeader, usize)>,
    partial: Option<Partial>,
    /// The peer's close frame came: it sends nothing after it (§5.5.1), and what it sends anyway
    /// is dropped unread.
    closed: bool,
}

impl Reader {
    /// A reader that refuses messages (and frames) longer than `max_message` bytes.
    pub(super) fn new(max_message: usize) -> Self {
        Self { max_message, header: None, partial: None, closed: false }
    }

    /// Bytes the buffer must hold before the next call can make progress: the rest of the frame
    /// being read, or a header's worth. The connection reserves this much before reading, so that
    /// a long frame arrives in as few reads as possible.
    pub(super) fn wanted(&self, buf: &BytesMut) -> usize {
        match &self.header {
            Some((_, len)) => len.saturating_sub(buf.len()),
            None => 14,
        }
    }

    /// Whether a fragmented message is being assembled: the reader then holds up to
    /// `max_message` bytes of its own.
    pub(super) fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }

    /// The next message or control frame in `buf`, consuming its bytes; `Ok(None)` when `buf`
    /// holds no complete one yet. After the peer's close frame, always `Ok(None)`: whatever
    /// follows it is dropped.
    ///
    /// # Errors
    ///
    /// A [`Violation`]: the connection must be failed, and nothing more read from it.
    pub(super) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            if self.closed {
                buf.clear();
                return Ok(None);
            }
            let Some((header, len)) = self.next_frame_header(buf)? else { return Ok(None) };
            if buf.len() < len {
                self.header = Some((header, len));
                return Ok(None);
            }
            let mut payload = buf.split_to(len);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if let Some(message) = self.frame(&header, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// The header of the next frame, already checked, or `None` until it is all in `buf`.
    fn next_frame_header(&mut self, buf: &mut BytesMut) -> Result<Option<(FrameHeader, usize)>, Violation> {
        if let Some(pending) = self.header.take() {
            return Ok(Some(pending));
        }
        let mut cursor = Cursor::new(&buf[..]);
        let parsed =
            FrameHeader::parse(&mut cursor).map_err(|_| Violation::Protocol("invalid frame header"))?;
        let Some((header, len)) = parsed else { return Ok(None) };
        let consumed = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        if len > MAX_FRAME_LEN {
            return Err(Violation::Protocol("frame length with its most significant bit set"));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        if header.mask.is_none() {
            return Err(Violation::Protocol("unmasked frame from a client"));
        }
        let len = usize::try_from(len).map_err(|_| Violation::TooBig)?;
        if matches!(header.opcode, OpCode::Control(_)) {
            if len > MAX_CONTROL_PAYLOAD || !header.is_final {
                return Err(Violation::Protocol("invalid control frame"));
            }
        } else {
            // Fragments count together: the message, not the frame, is what the limit bounds.
            let assembled = self.partial.as_ref().map_or(0, |partial| partial.data.len());
            if len.saturating_add(assembled) > self.max_message {
                return Err(Violation::TooBig);
            }
        }
        buf.advance(consumed.min(buf.len()));
        Ok(Some((header, len)))
    }

    /// Applies one unmasked frame: a control frame or a complete message comes out.
    fn frame(&mut self, header: &FrameHeader, payload: BytesMut) -> Result<Option<Incoming>, Violation> {
        let first = match header.opcode {
            OpCode::Control(Control::Ping) => return Ok(Some(Incoming::Ping(payload.freeze()))),
            OpCode::Control(Control::Pong) => return Ok(Some(Incoming::Pong)),
            OpCode::Control(Control::Close) => {
                let code = close_code(&payload)?;
                self.closed = true;
                self.partial = None;
                return Ok(Some(Incoming::Close(code)));
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(Violation::Protocol("reserved opcode"));
            }
            OpCode::Data(Data::Text) => Some(true),
            OpCode::Data(Data::Binary) => Some(false),
            OpCode::Data(Data::Continue) => None,
        };
        // `checked`: how much of the message is known to be UTF-8 (all of it, for binary).
        let (text, data, checked) = match (first, self.partial.take()) {
            (Some(text), None) if header.is_final => (text, payload, 0),
            (Some(text), None) => {
                let mut partial = Partial { text, data: payload, checked: 0 };
                partial.check_text()?;
                self.partial = Some(partial);
                return Ok(None);
            }
            (None, Some(mut partial)) => {
                partial.data.extend_from_slice(&payload);
                partial.check_text()?;
                if !header.is_final {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                (partial.text, partial.data, partial.checked)
            }
            (Some(_), Some(_)) => return Err(Violation::Protocol("new message inside a fragmented one")),
            (None, None) => return Err(Violation::Protocol("continuation without a message")),
        };
        let data = data.freeze();
        if !text {
            return Ok(Some(Incoming::Binary(data)));
        }
        // Fragments were checked as they came, up to an incomplete last character.
        let unchecked = data.get(checked..).unwrap_or_default();
        std::str::from_utf8(unchecked).map_err(|_| Violation::NotUtf8)?;
        Ok(Some(Incoming::Text(data)))
    }
}

/// The status code of a close frame's payload (§5.5.1): empty, or a valid code and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
            Ok(Some(code))
        }
        [_] => Err(Violation::Protocol("close frame of one byte")),
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time; the compiler vectorises the loop.
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Opcodes of the frames the server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

/// One frame to write: its header inline, its payload shared with whoever else holds it (a
/// relayed frame is the very buffer the sender's frame arrived in).
#[derive(Debug)]
pub(super) struct OutFrame {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
    /// Bytes of head and payload already written.
    written: usize,
    /// Whether the payload counts against the connection's send backlog (data frames do;
    /// the server's own control frames do not).
    pub(super) counted: bool,
    /// When the frame entered the connection's send queue (with feature `metrics`).
    pub(super) queued: Stamp,
}

impl OutFrame {
    /// A final, unmasked frame (servers never mask) carrying `payload` whole.
    pub(super) fn new(opcode: Opcode, payload: Bytes) -> Self {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode as u8;
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let counted = matches!(opcode, Opcode::Text | Opcode::Binary);
        Self { head, head_len, payload, written: 0, counted, queued: Stamp::default() }
    }

    /// Bytes written as they are, with no frame header: the handshake's HTTP response.
    pub(super) fn raw(bytes: Bytes) -> Self {
        Self {
            head: [0; 10],
            head_len: 0,
            payload: bytes,
            written: 0,
            counted: false,
            queued: Stamp::default(),
        }
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes that fit, on a character
    /// boundary).
    pub(super) fn close(code: CloseCode, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&u16::from(code).to_be_bytes());
        payload.extend_from_slice(reason.get(..end).unwrap_or_default().as_bytes());
        Self::new(Opcode::Close, Bytes::from(payload))
    }

    /// The payload's length: what it counts against the send backlog.
    pub(super) fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// What is left to write: a piece of the header and a piece of the payload.
    pub(super) fn remaining(&self) -> (&[u8], &[u8]) {
        let head_len = usize::from(self.head_len);
        let head = self.head.get(self.written.min(head_len)..head_len).unwrap_or_default();
        let payload = self.payload.get(self.written.saturating_sub(head_len)..).unwrap_or_default();
        (head, payload)
    }

    /// Records `n` more bytes written; returns the bytes this frame did not take, once it is done.
    pub(super) fn advance(&mut self, n: usize) -> Option<usize> {
        let total = usize::from(self.head_len) + self.payload.len();
        let left = total - self.written;
        if n >= left {
            self.written = total;
            Some(n - left)
        } else {
            self.written += n;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client writes it: masked.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn read_all(reader: &mut Reader, bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(message) = reader.next(&mut buf)? {
            out.push(message);
        }
        Ok(out)
    }

    #[test]
    fn whole_and_fragmented_messages_and_control_frames_in_between() {
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.extend(client_frame(false, 2, b"ab"));
        bytes.extend(client_frame(true, 9, b"ping!"));
        bytes.extend(client_frame(false, 0, b"cd"));
        bytes.extend(client_frame(true, 0, b"ef"));
        bytes.extend(client_frame(true, 10, b""));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'o', b'k']));
        let got = read_all(&mut Reader::new(1024), &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Text(Bytes::from_static(b"hello")),
                Incoming::Ping(Bytes::from_static(b"ping!")),
                Incoming::Binary(Bytes::from_static(b"abcdef")),
                Incoming::Pong,
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn a_message_arriving_byte_by_byte_comes_out_once_and_whole() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let bytes = client_frame(true, 1, &payload);
        let mut reader = Reader::new(100_000);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(997) {
            buf.extend_from_slice(chunk);
            while let Some(message) = reader.next(&mut buf).unwrap() {
                got.push(message);
            }
            if got.is_empty() {
                assert!(reader.wanted(&buf) > 0, "waits for more");
            }
        }
        assert_eq!(got, vec![Incoming::Text(Bytes::from(payload))]);
        assert!(buf.is_empty());
    }

    #[test]
    fn limits_and_violations_have_their_close_codes() {
        let too_big = client_frame(true, 2, &[0; 101]);
        assert_eq!(read_all(&mut Reader::new(100), &too_big), Err(Violation::TooBig));
        // Fragments add up: two of 60 bytes exceed 100.
        let mut parts = client_frame(false, 2, &[0; 60]);
        parts.extend(client_frame(true, 0, &[0; 60]));
        assert_eq!(read_all(&mut Reader::new(100), &parts), Err(Violation::TooBig));
        // A header that claims more than the limit is refused before its payload arrives.
        let claim = &client_frame(true, 2, &[0; 70_000])[..14];
        assert_eq!(read_all(&mut Reader::new(65_536), claim), Err(Violation::TooBig));

        assert_eq!(
            read_all(&mut Reader::new(100), &client_frame(true, 1, &[0xff, 0xfe])),
            Err(Violation::NotUtf8)
        );
        let unmasked = [0x81, 0x01, b'x'];
        assert!(matches!(read_all(&mut Reader::new(100), &unmasked), Err(Violation::Protocol(_))));
        let rsv = {
            let mut frame = client_frame(true, 1, b"x");
            frame[0] |= 0x40;
            frame
        };
        assert!(matches!(read_all(&mut Reader::new(100), &rsv), Err(Violation::Protocol(_))));
        for bad in [
            client_frame(false, 9, b""),          // fragmented control frame
            client_frame(true, 9, &[0; 126]),     // control frame too long
            client_frame(true, 0, b"x"),          // continuation of nothing
            client_frame(true, 3, b"x"),          // reserved opcode
            client_frame(true, 8, &[0x03]),       // close of one byte
            client_frame(true, 8, &[0x03, 0xed]), // close code 1005 may not be sent
        ] {
            assert!(matches!(read_all(&mut Reader::new(200), &bad), Err(Violation::Protocol(_))), "{bad:?}");
        }
        let mut nested = client_frame(false, 1, b"a");
        nested.extend(client_frame(true, 1, b"b"));
        assert!(matches!(read_all(&mut Reader::new(100), &nested), Err(Violation::Protocol(_))));
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
        // §5.2: "the most significant bit MUST be 0". Not a message too big (1009): no such
        // length exists, so it is a broken stream (1002), whatever the limit.
        for len in [1u64 << 63, u64::MAX] {
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            let got = read_all(&mut Reader::new(usize::MAX), &header);
            assert_eq!(got, Err(Violation::Protocol("frame length with its most significant bit set")));
            assert_eq!(got.unwrap_err().close().0, CloseCode::Protocol);
        }
        // The largest length allowed is a message too big, as any other over the limit.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read_all(&mut Reader::new(1 << 20), &header), Err(Violation::TooBig));
    }

    #[test]
    fn text_that_cannot_be_utf8_fails_at_its_first_fragment() {
        // The first fragment is already invalid: no need to wait for (or hold) the rest.
        let mut reader = Reader::new(1024);
        let first = client_frame(false, 1, &[b'o', b'k', 0xff]);
        assert_eq!(read_all(&mut reader, &first), Err(Violation::NotUtf8));
        // An invalid continuation, with the message still open.
        let mut reader = Reader::new(1024);
        let mut bytes = client_frame(false, 1, b"fine");
        bytes.extend(client_frame(false, 0, &[0xc3, 0x28]));
        assert_eq!(read_all(&mut reader, &bytes), Err(Violation::NotUtf8));
        // A character split between fragments is valid: é is c3 a9, € is e2 82 ac.
        let mut reader = Reader::new(1024);
        let mut bytes = client_frame(false, 1, &[b'a', 0xc3]);
        bytes.extend(client_frame(false, 0, &[0xa9, 0xe2]));
        bytes.extend(client_frame(false, 0, &[0x82]));
        bytes.extend(client_frame(true, 0, &[0xac, b'z']));
        assert_eq!(read_all(&mut reader, &bytes), Ok(vec![Incoming::Text(Bytes::from("aé€z"))]));
        // ...but a message may not end inside a character.
        let mut reader = Reader::new(1024);
        let mut bytes = client_frame(false, 1, b"a");
        bytes.extend(client_frame(true, 0, &[0xe2, 0x82]));
        assert_eq!(read_all(&mut reader, &bytes), Err(Violation::NotUtf8));
        // Binary messages are not text: any bytes.
        let mut bytes = client_frame(false, 2, &[0xff]);
        bytes.extend(client_frame(true, 0, &[0xfe]));
        assert_eq!(
            read_all(&mut Reader::new(1024), &bytes),
            Ok(vec![Incoming::Binary(Bytes::from_static(&[0xff, 0xfe]))])
        );
    }

    #[test]
    fn nothing_after_the_peers_close_comes_out() {
        // §5.5.1: the peer sends no data frame after its close; any that comes is dropped, and
        // so is the message it had begun.
        let mut bytes = client_frame(false, 1, b"begun");
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8]));
        bytes.extend(client_frame(true, 1, b"\"ListIDsRequest\""));
        bytes.extend(client_frame(true, 9, b"ping"));
        bytes.extend([0xff; 20]);
        let mut reader = Reader::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(reader.next(&mut buf), Ok(Some(Incoming::Close(Some(1000)))));
        assert!(!reader.is_assembling());
        assert_eq!(reader.next(&mut buf), Ok(None));
        assert!(buf.is_empty(), "what follows the close is dropped");
        buf.extend_from_slice(&client_frame(true, 2, b"later"));
        assert_eq!(reader.next(&mut buf), Ok(None));
    }

    #[test]
    fn out_frames_have_rfc_headers_and_write_in_pieces() {
        for (len, head_len) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let frame = OutFrame::new(Opcode::Binary, Bytes::from(vec![7; len]));
            let (head, payload) = frame.remaining();
            assert_eq!((head.len(), payload.len()), (head_len, len));
            assert_eq!(head[0], 0x82);
            let mut cursor = Cursor::new(head.to_vec());
            let (parsed, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(
                (parsed.is_final, parsed.opcode, parsed.mask, parsed_len),
                (true, OpCode::Data(Data::Binary), None, len as u64)
            );
        }
        let mut frame = OutFrame::new(Opcode::Text, Bytes::from_static(b"hello"));
        assert_eq!(frame.advance(1), None);
        assert_eq!(frame.remaining(), (&[5u8][..], &b"hello"[..]));
        assert_eq!(frame.advance(3), None);
        assert_eq!(frame.remaining(), (&[][..], &b"llo"[..]));
        assert_eq!(frame.advance(10), Some(7));
        let close = OutFrame::close(CloseCode::Away, &"é".repeat(100));
        let (head, payload) = close.remaining();
        assert_eq!((head, payload.len()), (&[0x88, 124][..], 124));
        assert!(!close.counted);
    }
}
