//! `ilp-bench http`: one hop over an ILP-over-HTTP link (HTTP/1.1, and HTTP/2 with prior
//! knowledge) against the same hop over BTP, in one run. sender —BTP→ A —(BTP | HTTP)→ B —BTP→ fulfiller; CPU per packet is A's and B's
//! together divided by the two nodes; `connections` is how many connections A opened to B
//! over HTTP (`ilp_http_connections_opened_total`; a BTP link is one connection).

use std::path::Path;

use ilp_connector::testkit::{Fulfiller, Mode};

use super::load::{fetch_metrics, metric};
use super::{free_port, measure, start_connector, Row, Timing};

/// One row and the HTTP connections A opened during it.
pub struct HttpRow {
    pub row: Row,
    pub connections: f64,
}

pub fn run(bin: &Path, timing: &Timing, concurrency: &[usize]) -> Result<Vec<HttpRow>, String> {
    let bin = bin.to_path_buf();
    let mut rows = Vec::new();
    for &c in concurrency {
        for mode in ["btp", "http", "h2c"] {
            let http = mode != "btp";
            let fulfiller = Fulfiller::start("b", "secret-r", Mode::Fulfill);
            let b_http = free_port()?;
            let b_yaml = format!(
                "nodeId: b\nilpAddress: test.b\nbtpServerPort: 0\nhttpServerPort: {b_http}\nshards: 1\nlogLevel: warn\nmaxInFlightPerShard: 1000000\npeers:\n  - {{id: a, relation: peer, authToken: secret-ab}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-r}}\n",
                fulfiller.url()
            );
            let (b, b_port) = start_connector(&bin, "http-b", b_yaml)?;
            let url = match http {
                true => format!("http://127.0.0.1:{b_http}/"),
                false => format!("ws://127.0.0.1:{b_port}"),
            };
            let a_admin = free_port()?;
            let a_yaml = format!(
                "nodeId: a\nilpAddress: test.a\nbtpServerPort: 0\nhealthCheckPort: {a_admin}\nshards: 1\nlogLevel: warn\nmaxInFlightPerShard: 1000000\nreadyTimeoutMs: 200\npeers:\n  - {{id: sender, relation: child, authToken: bench-token}}\n  - {{id: b, relation: peer, url: \"{url}\", authToken: secret-ab, http2: {}}}\nroutes:\n  - {{prefix: test.b, nextHop: b}}\n",
                mode == "h2c"
            );
            let (a, a_port) = start_connector(&bin, "http-a", a_yaml)?;
            let label = match mode {
                "btp" => "btp-link",
                "http" => "http-link",
                _ => "h2c-link",
            };
            eprintln!("{label}, concurrency {c}");
            let spec = timing.load(
                format!("ws://127.0.0.1:{a_port}"),
                "sender".into(),
                "bench-token".into(),
                "test.b.receiver.bench".into(),
                c,
                1,
            );
            let row = measure(label, 2, 1, spec, &[a.0.id(), b.0.id()], timing.sender_core)?;
            let connections = match http {
                true => metric(
                    &fetch_metrics(a_admin)?,
                    "ilp_http_connections_opened_total ",
                ),
                false => 1.0,
            };
            rows.push(HttpRow { row, connections });
        }
    }
    Ok(rows)
}
