//! From `accept` to an open WebSocket: the accept loop with its limits (connections in all, per
//! source, per second, in their handshake), whom a connection from a trusted proxy counts as, and
//! the handshake under its deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::channel::{ConnHandle, Event, Shared};
use super::conn::Connection;
use super::handshake::{self, Refusal};
use super::link::Link;
use super::shares::{AcceptRate, IpSlot, PerIp, Ticket, Upgrades};
use super::state::End;
use super::stats::{Counters, TaskGuard};
use super::{admission, Admission, UpgradeRequest, WsConfig};
use crate::telemetry::{self, SendQueueMeter};
use crate::ConnId;

pub(super) async fn accept_loop(
    listener: TcpListener,
    config: Arc<WsConfig>,
    events: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    send_queue: SendQueueMeter,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_ip =
        config.max_connections_per_ip.map(|limit| Arc::new(PerIp::new(limit, config.ipv6_source_prefix)));
    let mut accept_rate = config.accept_rate_per_ip.map(|(per_sec, burst)| {
        AcceptRate::new(per_sec, burst, config.ipv6_source_prefix, ACCEPT_RATE_SOURCES)
    });
    let upgrades = Arc::new(Upgrades::default());
    let mut next_id = 0u64;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning, longer while
                // it lasts.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        Counters::bump(&counters.accepted);
        // A connection from a trusted proxy is counted under its client, once the request names it.
        let proxied = is_trusted(&config, peer.ip());
        if let Some(rate) = accept_rate.as_mut().filter(|_| !proxied) {
            if !rate.allow(peer.ip(), tokio::time::Instant::now()) {
                Counters::bump(&counters.refused_rate);
                telemetry::ws::refused(peer, peer.ip(), "accept_rate_per_ip");
                continue;
            }
        }
        let ip_slot = match &per_ip {
            Some(per_ip) if !proxied => match PerIp::acquire(per_ip, peer.ip()) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    Counters::bump(&counters.refused_per_ip);
                    telemetry::ws::refused(peer, peer.ip(), "max_connections_per_ip");
                    continue;
                }
            },
            _ => None,
        };
        if upgrades.len() >= config.max_pending_upgrades && upgrades.evict_oldest().is_some() {
            Counters::bump(&counters.evicted_handshakes);
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // Full: the oldest connection still in its handshake gives its place up, or the
            // newcomer is dropped, which closes it.
            Err(_) => match upgrades.evict_oldest() {
                Some(slot) => {
                    Counters::bump(&counters.evicted_handshakes);
                    slot
                }
                None => {
                    Counters::bump(&counters.refused);
                    telemetry::ws::refused(peer, peer.ip(), "max_connections");
                    continue;
                }
            },
        };
        next_id += 1;
        let conn = ConnId::new(next_id);
        let ticket = Upgrades::register(&upgrades, next_id, slot);
        let (config, events, send_queue) = (config.clone(), events.clone(), send_queue.clone());
        let guard = TaskGuard::new(&counters);
        let slots = Slots { ip: ip_slot, per_ip: per_ip.clone().filter(|_| proxied) };
        let opened = Opened { stream, peer, conn, send_queue };
        tokio::spawn(async move { serve_connection(opened, &config, events, guard, ticket, slots).await });
    }
}

/// Sources whose accept rate is tracked at once; see [`AcceptRate`].
const ACCEPT_RATE_SOURCES: usize = 65_536;

/// A connection's place under `max_connections_per_ip`: taken at `accept`, or for a connection
/// from a trusted proxy, once its request names the client (`per_ip` is then where to take it).
/// Its place under `max_connections` is its [`Ticket`]'s until the handshake is done.
struct Slots {
    ip: Option<IpSlot>,
    per_ip: Option<Arc<PerIp>>,
}

fn is_trusted(config: &WsConfig, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    config.trusted_proxies.iter().any(|proxy| proxy.to_canonical() == ip)
}

/// The client of a connection from `peer`: walking `X-Forwarded-For` from the right (the hop
/// nearest to us), the first address that is not a trusted proxy. Stops at an entry that is not
/// an address, keeping the last good one; with no header, or from an untrusted peer, the peer.
fn client_address(config: &WsConfig, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
    let mut client = peer;
    let Some(forwarded) = forwarded_for.filter(|_| is_trusted(config, peer)) else { return peer };
    for hop in forwarded.rsplit(',') {
        let hop = hop.trim();
        let Some(ip) = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = ip;
        if !is_trusted(config, ip) {
            break;
        }
    }
    client
}

/// The first wait after an `accept` error, doubled while errors go on, up to the second.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A TCP connection just accepted, and what its task needs to know about it.
struct Opened {
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    send_queue: SendQueueMeter,
}

async fn serve_connection(
    opened: Opened,
    config: &WsConfig,
    events: mpsc::Sender<Event>,
    guard: TaskGuard,
    ticket: Ticket,
    mut slots: Slots,
) {
    let Opened { stream, peer, conn, send_queue } = opened;
    let counters = &guard.0;
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::new();
    let handshake = async {
        let mut link = open_link(stream, config).await.ok_or(Refusal::Io)?;
        let upgrade = handshake::read_request(&mut link, &mut buf).await?;
        let client = client_address(config, peer.ip(), upgrade.forwarded_for.as_deref());
        if let Some(per_ip) = &slots.per_ip {
            match PerIp::acquire(per_ip, client) {
                Some(ip_slot) => slots.ip = Some(ip_slot),
                None => {
                    Counters::bump(&counters.refused_per_ip);
                    telemetry::ws::refused(peer, client, "max_connections_per_ip");
                    return handshake::refuse(&mut link, "429 Too Many Requests").await;
                }
            }
        }
        if let Some(hook) = &config.admission {
            let request = UpgradeRequest { path: &upgrade.path, headers: &upgrade.headers, peer, client };
            if let Admission::Refuse { status, reason } = hook.decide(&request) {
                Counters::bump(&counters.refused_admission);
                telemetry::ws::refused(peer, client, "admission");
                let response = admission::refusal_response(status, &reason);
                if link.write_all(response.as_bytes()).await.is_ok() {
                    link.shutdown().await;
                }
                return Err(Refusal::Admission);
            }
        }
        Ok((link, handshake::accept(&upgrade), upgrade.codec, client))
    };
    let handshake = tokio::time::timeout(config.handshake_timeout, handshake);
    let finished = tokio::select! {
        biased;
        // Counted by whoever ended it to make room.
        () = ticket.evicted() => return,
        finished = handshake => finished,
    };
    let (link, response, codec, client) = match finished {
        Ok(Ok(opened)) => opened,
        // Counted as they were refused.
        Ok(Err(Refusal::Http("429 Too Many Requests") | Refusal::Admission)) => return,
        failed => {
            Counters::bump(&counters.failed_handshakes);
            telemetry::ws::handshake_failed(peer, failed.is_err());
            return; // Never became a WebSocket: the core never hears of it.
        }
    };
    // Made room for a newer connection just as its own handshake finished.
    let Some(place) = ticket.finish() else { return };

    // Capacity is `buffer` plus one per sender, and there is one sender.
    let (queue, outbound) = futures::channel::mpsc::channel(config.send_backlog.saturating_sub(1));
    let shared = Arc::new(Shared::default());
    let handle = ConnHandle { queue, shared: Arc::clone(&shared), killed: false, dying: 0 };
    if events.send(Event::Opened { conn, codec, addr: client, handle }).await.is_err() {
        return;
    }
    telemetry::ws::opened(conn, peer, client, codec);
    // The driver has just been woken by `Opened`; giving it its turn first lets the core's first
    // frames (the challenge) join the response in the connection's first write.
    tokio::task::yield_now().await;
    let connection =
        Connection { conn, peer, codec, config, shared: &shared, events: &events, counters, send_queue };
    let end = connection.run(link, response, buf, outbound).await;
    telemetry::ws::ended(conn, peer, end.name());
    let counter = match end {
        End::Closed => Some(&counters.clean_closes),
        End::Oversize => Some(&counters.oversize),
        End::PingTimeout => Some(&counters.ping_timeouts),
        End::WriteTimeout => Some(&counters.slow_readers),
        End::Violation => Some(&counters.protocol_violations),
        End::Gone | End::Killed | End::Error => None,
    };
    if let Some(counter) = counter {
        Counters::bump(counter);
    }
    // Given back before the close is reported, so that whoever sees the close can reconnect.
    drop((slots, place));
    let _ = events.send(Event::Closed { conn }).await;
}

/// The stream a connection's WebSocket runs on: TCP, or TLS over it once its handshake is done.
async fn open_link(stream: TcpStream, config: &WsConfig) -> Option<Link> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        let mut link = super::link::tls::TlsLink::new(stream, tls.config()).ok()?;
        link.handshake().await.ok()?;
        return Some(Link::Tls(Box::new(link)));
    }
    #[cfg(not(feature = "tls"))]
    let _ = config;
    Some(Link::Plain(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_forwarded_address_that_is_not_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let config =
            WsConfig { trusted_proxies: vec![ip("10.0.0.1"), ip("10.0.0.2")], ..WsConfig::default() };
        let client = |peer: &str, header: Option<&str>| client_address(&config, ip(peer), header);
        // Through one proxy, and through two (the second one trusted too).
        assert_eq!(client("10.0.0.1", Some("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.1", Some("203.0.113.7, 10.0.0.2")), ip("203.0.113.7"));
        // Whatever the client wrote in the header itself stands left of the address the proxy saw.
        assert_eq!(client("10.0.0.1", Some("1.1.1.1, 203.0.113.7")), ip("203.0.113.7"));
        // Ports and IPv6 addresses, with and without brackets; IPv4-mapped proxies.
        assert_eq!(client("10.0.0.1", Some("203.0.113.7:4711")), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.1", Some("2001:db8::7")), ip("2001:db8::7"));
        assert_eq!(client("10.0.0.1", Some("[2001:db8::7]:4711")), ip("2001:db8::7"));
        assert_eq!(client("::ffff:10.0.0.1", Some("203.0.113.7")), ip("203.0.113.7"));
        // Not an address: the last good hop counts (here the trusted proxy itself).
        assert_eq!(client("10.0.0.1", Some("203.0.113.7, junk, 10.0.0.2")), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.1", Some("junk")), ip("10.0.0.1"));
        // From anyone else, or without the header, the peer.
        assert_eq!(client("192.0.2.9", Some("203.0.113.7")), ip("192.0.2.9"));
        assert_eq!(client("10.0.0.1", None), ip("10.0.0.1"));
    }
}
