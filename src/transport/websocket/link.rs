//! The byte stream under the WebSocket framing: plain TCP, or TLS over it (feature `tls`).
//!
//! Both are driven by the socket's readiness and never block: a read takes what has arrived, a
//! write gives the socket what it accepts. TLS is rustls's sans-IO `ServerConnection` between the
//! socket and the framing, so the connection task keeps one loop and one set of deadlines for
//! both.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::frame::OutFrame;

/// Slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// A connection's socket, plain or encrypted.
pub(super) enum Link {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsLink>),
}

impl Link {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Self::Tls(link) => &link.tcp,
        }
    }

    /// Resolves when the socket may have bytes to read.
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.tcp().readable().await
    }

    /// Resolves when the socket may take more bytes.
    pub(super) async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Whether bytes wait to be written below the framing (TLS records), even with no frame
    /// queued.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            #[cfg(feature = "tls")]
            Self::Tls(link) => link.tls.wants_write(),
        }
    }

    /// Reads what has arrived into `buf`, without waiting: `chunk` bytes at a time, or `wanted`
    /// if more, up to `batch` in all. Returns the bytes read, `Some(0)` at the end of the stream,
    /// `None` when nothing had arrived after all.
    pub(super) fn read_now(
        &mut self,
        buf: &mut BytesMut,
        wanted: usize,
        chunk: usize,
        batch: usize,
    ) -> io::Result<Option<usize>> {
        match self {
            Self::Plain(tcp) => {
                let mut total = 0;
                loop {
                    buf.reserve(wanted.saturating_sub(total).max(chunk).max(1));
                    let room = buf.capacity() - buf.len();
                    match tcp.try_read_buf(buf) {
                        Ok(0) => return Ok(Some(total)),
                        Ok(n) => total += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok((total > 0).then_some(total))
                        }
                        // What was read before the error is handed on first; the next read
                        // reports the end.
                        Err(_) if total > 0 => return Ok(Some(total)),
                        Err(e) => return Err(e),
                    }
                    // A read that left room took everything the socket had: another would only
                    // find it empty, a system call for nothing. The socket stays marked readable
                    // until a read finds it empty, so the next turn comes back here.
                    if total >= batch || buf.len() < buf.capacity() || total >= room.max(wanted) {
                        return Ok(Some(total));
                    }
                }
            }
            #[cfg(feature = "tls")]
            Self::Tls(link) => link.read_now(buf, wanted.max(chunk), batch),
        }
    }

    /// Writes queued frames until the socket would block, calling `done` with each counted frame
    /// written in full. Returns how many bytes went into the socket (for TLS, record bytes).
    pub(super) fn write_now(
        &mut self,
        out: &mut VecDeque<OutFrame>,
        done: &mut dyn FnMut(&OutFrame),
    ) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => {
                let mut progress = 0;
                while !out.is_empty() {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let count = fill_slices(out, &mut slices);
                    let n = match tcp.try_write_vectored(slices.get(..count).unwrap_or_default()) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    };
                    progress += n;
                    advance(out, n, done);
                }
                Ok(progress)
            }
            #[cfg(feature = "tls")]
            Self::Tls(link) => link.write_now(out, done),
        }
    }

    /// Writes all of `bytes`, waiting for the socket as needed; for the handshake's response.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut out = VecDeque::from([OutFrame::raw(bytes::Bytes::copy_from_slice(bytes))]);
        loop {
            self.write_now(&mut out, &mut |_: &OutFrame| {})?;
            if out.is_empty() && !self.wants_write() {
                return Ok(());
            }
            self.writable().await?;
        }
    }

    /// Ends the stream: TLS says `close_notify`, then the TCP connection gets its FIN. Bound it
    /// with a deadline: the peer may not take the bytes.
    pub(super) async fn shutdown(&mut self) {
        #[cfg(feature = "tls")]
        if let Self::Tls(link) = self {
            link.tls.send_close_notify();
            let mut none = VecDeque::new();
            while link.tls.wants_write() {
                if link.write_now(&mut none, &mut |_: &OutFrame| {}).is_err()
                    || link.tcp.writable().await.is_err()
                {
                    break;
                }
            }
        }
        let tcp = match self {
            Self::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Self::Tls(link) => &mut link.tcp,
        };
        let _ = tcp.shutdown().await;
    }
}

/// Records `n` bytes written off the front of `out`.
fn advance(out: &mut VecDeque<OutFrame>, mut n: usize, done: &mut dyn FnMut(&OutFrame)) {
    while n > 0 {
        let Some(front) = out.front_mut() else { break };
        let Some(rest) = front.advance(n) else { break };
        n = rest;
        if front.counted {
            done(front);
        }
        out.pop_front();
    }
}

/// The slices of what is left to write, oldest first; returns how many it filled.
fn fill_slices<'a>(out: &'a VecDeque<OutFrame>, slices: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
    let mut n = 0;
    for frame in out {
        let (head, payload) = frame.remaining();
        for part in [head, payload] {
            if part.is_empty() {
                continue;
            }
            let Some(slot) = slices.get_mut(n) else { return n };
            *slot = IoSlice::new(part);
            n += 1;
        }
    }
    n
}

#[cfg(feature = "tls")]
pub(super) mod tls {
    //! TLS over the connection's TCP socket: rustls's `ServerConnection`, fed by readiness.

    use std::collections::VecDeque;
    use std::io::{self, Read, Write};

    use bytes::BytesMut;
    use tokio::net::TcpStream;

    use super::super::frame::OutFrame;

    /// Encrypted bytes rustls may hold for one connection before a write must wait for the
    /// socket: bounds what a slow reader over TLS costs on top of its send queue.
    const TLS_BUFFER: usize = 64 * 1024;

    pub(in super::super) struct TlsLink {
        pub(super) tcp: TcpStream,
        pub(super) tls: rustls::ServerConnection,
    }

    /// `io::Read` and `io::Write` on a non-blocking socket, for rustls: `WouldBlock` when the
    /// socket has nothing or takes nothing.
    struct Socket<'a>(&'a TcpStream);

    impl Read for Socket<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.try_read(buf)
        }
    }

    impl Write for Socket<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.try_write(buf)
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.0.try_write_vectored(bufs)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl TlsLink {
        pub(in super::super) fn new(
            tcp: TcpStream,
            config: std::sync::Arc<rustls::ServerConfig>,
        ) -> io::Result<Self> {
            let mut tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            tls.set_buffer_limit(Some(TLS_BUFFER));
            Ok(Self { tcp, tls })
        }

        /// Runs the TLS handshake to its end. Has no deadline of its own: the caller's
        /// handshake timeout bounds it.
        pub(in super::super) async fn handshake(&mut self) -> io::Result<()> {
            while self.tls.is_handshaking() {
                if self.tls.wants_write() {
                    self.flush_records()?;
                    if self.tls.wants_write() {
                        self.tcp.writable().await?;
                    }
                    continue;
                }
                self.tcp.readable().await?;
                match self.tls.read_tls(&mut Socket(&self.tcp)) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
                if let Err(e) = self.tls.process_new_packets() {
                    // Tell the peer why (the alert rustls queued), as far as the socket takes it.
                    let _ = self.flush_records();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            self.flush_records()?;
            Ok(())
        }

        /// Writes the TLS records rustls holds, until the socket would block.
        fn flush_records(&mut self) -> io::Result<usize> {
            let mut progress = 0;
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut Socket(&self.tcp)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => progress += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(progress)
        }

        pub(super) fn read_now(
            &mut self,
            buf: &mut BytesMut,
            chunk: usize,
            batch: usize,
        ) -> io::Result<Option<usize>> {
            let mut total = 0;
            let mut eof = false;
            loop {
                match self.tls.read_tls(&mut Socket(&self.tcp)) {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // As for plain sockets: the plaintext already taken goes first.
                    Err(_) if total > 0 => return Ok(Some(total)),
                    Err(e) => return Err(e),
                }
                let state = match self.tls.process_new_packets() {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = self.flush_records();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                };
                let plaintext = state.plaintext_bytes_to_read();
                let closed = state.peer_has_closed();
                if plaintext > 0 {
                    let start = buf.len();
                    let want = plaintext.max(chunk.min(plaintext));
                    buf.resize(start + want, 0);
                    let got = match self.tls.reader().read(buf.get_mut(start..).unwrap_or_default()) {
                        Ok(got) => got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    buf.truncate(start + got);
                    total += got;
                }
                // Alerts and key updates may want an answer.
                self.flush_records()?;
                if eof || closed {
                    return Ok(Some(total));
                }
                if plaintext == 0 || total >= batch {
                    return Ok((total > 0).then_some(total));
                }
            }
        }

        pub(super) fn write_now(
            &mut self,
            out: &mut VecDeque<OutFrame>,
            done: &mut dyn FnMut(&OutFrame),
        ) -> io::Result<usize> {
            let mut progress = 0;
            loop {
                // Plaintext into rustls, as much as its buffer takes.
                while let Some(front) = out.front_mut() {
                    let (head, payload) = front.remaining();
                    let part = if head.is_empty() { payload } else { head };
                    let taken = self.tls.writer().write(part)?;
                    if taken == 0 && !part.is_empty() {
                        break;
                    }
                    if let Some(_rest) = front.advance(taken) {
                        if front.counted {
                            done(front);
                        }
                        out.pop_front();
                    }
                }
                let flushed = self.flush_records()?;
                progress += flushed;
                if flushed == 0 || (out.is_empty() && !self.tls.wants_write()) {
                    return Ok(progress);
                }
            }
        }
    }
}
