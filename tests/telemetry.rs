//! What the core reports through the `metrics` facade (feature `metrics`), recorded by
//! metrics-util's debugging recorder while the harness steps virtual time. Its `tracing` events
//! are in `tests/logs.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{announce, key, Harness};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use peer_signal::{
    ClusterConfig, ClusterIn, Codec, ConnId, NodeInfo, PeerInfo, PeerMessage, SignalConfig, SignalIn,
    SignalServer, WSSignalMessageFromNode,
};

/// Every metric the recorder holds, as `name` or `name{key=value}` → value; histograms as
/// their samples.
fn snapshot(recorder: &DebuggingRecorder) -> BTreeMap<String, DebugValue> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = if labels.is_empty() {
                key.name().to_string()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            (name, value)
        })
        .collect()
}

fn counter(metrics: &BTreeMap<String, DebugValue>, name: &str) -> u64 {
    match metrics.get(name) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("{name}: {other:?} in {:?}", metrics.keys()),
    }
}

fn gauge(metrics: &BTreeMap<String, DebugValue>, name: &str) -> f64 {
    match metrics.get(name) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("{name}: {other:?} in {:?}", metrics.keys()),
    }
}

fn setup(from: &common::Joined, to: &common::Joined) -> WSSignalMessageFromNode {
    WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init: from.id,
        id_follow: to.id,
        message: PeerMessage::Init,
    })
}

#[test]
fn the_core_counts_what_it_does_and_agrees_with_its_stats() {
    let recorder = DebuggingRecorder::new();
    let (stats, metrics) = metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        // A announces 250 ms after its challenge, B at once.
        let (conn, challenge) = h.open(Codec::Json);
        h.now += Duration::from_millis(250);
        h.send(conn, Codec::Json, &announce(&key(1), challenge));
        let a = common::Joined { conn, id: key(1).verifying_key().to_bytes().into(), codec: Codec::Json };
        let b = h.join(2);
        h.from(a, &setup(&a, &b));
        h.frame(b.conn, "not json");
        // One that never announces, and A leaves.
        h.open(Codec::Json);
        h.input(SignalIn::Closed { conn: a.conn });
        (h.server.stats(), snapshot(&recorder))
    });

    assert_eq!(counter(&metrics, "peer_signal_joins_total"), 2);
    assert_eq!(counter(&metrics, "peer_signal_leaves_total"), 1);
    assert_eq!(counter(&metrics, "peer_signal_relays_total"), stats.relays);
    assert_eq!(counter(&metrics, "peer_signal_received_frames_total"), stats.frames_in);
    assert_eq!(counter(&metrics, "peer_signal_received_bytes_total"), stats.bytes_in);
    assert_eq!(counter(&metrics, "peer_signal_sent_frames_total"), stats.frames_out);
    assert_eq!(counter(&metrics, "peer_signal_sent_bytes_total"), stats.bytes_out);
    assert_eq!(counter(&metrics, "peer_signal_errors_total{reason=malformed}"), 1);
    assert_eq!(counter(&metrics, "peer_signal_evictions_total"), 0);
    assert_eq!(counter(&metrics, "peer_signal_dropped_events_total"), 0);
    assert_eq!(gauge(&metrics, "peer_signal_connections"), 2.0);
    assert_eq!(gauge(&metrics, "peer_signal_nodes"), 1.0);
    assert_eq!(gauge(&metrics, "peer_signal_pending_handshakes"), 1.0);
    // The latency is in the server's time: exactly what the harness stepped.
    match metrics.get("peer_signal_announce_duration_seconds") {
        Some(DebugValue::Histogram(samples)) => {
            let mut samples: Vec<f64> = samples.iter().map(|s| s.into_inner()).collect();
            samples.sort_by(f64::total_cmp);
            assert_eq!(samples, [0.0, 0.25]);
        }
        other => panic!("{other:?}"),
    }
    // A server without a cluster registers no cluster metrics.
    assert!(!metrics.keys().any(|name| name.starts_with("peer_signal_cluster_")), "{:?}", metrics.keys());
}

#[test]
fn evictions_and_errors_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let metrics = metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        h.join(1);
        h.open(Codec::Json);
        h.advance(SignalConfig::default().ttl + Duration::from_secs(1));
        snapshot(&recorder)
    });
    assert_eq!(counter(&metrics, "peer_signal_errors_total{reason=handshake_timeout}"), 1);
    assert_eq!(counter(&metrics, "peer_signal_errors_total{reason=idle_timeout}"), 1);
    assert_eq!(counter(&metrics, "peer_signal_evictions_total"), 1);
    assert_eq!(counter(&metrics, "peer_signal_leaves_total"), 1);
    assert_eq!(gauge(&metrics, "peer_signal_connections"), 0.0);
}

#[test]
fn two_servers_in_one_process_add_up_in_the_gauges() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let (mut one, mut two) = (Harness::new(), Harness::new());
        one.join(1);
        two.join(1);
        two.join(2);
        let metrics = snapshot(&recorder);
        assert_eq!(gauge(&metrics, "peer_signal_nodes"), 3.0);
        assert_eq!(gauge(&metrics, "peer_signal_connections"), 3.0);
        // A server that stops takes its share back. (A snapshot of the debugging recorder
        // resets what it read: this one holds the change since the first.)
        two.input(SignalIn::Stop);
        let metrics = snapshot(&recorder);
        assert_eq!(gauge(&metrics, "peer_signal_nodes"), -2.0);
        assert_eq!(gauge(&metrics, "peer_signal_connections"), -2.0);
    });
}

#[test]
fn a_clustered_server_counts_what_crosses_the_bus() {
    let recorder = DebuggingRecorder::new();
    let metrics = metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        let config = h.server.config().clone();
        h.server = SignalServer::with_cluster(config, ClusterConfig::default()).expect("a valid config");
        h.input(SignalIn::Cluster(Box::new(ClusterIn::Up)));
        let a = h.join(1);
        let remote = NodeInfo::new("remote", "test", key(9).verifying_key().to_bytes());
        let far = common::Joined { conn: ConnId::new(999), id: remote.id(), codec: Codec::Json };
        h.input(SignalIn::Cluster(Box::new(ClusterIn::Sample { nodes: vec![remote], total: 5 })));
        h.from(a, &setup(&a, &far));
        snapshot(&recorder)
    });
    assert_eq!(counter(&metrics, "peer_signal_cluster_relays_out_total"), 1);
    assert_eq!(counter(&metrics, "peer_signal_cluster_relays_in_total"), 0);
    assert_eq!(counter(&metrics, "peer_signal_cluster_rejected_total{stage=server}"), 0);
    assert_eq!(gauge(&metrics, "peer_signal_cluster_pool"), 1.0);
    assert_eq!(gauge(&metrics, "peer_signal_cluster_remote_nodes"), 5.0);
    assert_eq!(
        counter(&metrics, "peer_signal_relays_total"),
        0,
        "a relay to another instance is not a local one"
    );
}
