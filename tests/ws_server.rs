//! The `ws_server` example as an operator runs it: a process on a loopback port, stopped with
//! SIGTERM. `cargo test` builds the examples before it runs any test.

mod nodes;
mod ws;

use std::process::Stdio;

use nodes::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use ws::*;

/// A `ws_server` process on an ephemeral loopback port, its URL once it listens, and the lines
/// it logs from then on (up to a thousand waiting; later ones are dropped).
async fn spawn_server(extra: &[&str]) -> (Child, String, tokio::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(ws_server_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(if extra.contains(&"--metrics") { &[][..] } else { &["--metrics", "off"][..] })
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start ws_server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The server says where it listens; that line is the signal that it is ready.
    let url = within("ws_server listening", async {
        while let Some(line) = lines.next_line().await.expect("read the server's log") {
            let line = message(&line);
            if let Some(at) = line.find("signalling on ") {
                return line[at + "signalling on ".len()..].trim().to_string();
            }
        }
        panic!("ws_server exited before it listened");
    })
    .await;
    // Keep reading its log, so that it never blocks on a full pipe.
    let (log, logged) = tokio::sync::mpsc::channel(1000);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.try_send(line);
        }
    });
    (child, format!("{url}/"), logged)
}

/// A log line's message: the line itself as text, its `message` field as JSON.
fn message(line: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(json) => json.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string(),
        Err(_) => line.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_every_client_1001_and_waits_for_their_closing_handshakes() {
    // 200 clients from 127.0.0.1 at once: more than one source may open in a second.
    let (mut child, url, _log) = spawn_server(&["--drain-secs", "10", "--accepts-per-sec-per-ip", "0"]).await;
    let clients = raw_clients(&url, 200).await;
    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let ends = answer_closes(clients).await;
    assert_eq!(ends.len(), 200);
    assert!(ends.iter().all(|end| *end == (1001, StreamEnd::Eof)), "{ends:?}");
    let status = within("ws_server exits", child.wait()).await.expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_bad_flag_is_one_sentence_naming_it_and_exit_status_2() {
    for (flags, expected) in [
        (
            &["--ping-interval-secs", "0"][..],
            "ws_server: invalid configuration: --ping-interval-secs must be more than zero",
        ),
        (&["--ttl-secs", "0"][..], "ws_server: invalid configuration: --ttl-secs must be more than zero"),
        (
            &["--byte-burst", "1000"][..],
            "ws_server: invalid configuration: --byte-burst (1000) must be at least --max-frame-size (65536)",
        ),
        (
            &["--write-timeout-secs", "0"][..],
            "ws_server: invalid configuration: --write-timeout-secs must be more than zero",
        ),
        (
            &["--turn-uri", "turn:127.0.0.1:3478", "--turn-secret-file", "/nonexistent/turn-secret"][..],
            "ws_server: cannot read the TURN secret from /nonexistent/turn-secret: No such file or directory \
             (os error 2); check --turn-secret-file",
        ),
        (
            // 100,000 nodes of at most 546 bytes in one list: every node that asks would be
            // closed as a slow reader.
            &["--max-list-len", "100000", "--send-backlog-bytes", "1048576"][..],
            "ws_server: invalid configuration: --send-backlog-bytes (1048576) must be at least the longest \
             list reply of max_list_len nodes (54600019)",
        ),
    ] {
        let output = within(
            "ws_server refuses",
            Command::new(ws_server_binary())
                .args(["--listen", "127.0.0.1:0", "--metrics", "off"])
                .args(flags)
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .expect("run ws_server");
        let status = if expected.contains("cannot read") { 1 } else { 2 };
        assert_eq!(output.status.code(), Some(status), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end(), expected, "{flags:?}");
    }
}

#[tokio::test]
async fn turn_settings_the_server_cannot_use_are_one_sentence_naming_the_flag() {
    let secret = TempFile::new("turn-secret-flags", "north-sea\n");
    let empty = TempFile::new("turn-secret-empty", "\n");
    let file = secret.0.display().to_string();
    let empty_file = empty.0.display().to_string();
    for (flags, expected) in [
        (
            vec!["--turn-uri", "turn:127.0.0.1:3478", "--turn-secret-file", &file, "--turn-ttl-secs", "60"],
            "ws_server: invalid configuration: --turn-ttl-secs (60) must be at least 4 × --ttl-secs (480)".to_string(),
        ),
        (
            vec!["--turn-uri", "https://example.org", "--turn-secret-file", &file],
            "ws_server: invalid configuration: --turn-uri: \"https://example.org\" is not a turn: or turns: URL"
                .to_string(),
        ),
        (
            vec!["--turn-uri", "turn:127.0.0.1:3478", "--turn-secret-file", &empty_file],
            format!(
                "ws_server: invalid configuration: the TURN secret file {empty_file} is empty; put the secret on its \
                 first line"
            ),
        ),
    ] {
        let output = within(
            "ws_server refuses",
            Command::new(ws_server_binary())
                .args(["--listen", "127.0.0.1:0", "--metrics", "off"])
                .args(&flags)
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .expect("run ws_server");
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end(), expected, "{flags:?}");
        assert!(!stderr.contains("north-sea"), "the secret is never printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_turn_credentials_from_the_secret_file_and_new_ones_after_sighup() {
    use peer_signal::{AsyncClient, ClientEvent, Codec, NodeInfo, TurnSecret, WsClient};

    let secret = TempFile::new("turn-secret", "north-sea\n");
    let file = secret.0.display().to_string();
    let (child, url, mut log) = spawn_server(&[
        "--turn-uri",
        "turn:127.0.0.1:3478",
        "--turn-stun-uri",
        "stun:127.0.0.1:3478",
        "--turn-secret-file",
        &file,
    ])
    .await;
    let sign_in = |seed: u8| {
        let url = url.clone();
        async move {
            let key = peer_signal::ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            let info = NodeInfo::new("turn-node", "test", key.verifying_key().to_bytes());
            let conn = WsClient::connect(&url, Codec::Json).await.expect("connect");
            let mut node = within("sign-in", AsyncClient::connect(conn, key, info)).await.expect("sign-in");
            within("credentials", async {
                while node.ice_servers().is_none() {
                    node.next_event().await.expect("open");
                }
            })
            .await;
            node
        }
    };
    let node = sign_in(1).await;
    let issued = node.ice_servers().unwrap().clone();
    let turn = &issued.servers[0];
    assert_eq!(turn.urls, ["turn:127.0.0.1:3478"]);
    assert_eq!(turn.username, format!("{}:{}", issued.expires, node.id()));
    assert_eq!(turn.credential, TurnSecret::new("north-sea").password(&turn.username));
    assert_eq!(issued.servers[1].urls, ["stun:127.0.0.1:3478"]);

    std::fs::write(&secret.0, "baltic\n").unwrap();
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    let mut lines = Vec::new();
    within("the reload", async {
        while let Some(line) = log.recv().await {
            let done = line.contains("TURN secret reloaded");
            lines.push(line);
            if done {
                return;
            }
        }
        panic!("ws_server exited");
    })
    .await;
    let mut node = node;
    node.request_ice_servers().await.unwrap();
    let renewed = within("new credentials", async {
        loop {
            if let ClientEvent::IceServers(servers) = node.next_event().await.expect("open") {
                return servers;
            }
        }
    })
    .await;
    let turn = &renewed.servers[0];
    assert_eq!(turn.credential, TurnSecret::new("baltic").password(&turn.username));
    assert!(lines.iter().all(|line| !line.contains("north-sea") && !line.contains("baltic")), "{lines:?}");
}

#[tokio::test]
async fn a_port_in_use_is_a_sentence_with_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = within(
        "ws_server fails",
        Command::new(ws_server_binary())
            .args(["--listen", &addr, "--metrics", "off"])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("run ws_server");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("ws_server: cannot listen for nodes on {addr}: address in use; pass --listen ADDR")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_certificate_that_sighup_reloads_without_dropping_connections() {
    use peer_signal::rustls::pki_types::CertificateDer;
    use peer_signal::{Codec, TlsRoots, WsClient};

    let make = || rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (old, new) = (make(), make());
    let chain = TempFile::new("chain.pem", &old.cert.pem());
    let key = TempFile::new("key.pem", &old.key_pair.serialize_pem());
    let (chain_arg, key_arg) = (chain.0.display().to_string(), key.0.display().to_string());
    let (child, url, mut log) = spawn_server(&["--tls-cert", &chain_arg, "--tls-key", &key_arg]).await;
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let url = url.replace("127.0.0.1", "localhost");
    let trust =
        |cert: &rcgen::CertifiedKey| TlsRoots::Custom(vec![CertificateDer::from(cert.cert.der().to_vec())]);

    let mut before =
        nodes::within("connect", WsClient::connect_trusting(&url, Codec::Json, &trust(&old))).await.unwrap();
    let _ = peer_signal::ClientConnection::recv(&mut before).await.expect("the challenge");

    std::fs::write(&chain.0, new.cert.pem()).unwrap();
    std::fs::write(&key.0, new.key_pair.serialize_pem()).unwrap();
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    // The server says when it has reloaded; from then on new connections get the new one.
    within("the reload", async {
        while let Some(line) = log.recv().await {
            if line.contains("certificate reloaded") {
                return;
            }
        }
        panic!("ws_server exited");
    })
    .await;
    WsClient::connect_trusting(&url, Codec::Json, &trust(&new)).await.expect("the new certificate");
    assert!(WsClient::connect_trusting(&url, Codec::Json, &trust(&old)).await.is_err());
    // The connection opened before the reload is still served.
    peer_signal::ClientConnection::send(&mut before, bytes::Bytes::from_static(b"\"ListIDsRequest\""))
        .await
        .unwrap();
    let reply =
        nodes::within("an answer", peer_signal::ClientConnection::recv(&mut before)).await.expect("open");
    assert!(reply.starts_with(b"{\"Error\":\"not authenticated"), "{}", String::from_utf8_lossy(&reply));
}

#[tokio::test]
async fn every_flag_has_an_environment_variable_and_it_is_read() {
    let help = within("--help", Command::new(ws_server_binary()).arg("--help").output()).await.unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    // Each option's entry runs from its `--flag` line to the next one.
    let entries: Vec<&str> = help.split("\n      --").skip(1).collect();
    assert!(entries.len() > 30, "{help}");
    for entry in entries {
        let flag = entry.split([' ', '\n']).next().unwrap_or_default();
        if flag == "help" || flag == "version" {
            continue;
        }
        let expected = format!("[env: PEER_SIGNAL_{}=", flag.replace('-', "_").to_uppercase());
        let folded = entry.split_whitespace().collect::<Vec<_>>().join(" ");
        let alias = flag == "trusted-proxy" && folded.contains("[env: PEER_SIGNAL_TRUSTED_PROXIES=");
        assert!(folded.contains(&expected) || alias, "--{flag} has no {expected}]");
    }
    let output = within(
        "ws_server refuses",
        Command::new(ws_server_binary())
            .args(["--listen", "127.0.0.1:0", "--metrics", "off"])
            .env("PEER_SIGNAL_PING_INTERVAL_SECS", "0")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ping-interval-secs must be more than zero"));
}

/// `GET path` on the metrics address; the status line.
async fn http_status(addr: &str, path: &str) -> String {
    http_get(addr, path).await.0
}

/// `GET path` on the metrics address; the status line and the body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("http answer", stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// The address of the metrics listener, from the server's log.
async fn metrics_address(log: &mut tokio::sync::mpsc::Receiver<String>) -> String {
    let line = message(&log_line(log, "metrics on http://").await);
    line.split("http://").nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string()
}

/// Reads the server's log up to a line containing `what`; returns that line.
async fn log_line(log: &mut tokio::sync::mpsc::Receiver<String>, what: &str) -> String {
    within(what, async {
        while let Some(line) = log.recv().await {
            if line.contains(what) {
                return line;
            }
        }
        panic!("ws_server exited before logging {what}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining_and_health_stays_200() {
    // A long linger, and a client that never answers the close, keep the drain going.
    let (mut child, url, mut log) =
        spawn_server(&["--metrics", "127.0.0.1:0", "--close-linger-ms", "5000", "--drain-secs", "10"]).await;
    let metrics = metrics_address(&mut log).await;
    assert_eq!(http_status(&metrics, "/ready").await, "HTTP/1.1 200 OK");
    let mut mute = raw_clients(&url, 1).await;
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    log_line(&mut log, "SIGTERM").await;
    assert_eq!(http_status(&metrics, "/ready").await, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(http_status(&metrics, "/health").await, "HTTP/1.1 200 OK");
    // Answering the close ends the drain, and the process.
    let code = mute[0].close_frame().await;
    mute[0].send_close(code).await;
    assert!(within("exit", child.wait()).await.unwrap().success());
}

/// A scrape, as `name{labels}` → value, with the `# TYPE` of each family.
struct Scrape {
    samples: std::collections::BTreeMap<String, f64>,
    types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let (mut samples, mut types) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
        for line in text.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                let (name, kind) = family.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.is_empty() && !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    value => value.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
                };
                samples.insert(series.to_string(), value);
            }
        }
        Self { samples, types }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape: {:?}", self.samples.keys()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_prometheus_conventions_and_count_what_the_nodes_did() {
    use peer_signal::Codec;
    // No pushes of joins: every frame the server sends is an answer the test waits for.
    let (_child, url, mut log) = spawn_server(&["--metrics", "127.0.0.1:0", "--list-push-fanout", "0"]).await;
    let metrics = metrics_address(&mut log).await;
    let mut a = join(&url, 1, Codec::Json).await;
    let mut b = join(&url, 2, Codec::Bincode).await;
    // Init, Offer, Answer and two ICE candidates: five relays, each awaited by its receiver.
    exchange(&mut a, &mut b).await;

    let (status, body) = http_get(&metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let scrape = Scrape::parse(&body);
    for (name, kind) in &scrape.types {
        assert!(name.starts_with("peer_signal_") || name.starts_with("process_"), "{name}");
        assert!(!name.contains("_in_total") || name.starts_with("peer_signal_cluster_"), "{name}");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "histogram {name}"),
            "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
            other => panic!("{name} is a {other}: a histogram without buckets renders as a summary"),
        }
    }
    assert_eq!(
        scrape.get(&format!("peer_signal_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        1.0
    );

    // Two announces, five relays; each node got its challenge, SystemConfig and first list.
    assert_eq!(scrape.get("peer_signal_joins_total"), 2.0);
    assert_eq!(scrape.get("peer_signal_relays_total"), 5.0);
    assert_eq!(scrape.get("peer_signal_received_frames_total"), 2.0 + 5.0);
    assert_eq!(scrape.get("peer_signal_sent_frames_total"), 2.0 * 3.0 + 5.0);
    assert!(scrape.get("peer_signal_received_bytes_total") > 0.0);
    assert!(scrape.get("peer_signal_sent_bytes_total") > 0.0);
    assert_eq!(scrape.get("peer_signal_connections"), 2.0);
    assert_eq!(scrape.get("peer_signal_nodes"), 2.0);
    assert_eq!(scrape.get("peer_signal_pending_handshakes"), 0.0);
    assert_eq!(scrape.get("peer_signal_leaves_total"), 0.0);
    assert_eq!(scrape.get("peer_signal_ws_accepted_total"), 2.0);
    assert_eq!(scrape.get("peer_signal_ws_connection_tasks"), 2.0);
    assert_eq!(scrape.get("peer_signal_ws_refused_total{reason=\"max_connections_per_ip\"}"), 0.0);

    // The histograms: one announce latency per join, one queue wait per frame written.
    for (histogram, count) in
        [("peer_signal_announce_duration_seconds", 2.0), ("peer_signal_ws_send_queue_seconds", 11.0)]
    {
        assert_eq!(scrape.get(&format!("{histogram}_count")), count, "{histogram}");
        assert_eq!(scrape.get(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), count, "{histogram}");
        let sum = scrape.get(&format!("{histogram}_sum"));
        assert!((0.0..30.0).contains(&sum), "{histogram}_sum {sum}");
        let buckets: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|(series, _)| series.starts_with(&format!("{histogram}_bucket{{")))
            .map(|(_, value)| *value)
            .collect();
        assert!(buckets.len() > 5, "{histogram}: {buckets:?}");
    }
    // Cumulative buckets: each at least the one below it (the map sorts `le` as text, so sort
    // by bound).
    let mut bounds: Vec<(f64, f64)> = scrape
        .samples
        .iter()
        .filter_map(|(series, value)| {
            let le = series.strip_prefix("peer_signal_announce_duration_seconds_bucket{le=\"")?;
            let le = le.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *value))
        })
        .collect();
    bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert!(bounds.windows(2).all(|pair| pair[0].1 <= pair[1].1), "{bounds:?}");

    // The process.
    assert!(scrape.get("process_resident_memory_bytes") > 1e6);
    assert!(scrape.get("process_open_fds") >= 4.0);
    assert!(scrape.get("process_max_fds") > 0.0);
    assert!(scrape.get("process_cpu_seconds_total") >= 0.0);
    assert!(scrape.get("process_threads") >= 1.0);

    // One node leaves: once the server says so, the gauges have followed and the leave counts.
    drop(b);
    log_line(&mut log, "node left").await;
    let scrape = Scrape::parse(&http_get(&metrics, "/metrics").await.1);
    assert_eq!(scrape.get("peer_signal_leaves_total"), 1.0);
    assert_eq!(scrape.get("peer_signal_nodes"), 1.0);
    assert_eq!(scrape.get("peer_signal_connections"), 1.0);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_and_a_refusal_names_the_peer() {
    let (_child, url, mut log) =
        spawn_server(&["--log-format", "json", "--max-connections-per-ip", "1"]).await;
    let addr = host(&url).to_string();
    // The first connection takes the one place of 127.0.0.1 (it stays in the WebSocket
    // handshake); the second is refused at once.
    let _first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let peer = second.local_addr().unwrap().to_string();
    // Every line is one JSON object, up to the refusal's.
    let json = within("the refusal", async {
        while let Some(line) = log.recv().await {
            let json: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if json
                .get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.starts_with("connection refused"))
            {
                return json;
            }
        }
        panic!("ws_server exited before refusing");
    })
    .await;
    let line = json.to_string();
    assert_eq!(json.get("level").and_then(|v| v.as_str()), Some("INFO"), "{line}");
    assert_eq!(json.get("peer").and_then(|v| v.as_str()), Some(peer.as_str()), "{line}");
    assert_eq!(json.get("reason").and_then(|v| v.as_str()), Some("max_connections_per_ip"), "{line}");
    assert!(
        json.get("target").and_then(|v| v.as_str()).is_some_and(|t| t.starts_with("peer_signal")),
        "{line}"
    );
    assert!(json.get("timestamp").is_some(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_cannot_forge_or_colour_a_log_line() {
    use peer_signal::{AsyncClient, Codec, NodeInfo, WsClient};
    let (_child, url, mut log) = spawn_server(&[]).await;
    let key = nodes::key(1);
    let name = "evil\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m\u{202e}";
    let info = NodeInfo::new(name, "test", key.verifying_key().to_bytes());
    let conn = within("connect", WsClient::connect(&url, Codec::Json)).await.expect("connect");
    let _node = within("join", AsyncClient::connect(conn, key, info)).await.expect("join");
    let joined = log_line(&mut log, "node joined").await;
    assert!(
        joined.contains(r#"name="evil\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m\u{202e}""#),
        "{joined}"
    );
    assert!(!joined.contains('\u{1b}') && !joined.contains('\u{202e}'), "{joined}");
    // Nothing the name held became a line of its own.
    while let Ok(line) = log.try_recv() {
        assert!(!line.contains("forged"), "{line}");
    }
}
