//! A node that hosts signalling for 1,000 neighbours, measured by a counting global allocator:
//! what each attached link costs, that all of it is given back when the links end, and that
//! 1,000 neighbours flooding at once queue no more than the host's byte budget. One test
//! function, so that nothing else allocates while it measures.

mod counting;
mod nodes;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use counting::{Counting, LIVE, PEAK};
use nodes::{config, key};
use peer_signal::{
    Codec, Driver, LinkConfig, LinkError, LinkInbound, LinkOutbound, LinkTransport, NodeInfo, SignalClient,
    SignalServer,
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NEIGHBOURS: u32 = 1_000;
const BUDGET: usize = 4 * 1024 * 1024;
const ROUNDS: usize = 4;

fn live() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Signs a neighbour in by hand over its link: reads what the host sends, answers it.
async fn sign_in(client: &mut SignalClient, to_host: &mut LinkInbound, from_host: &LinkOutbound) {
    while !client.is_connected() {
        let frame = from_host.recv().await.expect("the host keeps the link open");
        client.handle_frame(&frame).expect("a valid frame");
        while let Some(frame) = client.poll_transmit() {
            to_host.deliver(frame).expect("room on the link");
        }
    }
    // The list that follows the acceptance.
    while client.poll_event().is_some() {}
    let _ = from_host.recv().await;
}

#[test]
fn a_node_hosting_1000_neighbours_keeps_memory_bounded_and_gives_it_all_back() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let links =
            LinkConfig::default().with_max_links(2 * NEIGHBOURS as usize).with_max_queued_bytes_total(BUDGET);
        let config = config().with_max_list_len(8);
        let (transport, host) = LinkTransport::new(links).unwrap();
        let (driver, handle, _events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
        let server = tokio::spawn(driver.run(futures::stream::pending()));

        let mut after = Vec::new();
        for round in 0..ROUNDS {
            // Keys, infos and clients are made before counting starts.
            let mut clients: Vec<SignalClient> = (0..NEIGHBOURS)
                .map(|i| {
                    let info = NodeInfo::new(format!("node-{i}"), "test", key(i).verifying_key().to_bytes());
                    SignalClient::new(key(i), info, Codec::Json)
                })
                .collect();
            let baseline = live();
            let mut ends = Vec::new();
            for client in &mut clients {
                let (mut to_host, from_host) = host.attach(Codec::Json).unwrap();
                sign_in(client, &mut to_host, &from_host).await;
                ends.push((to_host, from_host));
            }
            assert_eq!(handle.nodes().await.unwrap().len(), NEIGHBOURS as usize);
            let per_link = (live() - baseline) / NEIGHBOURS as usize;
            println!("round {round}: {per_link} bytes per signed-in link (host and client state)");
            assert!(per_link < 16 * 1024, "{per_link} bytes per link");

            // Every neighbour floods at once, without the host reading: the budget holds.
            PEAK.store(live(), Ordering::SeqCst);
            let before_flood = live();
            let frame = Bytes::from(vec![b' '; 1024]);
            let mut flooded = 0;
            for (to_host, _) in &mut ends {
                loop {
                    match to_host.deliver(frame.clone()) {
                        Ok(()) => {}
                        Err(LinkError::Flooded) => break flooded += 1,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
            assert_eq!(flooded, NEIGHBOURS);
            assert!(host.queued_bytes() <= BUDGET, "{} bytes queued", host.queued_bytes());
            // The frames share one buffer; what grows is the queues' slots, far below the budget.
            let grown = PEAK.load(Ordering::SeqCst) - before_flood;
            println!(
                "round {round}: 1,000 neighbours flooding: {} bytes queued, {grown} bytes allocated",
                host.queued_bytes()
            );
            assert!(grown < BUDGET, "{grown} bytes allocated while flooding");

            // The neighbours leave; the host lets go of every link and every queued byte.
            drop((ends, clients));
            while host.attached() > 0 {
                tokio::task::yield_now().await;
            }
            assert_eq!(host.queued_bytes(), 0);
            assert!(handle.nodes().await.unwrap().is_empty());
            after.push(live());
        }
        // The first round leaves capacity behind (the maps', and the deadline heap's, whose stale
        // entries are swept lazily); later rounds reuse it and do not add up.
        println!("live bytes after each round: {after:?}");
        let first = after[0];
        let most = after.iter().copied().max().unwrap_or(first);
        assert!(most - first < 32 * 1024, "memory kept grows with rounds of 1,000 links: {after:?}");
        handle.stop();
        server.await.unwrap();
    });
}
