//! The server side of the WebSocket opening handshake (RFC 6455 §4.2): one HTTP/1.1 `GET` with
//! `Upgrade: websocket`, answered with `101 Switching Protocols`.
//!
//! httparse reads the request and tungstenite derives the accept key; this module only checks the
//! headers the RFC requires and picks the codec. The bytes a client sends after its request stay
//! in the read buffer for the framing layer, so that nothing is lost between the two.

use bytes::{Buf, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::link::Link;
use crate::Codec;

use crate::transport::BINCODE_SUBPROTOCOL;

/// Longest request head accepted, in bytes: far more than browsers and fledger nodes send.
const MAX_HEAD: usize = 8 * 1024;

/// Most headers in a request.
const MAX_HEADERS: usize = 32;

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The connection ended or failed before the request was complete.
    Io,
    /// Not a WebSocket upgrade request, or a malformed one: answered with this status line.
    Http(&'static str),
    /// The admission hook refused it, and the refusal was sent.
    Admission,
}

/// A valid upgrade request, not answered yet.
#[derive(Debug)]
pub(super) struct Upgrade {
    /// The codec the client asked for.
    pub(super) codec: Codec,
    accept: String,
    /// Every `X-Forwarded-For` value, in order, joined by commas: believed only from a trusted
    /// proxy.
    pub(super) forwarded_for: Option<String>,
    /// The request target.
    pub(super) path: String,
    /// Every header whose value is UTF-8, for the admission hook.
    pub(super) headers: Vec<(String, String)>,
}

/// Reads and checks the upgrade request from `link` (bytes already read start `buf`); answers a
/// request that is not a valid upgrade with its HTTP status. Whatever follows the request stays in
/// `buf`. Accept it with [`accept`], or refuse it with [`refuse`].
///
/// Has no deadline of its own: the caller bounds it with the handshake timeout.
pub(super) async fn read_request(link: &mut Link, buf: &mut BytesMut) -> Result<Upgrade, Refusal> {
    let mut scan = HeadScan::default();
    let head_len = loop {
        if let Some(end) = scan.find(buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return refuse(link, "431 Request Header Fields Too Large").await;
        }
        link.readable().await.map_err(|_| Refusal::Io)?;
        match link.read_now(buf, 0, 1024, MAX_HEAD - buf.len()) {
            Ok(Some(0)) | Err(_) => return Err(Refusal::Io),
            Ok(_) => {}
        }
    };
    let upgrade = match parse(buf.get(..head_len).unwrap_or_default()) {
        Ok(upgrade) => upgrade,
        Err(status) => return refuse(link, status).await,
    };
    buf.advance(head_len);
    Ok(upgrade)
}

/// The `101 Switching Protocols` answer to `upgrade`: once it is written the link speaks
/// WebSocket. The connection task writes it as the first bytes of its write queue, so that the
/// core's first frames (the challenge) can go out in the same system call.
pub(super) fn accept(upgrade: &Upgrade) -> Bytes {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        upgrade.accept
    );
    if upgrade.codec.is_binary() {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(BINCODE_SUBPROTOCOL);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    Bytes::from(response)
}

/// The search for the blank line that ends a request head, resumed where the last read left it:
/// a head that arrives a byte at a time is scanned once, not once per read.
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    /// Bytes of the buffer already searched.
    scanned: usize,
    /// Bytes looked at, over every call.
    #[cfg(test)]
    examined: usize,
}

impl HeadScan {
    /// The length of the head at the start of `buf`, through its blank line, once it is all
    /// there. `buf` must be the buffer of the previous calls, grown at its end.
    pub(super) fn find(&mut self, buf: &[u8]) -> Option<usize> {
        // The blank line may straddle the previous end: look again at its last three bytes.
        let from = self.scanned.saturating_sub(3).min(buf.len());
        let rest = buf.get(from..).unwrap_or_default();
        #[cfg(test)]
        {
            self.examined += rest.len();
        }
        self.scanned = buf.len();
        rest.windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at + 4)
    }
}

/// Checks the request head as §4.2.1 requires; the error is the HTTP status to answer with.
pub(super) fn parse(head: &[u8]) -> Result<Upgrade, &'static str> {
    const BAD: &str = "400 Bad Request";
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err(BAD),
    }
    if request.method != Some("GET") || request.version != Some(1) {
        return Err(BAD);
    }
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .filter_map(|header| std::str::from_utf8(header.value).ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
    };
    let has = |name: &'static str, token: &str| values(name).any(|value| value.eq_ignore_ascii_case(token));
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err("426 Upgrade Required");
    }
    if !has("sec-websocket-version", "13") {
        return Err("426 Upgrade Required");
    }
    let key = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|header| header.value)
        .filter(|key| !key.is_empty())
        .ok_or(BAD)?;
    let codec = if has("sec-websocket-protocol", BINCODE_SUBPROTOCOL) { Codec::Bincode } else { Codec::Json };
    let forwarded: Vec<&str> = values("x-forwarded-for").collect();
    let forwarded_for = (!forwarded.is_empty()).then(|| forwarded.join(","));
    let headers = request
        .headers
        .iter()
        .filter_map(|header| {
            Some((header.name.to_string(), std::str::from_utf8(header.value).ok()?.to_string()))
        })
        .collect();
    let path = request.path.unwrap_or("/").to_string();
    Ok(Upgrade { codec, accept: derive_accept_key(key), forwarded_for, path, headers })
}

/// Answers with `status` and ends the connection.
pub(super) async fn refuse<T>(link: &mut Link, status: &'static str) -> Result<T, Refusal> {
    let version = if status.starts_with("426") { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    let response = format!("HTTP/1.1 {status}\r\n{version}Connection: close\r\nContent-Length: 0\r\n\r\n");
    if link.write_all(response.as_bytes()).await.is_ok() {
        link.shutdown().await;
    }
    Err(Refusal::Http(status))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const GOOD: &str =
        "GET /any/path HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[test]
    fn a_valid_request_gets_the_rfc_accept_key_and_its_codec() {
        let upgrade = parse(format!("{GOOD}\r\n").as_bytes()).ok().unwrap();
        // The example of RFC 6455 §1.3.
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.codec, Codec::Json);
        let bincode = format!("{GOOD}Sec-WebSocket-Protocol: chat, {BINCODE_SUBPROTOCOL}\r\n\r\n");
        assert_eq!(parse(bincode.as_bytes()).ok().unwrap().codec, Codec::Bincode);
    }

    #[test]
    fn requests_that_are_not_upgrades_are_refused_with_a_status() {
        let without = |name: &str| {
            let head: String = GOOD
                .split("\r\n")
                .filter(|line| !line.starts_with(name))
                .map(|l| format!("{l}\r\n"))
                .collect();
            parse(format!("{head}\r\n").as_bytes()).err()
        };
        assert_eq!(without("Upgrade"), Some("426 Upgrade Required"));
        assert_eq!(without("Connection"), Some("426 Upgrade Required"));
        assert_eq!(without("Sec-WebSocket-Version"), Some("426 Upgrade Required"));
        assert_eq!(without("Sec-WebSocket-Key"), Some("400 Bad Request"));
        assert_eq!(
            parse(format!("{}\r\n", GOOD.replace("GET", "POST")).as_bytes()).err(),
            Some("400 Bad Request")
        );
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n").err(), Some("400 Bad Request"));
    }

    /// A connected pair on loopback: the client's stream and the server's link.
    async fn pair() -> (tokio::net::TcpStream, Link) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Link::Plain(server))
    }

    #[test]
    fn the_head_scan_resumes_where_it_stopped() {
        let request = format!("{GOOD}X-Padding: {}\r\n\r\nEXTRA", "p".repeat(4000));
        let head_len = request.len() - "EXTRA".len();
        // A byte at a time, as a slow client sends it.
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        let mut found = None;
        for byte in request.bytes() {
            buf.push(byte);
            found = scan.find(&buf);
            if found.is_some() {
                break;
            }
        }
        assert_eq!(found, Some(head_len));
        // Each byte is looked at once, and the three before each new one again: linear, where a
        // scan from the start on every read looks at head_len² / 2 bytes (8 million here).
        assert!(scan.examined <= 4 * head_len, "{} bytes examined for a head of {head_len}", scan.examined);
        // In one read, and with the blank line split across reads at every point.
        assert_eq!(HeadScan::default().find(request.as_bytes()), Some(head_len));
        for split in 0..request.len() {
            let mut scan = HeadScan::default();
            let first = scan.find(&request.as_bytes()[..split]);
            let found = first.or_else(|| scan.find(request.as_bytes()));
            assert_eq!(found, Some(head_len), "split at {split}");
        }
        assert_eq!(HeadScan::default().find(b"GET / HTTP/1.1\r\n\r"), None);
    }

    #[tokio::test]
    async fn bytes_after_the_request_stay_in_the_buffer() {
        let (mut client, mut server) = pair().await;
        client.write_all(format!("{GOOD}\r\nEXTRA").as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let upgrade = read_request(&mut server, &mut buf).await.unwrap();
        assert_eq!(upgrade.codec, Codec::Json);
        server.write_all(&accept(&upgrade)).await.unwrap();
        assert_eq!(&buf[..], b"EXTRA");
        let mut response = vec![0; 4096];
        let n = client.read(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response[..n]);
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[tokio::test]
    async fn an_endless_head_is_refused_at_its_limit() {
        let (mut client, mut server) = pair().await;
        let endless = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        client.write_all(endless.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let refused = read_request(&mut server, &mut buf).await.map(|upgrade| upgrade.codec);
        assert_eq!(refused, Err(Refusal::Http("431 Request Header Fields Too Large")));
    }
}
