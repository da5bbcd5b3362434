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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_every_client_1001_and_waits_for_their_closing_handshakes() {
    let (mut child, url, _log) = spawn_server(&["--drain-secs", "10"]).await;
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
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end(), expected, "{flags:?}");
    }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("http answer", stream.read_to_end(&mut response)).await.unwrap();
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_string()
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
    let line = log_line(&mut log, "metrics on http://").await;
    let metrics = line.split("http://").nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string();
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
