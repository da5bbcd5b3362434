//! TURN credentials for signed-in nodes: coturn's `use-auth-secret` ("A REST API for access to
//! TURN services"). The username is `<expiry>:<node id>`, the password
//! `base64(HMAC-SHA1(secret, username))`; a TURN server that knows the secret checks both without
//! asking anyone.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::ConfigError;
use crate::limits::{at_least, at_most, duration, nonzero};
use crate::protocol::{IceServer, IceServers, NodeID};

/// The secret shared with the TURN server (coturn's `static-auth-secret`). Its `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(Vec<u8>);

impl TurnSecret {
    /// A secret from its bytes, exactly as the TURN server has it (coturn reads the text of its
    /// `static-auth-secret` line).
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The password for `username`: `base64(HMAC-SHA1(secret, username))`.
    pub fn password(&self, username: &str) -> String {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TurnSecret(<{} bytes>)", self.0.len())
    }
}

/// TURN and STUN servers, and how to make credentials for them: set
/// [`SignalConfig::turn`](crate::SignalConfig::turn) and every node gets its own, right after its
/// signature is verified, again while connected before they expire, and on request.
///
/// ```
/// use std::time::Duration;
/// use peer_signal::{SignalConfig, TurnConfig, TurnSecret};
///
/// let turn = TurnConfig::new(["turn:turn.example.org:3478"], TurnSecret::new("north-sea"))
///     .with_stun(["stun:turn.example.org:3478"])
///     .with_lifetime(Duration::from_secs(6 * 3600));
/// let config = SignalConfig::default().with_turn(turn);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnConfig {
    /// `turn:` and `turns:` URLs; each node gets credentials for them.
    pub uris: Vec<String>,
    /// `stun:` URLs, sent without credentials. Default none.
    pub stun: Vec<String>,
    /// The secret shared with the TURN server. To rotate it, give the TURN server both the old
    /// and the new secret (coturn takes several `static-auth-secret` lines), switch this one
    /// (at run time: [`DriverHandle::set_turn`](crate::DriverHandle::set_turn)), and remove the
    /// old one there once the `lifetime` has passed.
    pub secret: TurnSecret,
    /// How long credentials last. Default 4 hours; at least a minute, at most 30 days. A node
    /// gets new ones with the first frame it sends after half of it.
    pub lifetime: Duration,
    /// The wall clock at one instant: `(instant, seconds since the Unix epoch)`, from which the
    /// server reckons expiry times without reading a clock. [`TurnConfig::new`] takes it from the
    /// system's clocks; tests pin it.
    pub epoch: (Instant, u64),
}

impl TurnConfig {
    /// `uris` with credentials from `secret`, lasting 4 hours, reckoned from the system clock now.
    pub fn new<S: Into<String>>(uris: impl IntoIterator<Item = S>, secret: TurnSecret) -> Self {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        Self {
            uris: uris.into_iter().map(Into::into).collect(),
            stun: Vec::new(),
            secret,
            lifetime: Duration::from_secs(4 * 3600),
            epoch: (Instant::now(), unix),
        }
    }

    /// Sets [`stun`](Self::stun).
    #[must_use]
    pub fn with_stun<S: Into<String>>(mut self, stun: impl IntoIterator<Item = S>) -> Self {
        self.stun = stun.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`lifetime`](Self::lifetime).
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sets [`epoch`](Self::epoch).
    #[must_use]
    pub fn with_epoch(mut self, at: Instant, unix_secs: u64) -> Self {
        self.epoch = (at, unix_secs);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for no TURN URL, a URL that is not `turn:`/`turns:` (or `stun:` in
    /// `stun`), an empty secret, or a lifetime under a minute or over 30 days.
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("turn.uris", self.uris.len())?;
        nonzero("turn.secret", self.secret.0.len())?;
        duration("turn.lifetime", self.lifetime)?;
        at_most("turn.lifetime", secs(self.lifetime), MAX_LIFETIME)?;
        at_least("turn.lifetime", self.lifetime.as_secs(), "one minute", MIN_LIFETIME.as_secs())?;
        let bad = |uri: &String, schemes: &[&str]| !schemes.iter().any(|scheme| uri.starts_with(scheme));
        if let Some(uri) = self.uris.iter().find(|uri| bad(uri, &["turn:", "turns:"])) {
            return Err(ConfigError::Url {
                field: "turn.uris",
                url: uri.clone(),
                expected: "turn: or turns:",
            });
        }
        if let Some(uri) = self.stun.iter().find(|uri| bad(uri, &["stun:", "stuns:"])) {
            return Err(ConfigError::Url {
                field: "turn.stun",
                url: uri.clone(),
                expected: "stun: or stuns:",
            });
        }
        Ok(())
    }

    /// The ICE servers for `node` at `now`: credentials that expire `lifetime` from now.
    pub fn issue(&self, node: &NodeID, now: Instant) -> IceServers {
        let (at, unix) = self.epoch;
        // Instants before the epoch (a pinned epoch in the future) count from it.
        let since = now.saturating_duration_since(at).as_secs();
        let expires = unix.saturating_add(since).saturating_add(self.lifetime.as_secs());
        let username = format!("{expires}:{node}");
        let credential = self.secret.password(&username);
        let mut servers = vec![IceServer { urls: self.uris.clone(), username, credential }];
        if !self.stun.is_empty() {
            servers.push(IceServer {
                urls: self.stun.clone(),
                username: String::new(),
                credential: String::new(),
            });
        }
        IceServers { expires, servers }
    }
}

const MIN_LIFETIME: Duration = Duration::from_secs(60);
const MAX_LIFETIME: usize = 30 * 24 * 3600;

fn secs(duration: Duration) -> usize {
    usize::try_from(duration.as_secs()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_base64_of_hmac_sha1_of_the_username_under_the_secret() {
        // Computed independently: python3 -c 'import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b"north-sea", b"1765000000:alice", hashlib.sha1).digest()))'
        let secret = TurnSecret::new("north-sea");
        assert_eq!(secret.password("1765000000:alice"), PYTHON_VECTOR);
        assert_eq!(format!("{secret:?}"), "TurnSecret(<9 bytes>)");
    }

    const PYTHON_VECTOR: &str = "Jux+kqxhSYELa2xxdFjRiW9TMpc=";

    #[test]
    fn credentials_expire_a_lifetime_after_they_are_issued_and_name_the_node() {
        let start = Instant::now();
        let turn = TurnConfig::new(["turn:127.0.0.1:3478"], TurnSecret::new("s"))
            .with_stun(["stun:127.0.0.1:3478"])
            .with_lifetime(Duration::from_secs(3600))
            .with_epoch(start, 1_765_000_000);
        let node = NodeID::from([7; 32]);
        let issued = turn.issue(&node, start + Duration::from_secs(10));
        assert_eq!(issued.expires, 1_765_000_000 + 10 + 3600);
        let [turn_server, stun] = &issued.servers[..] else { panic!("{issued:?}") };
        assert_eq!(turn_server.username, format!("{}:{node}", issued.expires));
        assert_eq!(turn_server.credential, TurnSecret::new("s").password(&turn_server.username));
        assert_eq!((stun.username.as_str(), stun.credential.as_str()), ("", ""));
        assert!(!format!("{turn_server:?}").contains(&turn_server.credential));
        assert!(!format!("{turn:?}").contains("\"s\""));
    }

    #[test]
    fn a_configuration_without_turn_urls_or_secret_or_with_a_silly_lifetime_is_refused() {
        let good = TurnConfig::new(["turn:a:3478", "turns:a:5349"], TurnSecret::new("s"));
        assert!(good.validate().is_ok());
        assert!(TurnConfig::new(Vec::<String>::new(), TurnSecret::new("s")).validate().is_err());
        assert!(TurnConfig::new(["turn:a"], TurnSecret::new("")).validate().is_err());
        assert!(TurnConfig::new(["http://a"], TurnSecret::new("s")).validate().is_err());
        assert!(good.clone().with_stun(["turn:a"]).validate().is_err());
        assert!(good.clone().with_lifetime(Duration::from_secs(59)).validate().is_err());
        assert!(good.with_lifetime(Duration::from_secs(31 * 24 * 3600)).validate().is_err());
    }
}
