//! Admission before the upgrade: the application sees each WebSocket request (its path, its
//! headers, the client's address) and lets it in or refuses it with an HTTP status, before the
//! connection costs the server anything more than the request.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// An upgrade request as the admission hook sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct UpgradeRequest<'a> {
    /// The request target: the path and the query string, as sent (`/signal?token=…`).
    pub path: &'a str,
    /// The request's headers, names as sent, values that are not UTF-8 left out.
    pub headers: &'a [(String, String)],
    /// The address the TCP connection came from (a proxy's, behind one).
    pub peer: SocketAddr,
    /// The client's address: the peer's, or behind a
    /// [trusted proxy](super::WsConfig::trusted_proxies) the one it forwarded.
    pub client: IpAddr,
}

impl UpgradeRequest<'_> {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The value of query parameter `name` in [`path`](Self::path), as sent (not percent-decoded).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

/// What the admission hook decides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Upgrade the connection.
    Accept,
    /// Answer with this HTTP status (400 to 599; anything else becomes 403) and reason (sent as
    /// the response's body, at most 256 bytes), then close.
    Refuse {
        /// The HTTP status code.
        status: u16,
        /// Why, for the client.
        reason: String,
    },
}

impl Admission {
    /// A refusal with `status` and `reason`.
    pub fn refuse(status: u16, reason: impl Into<String>) -> Self {
        Self::Refuse { status, reason: reason.into() }
    }
}

/// The function [`WsConfig::admission`](super::WsConfig::admission) calls for each upgrade
/// request, on the connection's task: keep it quick (a lookup, a comparison), it runs within the
/// handshake timeout.
///
/// ```
/// use peer_signal::{Admission, AdmissionHook, SignalConfig, WsConfig};
///
/// // Only browsers from our own site, and any non-browser client.
/// let origins = AdmissionHook::allow_origins(["https://app.example.org"]);
/// // Or a rule of one's own.
/// let no_robots = AdmissionHook::new(|request| match request.header("user-agent") {
///     Some(agent) if agent.contains("robot") => Admission::refuse(403, "no robots"),
///     _ => Admission::Accept,
/// });
/// let ws = WsConfig::for_server(&SignalConfig::default()).with_admission(origins);
/// ```
#[derive(Clone)]
pub struct AdmissionHook(Arc<dyn Fn(&UpgradeRequest<'_>) -> Admission + Send + Sync>);

impl AdmissionHook {
    /// A hook that calls `decide`.
    pub fn new(decide: impl Fn(&UpgradeRequest<'_>) -> Admission + Send + Sync + 'static) -> Self {
        Self(Arc::new(decide))
    }

    /// Lets in requests that carry `token`, as `Authorization: Bearer <token>` (the scheme in any
    /// case, RFC 9110 §11.1) or as the query parameter `token=<token>` (for clients that cannot
    /// set headers, such as browsers and fledger nodes); refuses the others with 401.
    ///
    /// The comparison takes the same time however much of the token matches, and however long
    /// the token given is: it depends only on the length of `token`.
    ///
    /// An empty `token` lets nobody in: every request is refused with 401, so that a secret
    /// missing from the configuration (an unset environment variable) closes the server rather
    /// than opening it to anyone who sends `?token=`.
    pub fn bearer_token(token: impl Into<String>) -> Self {
        let token = token.into();
        Self::new(move |request| {
            let bearer = request.header("authorization").and_then(bearer_credentials);
            let given = bearer.or_else(|| request.query("token"));
            if !token.is_empty()
                && given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
            {
                Admission::Accept
            } else {
                Admission::refuse(401, "a valid token is required")
            }
        })
    }

    /// Lets in requests whose `Origin` header is one of `origins` (compared without regard to
    /// case), and requests without one (clients that are not browsers send none); refuses the
    /// others with 403. Browsers always send `Origin`, so this keeps other sites' pages out.
    pub fn allow_origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let origins: Vec<String> = origins.into_iter().map(Into::into).collect();
        Self::new(move |request| match request.header("origin") {
            Some(origin) if !origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)) => {
                Admission::refuse(403, "origin not allowed")
            }
            _ => Admission::Accept,
        })
    }

    pub(super) fn decide(&self, request: &UpgradeRequest<'_>) -> Admission {
        (self.0)(request)
    }
}

impl fmt::Debug for AdmissionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionHook").finish_non_exhaustive()
    }
}

/// Two hooks are equal when one is a clone of the other.
impl PartialEq for AdmissionHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AdmissionHook {}

/// The credentials of an `Authorization` header of scheme `Bearer`, in any case.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim_matches(' '))
}

/// Whether `given` equals `secret`, in a time that depends only on the length of `secret`:
/// every byte of `secret` is compared, whatever `given` holds.
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let mut equal = given.len().ct_eq(&secret.len());
    for (i, byte) in secret.iter().enumerate() {
        equal &= given.get(i).unwrap_or(&0).ct_eq(byte);
    }
    equal.into()
}

/// The status line and body of a refusal: a status the hook may give, a reason that cannot break
/// the response.
pub(super) fn refusal_response(status: u16, reason: &str) -> String {
    let status = if (400..600).contains(&status) { status } else { 403 };
    let mut body: String = reason.chars().filter(|c| !c.is_control()).collect();
    let mut end = body.len().min(256);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body.truncate(end);
    format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        phrase(status),
        body.len()
    )
}

fn phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(path: &'a str, headers: &'a [(String, String)]) -> UpgradeRequest<'a> {
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        UpgradeRequest { path, headers, peer, client: peer.ip() }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_bearer_token_is_taken_from_the_header_or_the_query() {
        let hook = AdmissionHook::bearer_token("s3cret");
        let none = headers(&[]);
        assert_eq!(hook.decide(&request("/?token=s3cret", &none)), Admission::Accept);
        assert_eq!(hook.decide(&request("/x?a=1&token=s3cret&b", &none)), Admission::Accept);
        let bearer = headers(&[("Authorization", "Bearer s3cret")]);
        assert_eq!(hook.decide(&request("/", &bearer)), Admission::Accept);
        for (path, given) in
            [("/?token=s3cre", &none), ("/?token=", &none), ("/", &none), ("/?tok=s3cret", &none)]
        {
            assert!(
                matches!(hook.decide(&request(path, given)), Admission::Refuse { status: 401, .. }),
                "{path}"
            );
        }
        let wrong = headers(&[("authorization", "Bearer nope")]);
        assert!(matches!(hook.decide(&request("/", &wrong)), Admission::Refuse { status: 401, .. }));
    }

    #[test]
    fn the_scheme_is_matched_in_any_case() {
        // RFC 9110 §11.1: the authentication scheme is case-insensitive.
        let hook = AdmissionHook::bearer_token("s3cret");
        for value in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret", "bEaReR s3cret"] {
            let given = headers(&[("Authorization", value)]);
            assert_eq!(hook.decide(&request("/", &given)), Admission::Accept, "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer s3cre", "Bearer s3crett"] {
            let given = headers(&[("Authorization", value)]);
            assert!(
                matches!(hook.decide(&request("/", &given)), Admission::Refuse { status: 401, .. }),
                "{value}"
            );
        }
    }

    #[test]
    fn an_empty_token_lets_nobody_in() {
        let hook = AdmissionHook::bearer_token("");
        let empty_header = headers(&[("Authorization", "Bearer ")]);
        let none = headers(&[]);
        for (path, given) in [("/?token=", &none), ("/?token", &none), ("/", &empty_header), ("/", &none)] {
            assert!(
                matches!(hook.decide(&request(path, given)), Admission::Refuse { status: 401, .. }),
                "{path} {given:?}"
            );
        }
    }

    #[test]
    fn the_comparison_is_exact_for_every_length() {
        let secret = b"0123456789abcdef";
        assert!(constant_time_eq(secret, secret));
        for len in 0..secret.len() + 3 {
            let mut given = secret.repeat(2);
            given.truncate(len);
            assert_eq!(constant_time_eq(&given, secret), len == secret.len(), "{len}");
        }
        // A given token padded with zero bytes does not match a shorter secret.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        let mut flipped = *secret;
        flipped[15] ^= 1;
        assert!(!constant_time_eq(&flipped, secret));
    }

    #[test]
    fn origins_outside_the_list_are_refused_and_requests_without_one_pass() {
        let hook = AdmissionHook::allow_origins(["https://app.example.org"]);
        let ours = headers(&[("Origin", "https://APP.example.org")]);
        let theirs = headers(&[("origin", "https://evil.example")]);
        assert_eq!(hook.decide(&request("/", &ours)), Admission::Accept);
        assert_eq!(hook.decide(&request("/", &headers(&[]))), Admission::Accept);
        assert_eq!(hook.decide(&request("/", &theirs)), Admission::refuse(403, "origin not allowed"));
    }

    #[test]
    fn refusals_cannot_break_the_response() {
        let response = refusal_response(200, "ok\r\nSet-Cookie: x");
        assert!(response.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nokSet-Cookie: x"), "{response}");
        assert!(refusal_response(401, &"é".repeat(200)).ends_with(&"é".repeat(128)));
    }
}
