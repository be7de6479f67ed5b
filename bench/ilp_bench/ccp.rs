//! `ilp-bench ccp`: how long a node takes to learn `routes` routes from one peer by CCP, and
//! what they cost in memory. The bench dials the node as its peer `x` and sends route updates
//! (as many routes per update as fit in ~30 KB, epochs in order) as fast as the node fulfils
//! them; the clock stops when the node's published table holds them all (`ilp_routes_learned`
//! in `/metrics`, polled every 5 ms), and the node's RSS is read before and after.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ilp_connector::codec::ccp::{Route, RouteUpdate, ROUTE_UPDATE_DESTINATION};
use ilp_connector::codec::ildcp::PEER_PROTOCOL_CONDITION;
use ilp_connector::codec::{Packet, PrepareFields, Timestamp};
use ilp_connector::testkit::SenderLink;

use super::load::{fetch_metrics, metric};
use super::{free_port, procstat, start_connector};

pub fn run(bin: &Path, routes: usize) -> Result<(), String> {
    let admin_port = free_port()?;
    let yaml = format!(
        "nodeId: n\nilpAddress: test.n\nbtpServerPort: 0\nhealthCheckPort: {admin_port}\nlogLevel: warn\npeers:\n  - {{id: x, relation: peer, authToken: secret-x}}\n"
    );
    let (proc, port) = start_connector(&bin.to_path_buf(), "ccp-n", yaml)?;
    let pid = proc.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = procstat::rss_kib(pid).ok_or("no RSS")?;
    let started = Instant::now();
    let updates = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { send_routes(port, routes).await })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())??;
    let sent = started.elapsed();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let m = fetch_metrics(admin_port)?;
        if metric(&m, "ilp_routes_learned ") as usize >= routes {
            break;
        }
        if Instant::now() > until {
            return Err(format!(
                "only {} of {routes} routes learned after 120 s",
                metric(&m, "ilp_routes_learned ")
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let converged = started.elapsed();
    let rss_after = procstat::rss_kib(pid).ok_or("no RSS")?;
    println!(
        "{routes} routes in {updates} updates: sent in {:.0} ms, in the table after {:.0} ms; RSS {:.1} → {:.1} MiB (+{:.0} bytes per route)",
        sent.as_secs_f64() * 1e3,
        converged.as_secs_f64() * 1e3,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / routes as f64
    );
    drop(proc);
    Ok(())
}

/// Sends `routes` routes as updates from epoch 0 on; returns how many updates it took.
async fn send_routes(port: u16, routes: usize) -> Result<usize, String> {
    let url = format!("btp+ws://x:secret-x@127.0.0.1:{port}");
    let s = SenderLink::connect(&url, "x", "secret-x")
        .await
        .map_err(|e| e.to_string())?;
    let prefixes: Vec<String> = (0..routes).map(|i| format!("test.x.r{i}")).collect();
    let (mut next, mut epoch, mut updates) = (0usize, 0u32, 0usize);
    while next < prefixes.len() {
        let mut batch = Vec::new();
        let mut size = 0;
        while next < prefixes.len() && size < 30_000 {
            size += prefixes[next].len() + 48;
            batch.push(Route {
                prefix: &prefixes[next],
                path: vec!["test.x"],
                auth: [0; 32],
                props: Vec::new(),
            });
            next += 1;
        }
        let to = epoch + batch.len() as u32;
        let mut data = BytesMut::new();
        RouteUpdate {
            table_id: [7; 16],
            current_epoch: routes as u32,
            from_epoch: epoch,
            to_epoch: to,
            hold_down_ms: 45_000,
            speaker: "test.x",
            new_routes: batch,
            withdrawn: Vec::new(),
        }
        .encode(&mut data);
        let mut ilp = BytesMut::new();
        PrepareFields {
            amount: 0,
            expires_at: Timestamp::now().add_millis(60_000),
            execution_condition: &PEER_PROTOCOL_CONDITION,
            destination: ROUTE_UPDATE_DESTINATION,
            data: &data,
        }
        .encode(&mut ilp);
        match s.send_raw(&ilp).await.map_err(|e| e.to_string())? {
            Packet::Fulfill(_) => {}
            other => return Err(format!("update {updates} refused: {other:?}")),
        }
        epoch = to;
        updates += 1;
    }
    Ok(updates)
}
