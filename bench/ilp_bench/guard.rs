//! `ilp-bench compare BASELINE CURRENT`: the performance regression guard.
//!
//! Both files are `ilp-bench rates` JSON. Absolute figures move with the machine and its
//! noise, so what is guarded is each target's figures *relative to the glommio relay measured
//! in the same run*: CPU per packet at every load, throughput at saturation (c=64) and p50
//! latency at c=1. A ratio worse than the baseline's by more than `tolerance` is a
//! regression (exit status 1). Every row is printed with its absolute figures too.

use std::path::Path;

use super::Row;

/// A row's load, as the table shows it: the offered rate, or closed loop `c=N`.
fn load_of(r: &Row) -> String {
    r.offered_per_s
        .map_or(format!("c={}", r.concurrency), |x| format!("{x:.0}/s"))
}

fn read(path: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not ilp-bench JSON: {e}", path.display()))
}

/// What is guarded for one row, each "higher is worse", relative to the relay's row at the
/// same load in the same file: (name, value).
fn guarded(rows: &[Row], r: &Row) -> Vec<(&'static str, f64)> {
    let Some(relay) = rows
        .iter()
        .find(|x| x.scenario == "relay" && load_of(x) == load_of(r))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (r.cpu_us_per_packet_per_hop, relay.cpu_us_per_packet_per_hop) {
        out.push(("cpu/relay", a / b));
    }
    if r.offered_per_s.is_none() && r.concurrency > 1 {
        out.push((
            "relay/throughput",
            relay.throughput_per_s / r.throughput_per_s,
        ));
    }
    if r.offered_per_s.is_none() && r.concurrency == 1 {
        out.push(("p50/relay", r.p50_us as f64 / relay.p50_us.max(1) as f64));
    }
    out
}

/// Prints the comparison; `Ok(false)` when some guarded ratio regressed.
pub fn run(baseline: &Path, current: &Path, tolerance: f64) -> Result<bool, String> {
    let (old, new) = (read(baseline)?, read(current)?);
    println!(
        "{:<12} {:>9} {:>21} {:>17} {:>15}   guarded ratios (baseline → now)",
        "target", "load", "packets/s", "cpu µs/hop", "p50 µs"
    );
    let mut ok = true;
    for n in &new {
        let Some(o) = old
            .iter()
            .find(|o| o.scenario == n.scenario && load_of(o) == load_of(n))
        else {
            continue;
        };
        let cpu = |r: &Row| {
            r.cpu_us_per_packet_per_hop
                .map_or("-".to_owned(), |c| format!("{c:.2}"))
        };
        let mut line = format!(
            "{:<12} {:>9} {:>10.0} → {:>8.0} {:>7} → {:>7} {:>6} → {:>6}  ",
            n.scenario,
            load_of(n),
            o.throughput_per_s,
            n.throughput_per_s,
            cpu(o),
            cpu(n),
            o.p50_us,
            n.p50_us
        );
        if n.scenario != "relay" {
            for ((name, was), (_, now)) in guarded(&old, o).into_iter().zip(guarded(&new, n)) {
                let worse = now > was * (1.0 + tolerance);
                ok &= !worse;
                let flag = if worse { "  REGRESSED" } else { "" };
                line += &format!(" {name} {was:.2} → {now:.2}{flag};");
            }
        }
        println!("{line}");
    }
    println!(
        "{}",
        if ok {
            format!(
                "no guarded ratio worse by more than {:.0} %",
                tolerance * 100.0
            )
        } else {
            format!(
                "REGRESSION: a guarded ratio is worse by more than {:.0} %",
                tolerance * 100.0
            )
        }
    );
    Ok(ok)
}
