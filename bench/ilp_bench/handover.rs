//! `ilp-bench handover`: what a packet pays when it arrives on one shard and leaves through a
//! link another shard holds. One hop through a 2-shard node to the test fulfiller (which, like
//! the JS reference, offers one link per account), in three runs with the sender's link placed
//! on a chosen shard (see [`Placement`]):
//! - `cross`: one link to the next hop (`links: auto`), sender on the other shard: every
//!   packet is handed over;
//! - `same`: the same node, sender on the shard with the link: none is;
//! - `both`: `links: 2` (a link on each shard), sender where it was for `cross`: none is.
//!
//! Each row also reports the packets the node handed over (`ilp_packets_handed_over_total`),
//! so a run that did not cross shards cannot pass for one that did.

use std::path::Path;
use std::time::{Duration, Instant};

use ilp_connector::testkit::{Fulfiller, Mode};

use super::load::{fetch_metrics, metric, Placement};
use super::{free_port, measure, start_connector, NodeOptions, Proc, Row, Timing};

/// A row and the fraction of its packets the node handed over between shards.
pub struct HandoverRow {
    pub row: Row,
    pub handed_over: f64,
}

/// One hop through a 2-shard node, its admin port and the shard holding its link to the
/// fulfiller.
struct Node {
    proc: Proc,
    btp_port: u16,
    admin_port: u16,
    home: usize,
}

fn start_node(bin: &Path, f: &Fulfiller, links: &str, opts: NodeOptions) -> Result<Node, String> {
    let admin_port = free_port()?;
    let yaml = format!(
        "nodeId: connector-b\nilpAddress: test.b\nbtpServerPort: 0\nhealthCheckPort: {admin_port}\n{}logLevel: warn\nmaxInFlightPerShard: 1000000\npeers:\n  - {{id: sender, relation: child, authToken: bench-token}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r, links: {links}}}\n",
        opts.yaml(2),
        f.url()
    );
    let (proc, btp_port) = start_connector(&bin.to_path_buf(), "b", yaml)?;
    // The home shard: the one whose link to the fulfiller is up first.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = fetch_metrics(admin_port) {
            let per_shard: Vec<f64> = (0..2)
                .map(|s| {
                    metric(
                        &text,
                        &format!("ilp_peer_links{{peer=\"receiver\",shard=\"{s}\"}}"),
                    )
                })
                .collect();
            let want = if links == "auto" { 1.0 } else { 2.0 };
            if per_shard.iter().sum::<f64>() >= want {
                let home = per_shard.iter().position(|n| *n > 0.0).unwrap_or(0);
                return Ok(Node {
                    proc,
                    btp_port,
                    admin_port,
                    home,
                });
            }
        }
        if Instant::now() > until {
            return Err("the node's links to the fulfiller never came up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (handed over, fulfilled) as counted by the node so far.
fn counters(admin_port: u16) -> Result<(f64, f64), String> {
    let text = fetch_metrics(admin_port)?;
    Ok((
        metric(&text, "ilp_packets_handed_over_total "),
        metric(&text, "ilp_packets_total{outcome=\"fulfilled\",code=\"\"} "),
    ))
}

fn run_one(
    label: &str,
    node: &Node,
    shard: usize,
    timing: &Timing,
    concurrency: usize,
) -> Result<HandoverRow, String> {
    let mut spec = timing.load(
        format!("ws://127.0.0.1:{}", node.btp_port),
        "sender".into(),
        "bench-token".into(),
        "test.b.receiver.bench".into(),
        concurrency,
        1,
    );
    spec.place = Some(Placement {
        admin_port: node.admin_port,
        peer: "sender".into(),
        shard,
    });
    eprintln!("handover: {label}, sender on shard {shard}, concurrency {concurrency}");
    let before = counters(node.admin_port)?;
    let row = measure(label, 1, 2, spec, &[node.proc.0.id()], timing.sender_core)?;
    let after = counters(node.admin_port)?;
    // Over the whole run (probe and warm-up included): the node's own counts.
    let (handed, fulfilled) = (after.0 - before.0, after.1 - before.1);
    Ok(HandoverRow {
        handed_over: if fulfilled > 0.0 {
            handed / fulfilled
        } else {
            0.0
        },
        row,
    })
}

pub fn run(
    bin: &Path,
    timing: &Timing,
    concurrency: usize,
    opts: NodeOptions,
) -> Result<Vec<HandoverRow>, String> {
    let f = Fulfiller::start("connector-b", "secret-r", Mode::Fulfill);
    let mut rows = Vec::new();
    let other = {
        let node = start_node(bin, &f, "auto", opts)?;
        let other = 1 - node.home;
        rows.push(run_one("cross", &node, other, timing, concurrency)?);
        rows.push(run_one("same", &node, node.home, timing, concurrency)?);
        other
    };
    let node = start_node(bin, &f, "2", opts)?;
    rows.push(run_one("both", &node, other, timing, concurrency)?);
    Ok(rows)
}
