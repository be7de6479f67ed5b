//! `ilp-bench`: the load generator and the standard scenarios.
//!
//! - `ilp-bench scenarios`: runs, side by side in one run, the relay baseline, 0 hops, 1 hop and
//!   3 hops through `ilp-connector` processes, at concurrency 1 and 64, with 1 and 2 shards;
//!   prints a table (with ratios against the relay and the 0-hop figures) and writes JSON.
//! - `ilp-bench load`: one load run against any BTP endpoint (e.g. the JS reference connector),
//!   optionally measuring given process ids.
//! - `ilp-bench fulfiller`: a BTP fulfiller on a port (`sha256(data)` fulfils).
//! - `ilp-bench relay`: the byte-level WebSocket relay used as the baseline.
//! - `ilp-bench handover`: 1 hop through a 2-shard node with the sender's link placed on the
//!   shard with, or without, the next hop's link (see `handover.rs`).
//! - `ilp-bench rates`: the glommio relay, an epoll relay, our 1 hop (and the JS connector) at
//!   fixed offered rates (open loop) and at saturation (see `rates.rs`).
//! - `ilp-bench compare`: the regression guard, two `rates` JSON files (see `guard.rs`).
//! - `ilp-bench soak`: A → B → C with B killed and restarted again and again and a stalling
//!   fulfiller; every Prepare must get exactly one answer (see `soak.rs`).
//!
//! CPU per packet comes from the connector processes' `/proc/<pid>/stat` over the measured
//! phase; peak RSS from `VmHWM`.

mod ccp;
mod guard;
mod handover;
mod http;
mod load;
mod procstat;
mod rates;
mod relay;
mod soak;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ilp_connector::testkit::{Fulfiller, Mode};

#[derive(Parser)]
#[command(
    name = "ilp-bench",
    about = "Load generator for ILP connectors over BTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Timing {
    /// Measured phase per run, seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Warm-up before each measured phase, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop the measured phase after this many packets instead of after `duration`.
    #[arg(long)]
    count: Option<u64>,
    /// Bytes of data in each Prepare.
    #[arg(long, default_value_t = 32)]
    data_size: usize,
    /// Pin the sender's executor to this core.
    #[arg(long)]
    sender_core: Option<usize>,
    /// Print progress every second (always on for measured phases of 10 s or more).
    #[arg(long)]
    progress: bool,
    /// A different payload (and condition) in every Prepare, so caches and deduplication
    /// (the JS connector has both) cannot answer any of them; costs the sender two SHA-256
    /// per packet.
    #[arg(long)]
    unique: bool,
    /// Open loop: send this many Prepares per second whatever the answers (latency from each
    /// one's scheduled send time); `concurrency` is then unused.
    #[arg(long)]
    rate: Option<f64>,
    /// Count the connector's system calls with `perf stat` (raw_syscalls:sys_enter) over the
    /// measured phase. The tracepoint slows every system call, so CPU figures from such a run
    /// are inflated (by ~30 % at saturation here): take CPU from a run without it.
    #[arg(long)]
    syscalls: bool,
    /// Extra CA certificates (PEM) to trust when the target is `wss://`.
    #[arg(long)]
    ca_file: Option<String>,
}

impl Timing {
    /// A load run with these timings.
    fn load(
        &self,
        url: String,
        user: String,
        token: String,
        destination: String,
        concurrency: usize,
        links: usize,
    ) -> load::Load {
        load::Load {
            url,
            user,
            token,
            destination,
            concurrency,
            links,
            data_size: self.data_size,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            count: self.count,
            progress: self.progress || self.count.is_none() && self.duration >= 10.0,
            unique: self.unique,
            place: None,
            rate: self.rate,
            count_syscalls: self.syscalls,
            ca_file: self.ca_file.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The standard scenarios, side by side.
    Scenarios {
        #[command(flatten)]
        timing: Timing,
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        /// Write the results as JSON here.
        #[arg(long, default_value = "target/ilp-bench.json")]
        json: PathBuf,
        /// Concurrency levels to run.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        concurrency: Vec<usize>,
        /// Shard counts to run the connector scenarios with.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        shards: Vec<usize>,
        /// `spinBeforeParkUs` for the connectors (0 = park at once).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Pin each connector's shards to cores 0..shards (`cores:` instead of `shards:`).
        #[arg(long)]
        pin: bool,
        /// `links:` for each connector's next hop (default: auto, i.e. one link to the test
        /// fulfiller, which offers nothing, so other shards hand packets over).
        #[arg(long)]
        links: Option<usize>,
    },
    /// One load run against a BTP endpoint.
    Load {
        #[command(flatten)]
        timing: Timing,
        /// e.g. ws://127.0.0.1:3001 (or btp+ws://user:token@host:port)
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "sender")]
        user: String,
        #[arg(long, default_value = "")]
        token: String,
        #[arg(long)]
        destination: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        links: usize,
        /// Processes whose CPU time and peak RSS to report (the connector).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// Hops the packets cross (CPU per packet is divided by this).
        #[arg(long, default_value_t = 1)]
        hops: u32,
        #[arg(long, default_value = "load")]
        label: String,
        /// Print the result as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// A fulfiller on 127.0.0.1:<port> accepting `user`/`token`; prints its port, runs until killed.
    Fulfiller {
        #[arg(long)]
        user: String,
        #[arg(long)]
        token: String,
    },
    /// The byte-level relay baseline: accept on a free port, relay to `to`; prints its port.
    Relay {
        #[arg(long)]
        to: String,
        /// The same relay on a current-thread tokio runtime (epoll) instead of glommio.
        #[arg(long)]
        epoll: bool,
    },
    /// Relays, our 1 hop (and the JS connector) at fixed offered rates and at saturation.
    Rates {
        #[command(flatten)]
        timing: Timing,
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        /// Offered rates, packets per second.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,100000")]
        rates: Vec<f64>,
        /// Targets, in order: relay, relay-epoll, 1-hop, js (the reference JS connector; needs
        /// `npm ci` in bench/js).
        #[arg(long, value_delimiter = ',', default_value = "relay,relay-epoll,1-hop")]
        targets: Vec<String>,
        /// Write the results as JSON here.
        #[arg(long, default_value = "target/ilp-bench-rates.json")]
        json: PathBuf,
    },
    /// The regression guard: compares two `rates` JSON files, each target relative to the
    /// relay of its own run; exit status 1 when a guarded ratio got worse than `tolerance`.
    Compare {
        /// e.g. bench/baseline-rates.json (the last recorded run)
        baseline: PathBuf,
        /// e.g. target/ilp-bench-rates.json (what `rates` just wrote)
        current: PathBuf,
        /// Allowed worsening of a ratio (0.15 = 15 %): the run-to-run spread here is ~10 %.
        #[arg(long, default_value_t = 0.15)]
        tolerance: f64,
    },
    /// 1 hop with accounting off, relaxed and strict (every packet reserved, committed and
    /// journaled), interleaved in one run, per shard count and concurrency.
    Accounting {
        #[command(flatten)]
        timing: Timing,
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        concurrency: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        shards: Vec<usize>,
        /// Rounds of (off, relaxed, strict); each row is reported, then the medians.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long, default_value = "target/ilp-bench-accounting.json")]
        json: PathBuf,
    },
    /// One hop over an ILP-over-HTTP link against the same hop over BTP (see http.rs).
    Http {
        #[command(flatten)]
        timing: Timing,
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        concurrency: Vec<usize>,
    },
    /// How long a node takes to learn N routes from one peer by CCP, and their memory.
    Ccp {
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        routes: usize,
    },
    /// 1 hop through a 2-shard node: packets crossing shards to the one link against packets
    /// that do not (see handover.rs).
    Handover {
        #[command(flatten)]
        timing: Timing,
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// `spinBeforeParkUs` for the node (0 = park at once).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Pin the node's shards to cores 0 and 1.
        #[arg(long)]
        pin: bool,
    },
    /// Sender → A → B → C → fulfiller while B is SIGKILLed and restarted and the fulfiller
    /// stalls; counts unanswered and duplicated answers (exit 1 unless both are 0).
    Soak {
        /// The connector binary (default: `ilp-connector` next to this binary).
        #[arg(long)]
        connector: Option<PathBuf>,
        /// Send at least this many Prepares.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Kill B at least this many times.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Milliseconds between kills.
        #[arg(long, default_value_t = 3000)]
        kill_every_ms: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Print the report as JSON (else as text).
        #[arg(long)]
        json: bool,
    },
}

/// One row of results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    scenario: String,
    hops: u32,
    shards: usize,
    concurrency: usize,
    /// Open loop: the rate sent at (then `concurrency` is unused).
    offered_per_s: Option<f64>,
    packets: u64,
    rejected: u64,
    errors: u64,
    throughput_per_s: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Connector CPU (all its processes) per packet, divided by hops.
    cpu_us_per_packet_per_hop: Option<f64>,
    /// System calls of the connector processes per packet, divided by hops (perf).
    syscalls_per_packet_per_hop: Option<f64>,
    /// Context switches of the connector processes' threads per packet, divided by hops.
    ctx_switches_per_packet_per_hop: Option<f64>,
    /// Largest peak RSS among the connector processes.
    peak_rss_mib: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Scenarios {
            timing,
            connector,
            json,
            concurrency,
            shards,
            spin_us,
            pin,
            links,
        } => {
            let node = NodeOptions {
                spin_us,
                pin,
                links,
                accounts: None,
            };
            scenarios(&timing, connector, &json, &concurrency, &shards, node)
        }
        Cmd::Load {
            timing,
            url,
            user,
            token,
            destination,
            concurrency,
            links,
            pid,
            hops,
            label,
            json,
        } => {
            let spec = timing.load(url, user, token, destination, concurrency, links);
            measure(&label, hops, 0, spec, &pid, timing.sender_core).map(|row| {
                print_table(std::slice::from_ref(&row));
                if json {
                    println!("{}", serde_json::to_string_pretty(&row).unwrap_or_default());
                }
            })
        }
        Cmd::Fulfiller { user, token } => {
            let f = Fulfiller::start(&user, &token, Mode::Fulfill);
            println!("fulfiller port {}", f.port);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Cmd::Relay { to, epoll: true } => relay::run_epoll(to),
        Cmd::Relay { to, epoll: false } => {
            let r = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .spawn(move || async move {
                    let listener = glommio::net::TcpListener::bind("127.0.0.1:0")
                        .map_err(|e| e.to_string())?;
                    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
                    println!("relay port {port}");
                    relay::run(listener, to).await;
                    Ok::<(), String>(())
                })
                .map_err(|e| e.to_string())
                .and_then(|h| h.join().map_err(|e| e.to_string())?);
            r
        }
        Cmd::Rates {
            timing,
            connector,
            rates,
            targets,
            json,
        } => connector_bin(connector).and_then(|bin| {
            let rows = rates::run(&bin, &timing, &rates, &targets)?;
            print_table(&rows);
            write_json(&json, &rows)
        }),
        Cmd::Handover {
            timing,
            connector,
            concurrency,
            spin_us,
            pin,
        } => connector_bin(connector).and_then(|bin| {
            let node = NodeOptions {
                spin_us,
                pin,
                links: None,
                accounts: None,
            };
            let rows = handover::run(&bin, &timing, concurrency, node)?;
            let plain: Vec<Row> = rows.iter().map(|r| r.row.clone()).collect();
            print_table(&plain);
            println!();
            for r in &rows {
                println!(
                    "  {:<6} {:>3.0}% of packets handed over between shards",
                    r.row.scenario,
                    100.0 * r.handed_over
                );
            }
            Ok(())
        }),
        Cmd::Accounting {
            timing,
            connector,
            concurrency,
            shards,
            rounds,
            json,
        } => connector_bin(connector)
            .and_then(|bin| accounting(&timing, &bin, &concurrency, &shards, rounds, &json)),
        Cmd::Http {
            timing,
            connector,
            concurrency,
        } => connector_bin(connector).and_then(|bin| {
            let rows = http::run(&bin, &timing, &concurrency)?;
            let plain: Vec<Row> = rows.iter().map(|r| r.row.clone()).collect();
            print_table(&plain);
            println!();
            for r in &rows {
                println!(
                    "{:<10} c={:<3} connections A→B: {}",
                    r.row.scenario, r.row.concurrency, r.connections
                );
            }
            Ok(())
        }),
        Cmd::Compare {
            baseline,
            current,
            tolerance,
        } => match guard::run(&baseline, &current, tolerance) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Cmd::Ccp { connector, routes } => {
            connector_bin(connector).and_then(|bin| ccp::run(&bin, routes))
        }
        Cmd::Soak {
            connector,
            packets,
            kills,
            kill_every_ms,
            concurrency,
            json,
        } => soak(connector, packets, kills, kill_every_ms, concurrency, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The connector binary: given, or `ilp-connector` next to this binary.
fn connector_bin(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let bin = match given {
        Some(b) => b,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("ilp-connector"),
    };
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release)",
            bin.display()
        ));
    }
    Ok(bin)
}

fn soak(
    connector: Option<PathBuf>,
    packets: u64,
    kills: usize,
    kill_every_ms: u64,
    concurrency: usize,
    json: bool,
) -> Result<(), String> {
    let bin = connector_bin(connector)?;
    let r = soak::run(
        &bin,
        packets,
        kills,
        Duration::from_millis(kill_every_ms),
        concurrency,
    )?;
    if json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        println!(
            "soak: sent {} answered {} unanswered {} duplicated {} unknown {} kills {} in {:.1} s",
            r.sent, r.answered, r.unanswered, r.duplicated, r.unknown, r.kills, r.seconds
        );
        println!("answers by code: {:?}", r.by_code);
        println!("peak RSS (MiB): {:?}", r.peak_rss_mib);
    }
    if r.unanswered == 0 && r.duplicated == 0 && r.unknown == 0 && r.answered == r.sent {
        Ok(())
    } else {
        Err("some Prepares were not answered exactly once".into())
    }
}

/// Runs `spec` on a sender executor and measures `pids` over the measured phase.
fn measure(
    scenario: &str,
    hops: u32,
    shards: usize,
    spec: load::Load,
    pids: &[u32],
    sender_core: Option<usize>,
) -> Result<Row, String> {
    let placement = sender_core.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    let pids_owned = pids.to_vec();
    let concurrency = spec.concurrency;
    let offered = spec.rate;
    let count_syscalls = spec.count_syscalls;
    let (out, before) = glommio::LocalExecutorBuilder::new(placement)
        .name("ilp-bench-sender")
        .spawn(move || async move {
            let mut before = None;
            let out = load::run(spec, || {
                before = Some((
                    cpu_of(&pids_owned),
                    ctx_of(&pids_owned),
                    if count_syscalls {
                        procstat::SyscallCount::start(&pids_owned)
                    } else {
                        None
                    },
                ));
            })
            .await;
            (out, before)
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?;
    let (cpu_after, ctx_after) = (cpu_of(pids), ctx_of(pids));
    let (cpu_before, ctx_before, syscalls) = match before {
        Some((c, x, s)) => (c, x, s.and_then(procstat::SyscallCount::stop)),
        None => (None, None, None),
    };
    let out = out?;
    let packets = out.fulfilled;
    let h = &out.latency_us;
    let per_packet_hop = |v: f64| -> Option<f64> {
        (packets > 0 && !pids.is_empty()).then(|| v / packets as f64 / f64::from(hops.max(1)))
    };
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => per_packet_hop((a - b) * 1e6),
        _ => None,
    };
    let ctx = match (ctx_before, ctx_after) {
        (Some(b), Some(a)) => per_packet_hop(a.saturating_sub(b) as f64),
        _ => None,
    };
    let syscalls = syscalls.and_then(|n| per_packet_hop(n as f64));
    let rss = pids
        .iter()
        .filter_map(|p| procstat::peak_rss_kib(*p))
        .max()
        .map(|k| k as f64 / 1024.0);
    Ok(Row {
        scenario: scenario.to_owned(),
        hops,
        shards,
        concurrency,
        offered_per_s: offered,
        packets,
        rejected: out.rejected,
        errors: out.errors,
        throughput_per_s: packets as f64 / out.elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        cpu_us_per_packet_per_hop: cpu,
        syscalls_per_packet_per_hop: syscalls,
        ctx_switches_per_packet_per_hop: ctx,
        peak_rss_mib: rss,
    })
}

fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| procstat::cpu_seconds(*p)).sum()
}

fn ctx_of(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| procstat::context_switches(*p)).sum()
}

/// A child process that prints "<what> port N" first; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd`, returns it and the first number after "port" on its stdout (bounded wait).
fn spawn_with_port(mut cmd: Command, what: &str) -> Result<(Proc, u16), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| format!("{what} printed no port"))?;
    let port = line
        .split_once("port ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("{what}: no port in {line:?}"))?;
    Ok((proc, port))
}

/// Picks a free TCP port on 127.0.0.1 (bound and released at once).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start_connector(bin: &PathBuf, name: &str, yaml: String) -> Result<(Proc, u16), String> {
    let dir = std::env::temp_dir().join(format!("ilp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"]).arg(&path);
    spawn_with_port(cmd, name)
}

/// How the scenario connectors run.
#[derive(Clone, Copy)]
struct NodeOptions {
    spin_us: u64,
    /// `links:` of each node's next hop.
    links: Option<usize>,
    pin: bool,
    /// Accounting: `journal.durability` of each node, both its peers with wide balance
    /// limits (so every packet is reserved, committed and journaled); `None`: no accounts.
    accounts: Option<&'static str>,
}

impl NodeOptions {
    /// The `shards:`/`cores:` and spinning lines of a config.
    fn yaml(&self, shards: usize) -> String {
        let placement = if self.pin {
            let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
            format!("cores: [{}]", cores.join(", "))
        } else {
            format!("shards: {shards}")
        };
        format!("{placement}\nspinBeforeParkUs: {}\n", self.spin_us)
    }

    /// The top-level journal line for node `name` (a fresh directory), if accounted.
    fn journal_yaml(&self, name: char) -> String {
        let Some(durability) = self.accounts else {
            return String::new();
        };
        let dir = std::env::temp_dir().join(format!(
            "ilp-bench-{}/journal-{name}-{}",
            std::process::id(),
            BENCH_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        format!(
            "journal: {{dir: \"{}\", durability: {durability}}}\n",
            dir.display()
        )
    }

    /// The per-peer balance entry, if accounted.
    fn balance_yaml(&self) -> &'static str {
        match self.accounts {
            Some(_) => {
                ", balance: {minimum: \"-4000000000000000000\", maximum: \"4000000000000000000\"}"
            }
            None => "",
        }
    }
}

/// Numbers the journal directories of one bench process.
static BENCH_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A chain of connector processes: sender → A → … → last → fulfiller (child `receiver` of
/// the last). Each node dials the next; `sender` is a child of A with token `bench-token`.
struct Chain {
    // Field order is drop order: connectors stop before the fulfiller.
    procs: Vec<Proc>,
    _fulfiller: Fulfiller,
    /// A's BTP port.
    port: u16,
    destination: String,
}

impl Chain {
    fn start(bin: &PathBuf, hops: u32, shards: usize, node: NodeOptions) -> Result<Chain, String> {
        let names: Vec<char> = ('a'..='z').take(hops as usize).collect();
        let last = *names.last().ok_or("at least one hop")?;
        let fulfiller = Fulfiller::start(&format!("connector-{last}"), "secret-r", Mode::Fulfill);
        let mut procs = Vec::new();
        // Start from the last node, so each node's next hop is already listening.
        let mut next: (String, String, String, bool) =
            ("receiver".into(), fulfiller.url(), "secret-r".into(), true);
        let mut port = 0;
        for (i, n) in names.iter().enumerate().rev() {
            let upstream = match i {
                0 => ("sender".to_owned(), "bench-token".to_owned()),
                _ => {
                    let prev = names[i - 1];
                    (format!("connector-{prev}"), format!("secret-{prev}{n}"))
                }
            };
            let yaml = format!(
                "nodeId: connector-{n}\nilpAddress: test.{n}\nbtpServerPort: 0\n{}{}logLevel: warn\nmaxInFlightPerShard: 1000000\npeers:\n  - {{id: {}, relation: child, authToken: {}{}}}\n  - {{id: {}, relation: {}, url: \"{}\", authToken: {}{}{}}}\n{}",
                node.yaml(shards),
                node.journal_yaml(*n),
                upstream.0,
                upstream.1,
                node.balance_yaml(),
                next.0,
                if next.3 { "child" } else { "peer" },
                next.1,
                next.2,
                node.links.map_or(String::new(), |n| format!(", links: {n}")),
                node.balance_yaml(),
                if next.3 {
                    String::new()
                } else {
                    format!("routes:\n  - {{prefix: test, nextHop: {}}}\n", next.0)
                },
            );
            let (proc, p) = start_connector(bin, &n.to_string(), yaml)?;
            procs.push(proc);
            port = p;
            next = (
                format!("connector-{n}"),
                format!("ws://127.0.0.1:{p}"),
                upstream.1,
                false,
            );
        }
        Ok(Chain {
            procs,
            _fulfiller: fulfiller,
            port,
            destination: format!("test.{last}.receiver.bench"),
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.0.id()).collect()
    }
}

fn scenarios(
    timing: &Timing,
    connector: Option<PathBuf>,
    json: &Path,
    concurrency: &[usize],
    shards: &[usize],
    node: NodeOptions,
) -> Result<(), String> {
    let bin = connector_bin(connector)?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let spec = |url: String, user: &str, token: &str, destination: &str, c: usize, links: usize| {
        timing.load(url, user.into(), token.into(), destination.into(), c, links)
    };
    let mut rows = Vec::new();
    for &c in concurrency {
        // Relay baseline and 0 hops: no connector.
        {
            let f = Fulfiller::start("sender", "bench-token", Mode::Fulfill);
            let mut cmd = Command::new(&me);
            cmd.args(["relay", "--to", &f.url()]);
            let (relay, port) = spawn_with_port(cmd, "relay")?;
            eprintln!("relay baseline, concurrency {c}");
            let row = measure(
                "relay",
                1,
                0,
                spec(
                    format!("ws://127.0.0.1:{port}"),
                    "sender",
                    "bench-token",
                    "test.x.bench",
                    c,
                    1,
                ),
                &[relay.0.id()],
                timing.sender_core,
            )?;
            rows.push(row);
            eprintln!("0 hops, concurrency {c}");
            let row = measure(
                "0-hop",
                0,
                0,
                spec(f.url(), "sender", "bench-token", "test.x.bench", c, 1),
                &[],
                timing.sender_core,
            )?;
            rows.push(row);
        }
        for &s in shards {
            for hops in [1, 3] {
                let chain = Chain::start(&bin, hops, s, node)?;
                eprintln!("{hops} hop(s), {s} shard(s), concurrency {c}");
                let url = format!("ws://127.0.0.1:{}", chain.port);
                let row = measure(
                    &format!("{hops}-hop"),
                    hops,
                    s,
                    spec(url, "sender", "bench-token", &chain.destination, c, s),
                    &chain.pids(),
                    timing.sender_core,
                )?;
                rows.push(row);
            }
        }
    }
    print_table(&rows);
    print_ratios(&rows);
    write_json(json, &rows)
}

/// See `Cmd::Accounting`.
fn accounting(
    timing: &Timing,
    bin: &PathBuf,
    concurrency: &[usize],
    shards: &[usize],
    rounds: usize,
    json: &Path,
) -> Result<(), String> {
    let modes: [(&str, Option<&'static str>); 3] = [
        ("acct-off", None),
        ("relaxed", Some("relaxed")),
        ("strict", Some("strict")),
    ];
    let mut rows = Vec::new();
    for &c in concurrency {
        for &s in shards {
            for round in 0..rounds {
                for (label, accounts) in modes {
                    // A link to the fulfiller from every shard: no packet is handed over, so
                    // where the sender's links land does not change the cost.
                    let node = NodeOptions {
                        spin_us: 0,
                        pin: false,
                        links: Some(s),
                        accounts,
                    };
                    let chain = Chain::start(bin, 1, s, node)?;
                    eprintln!(
                        "{label}, {s} shard(s), concurrency {c}, round {}",
                        round + 1
                    );
                    let spec = timing.load(
                        format!("ws://127.0.0.1:{}", chain.port),
                        "sender".into(),
                        "bench-token".into(),
                        chain.destination.clone(),
                        c,
                        s,
                    );
                    rows.push(measure(
                        label,
                        1,
                        s,
                        spec,
                        &chain.pids(),
                        timing.sender_core,
                    )?);
                }
            }
        }
    }
    print_table(&rows);
    println!();
    println!("medians vs acct-off (same shards and concurrency): CPU µs/packet added, throughput ratio, p50 added µs");
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for &c in concurrency {
        for &s in shards {
            let pick = |label: &str, f: &dyn Fn(&Row) -> f64| {
                median(
                    rows.iter()
                        .filter(|r| r.scenario == label && r.shards == s && r.concurrency == c)
                        .map(f)
                        .collect(),
                )
            };
            let cpu = |r: &Row| r.cpu_us_per_packet_per_hop.unwrap_or(f64::NAN);
            let tput = |r: &Row| r.throughput_per_s;
            let p50 = |r: &Row| r.p50_us as f64;
            for label in ["relaxed", "strict"] {
                println!(
                    "c={c:<3} shards={s} {label:<8} cpu {:+.2} µs  throughput {:.3}×  p50 {:+.0} µs",
                    pick(label, &cpu) - pick("acct-off", &cpu),
                    pick(label, &tput) / pick("acct-off", &tput),
                    pick(label, &p50) - pick("acct-off", &p50),
                );
            }
        }
    }
    write_json(json, &rows)
}

fn write_json(json: &Path, rows: &[Row]) -> Result<(), String> {
    if let Some(dir) = json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(json, serde_json::to_string_pretty(rows).unwrap_or_default())
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    eprintln!("JSON written to {}", json.display());
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:>4} {:>6} {:>7} {:>9} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>7}",
        "scenario",
        "hops",
        "shards",
        "load",
        "packets",
        "packets/s",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9",
        "maxµs",
        "cpuµs/hop",
        "sys/hop",
        "cs/hop",
        "rssMiB"
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    for r in rows {
        let load = match r.offered_per_s {
            Some(rate) => format!("{rate:.0}/s"),
            None => format!("c={}", r.concurrency),
        };
        println!(
            "{:<10} {:>4} {:>6} {:>7} {:>9} {:>10.0} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>7}",
            r.scenario,
            r.hops,
            r.shards,
            load,
            r.packets,
            r.throughput_per_s,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            opt(r.cpu_us_per_packet_per_hop, 2),
            opt(r.syscalls_per_packet_per_hop, 2),
            opt(r.ctx_switches_per_packet_per_hop, 3),
            opt(r.peak_rss_mib, 1),
        );
        if r.rejected + r.errors > 0 {
            println!("           ({} rejected, {} errors)", r.rejected, r.errors);
        }
    }
}

/// Throughput against the relay and added latency per hop against 0 hops, same concurrency.
fn print_ratios(rows: &[Row]) {
    println!();
    println!("ratios (same concurrency): throughput vs relay; added latency per hop vs 0-hop (p50 / p99, µs)");
    for r in rows
        .iter()
        .filter(|r| r.scenario.ends_with("hop") && r.hops > 0)
    {
        let relay = rows
            .iter()
            .find(|x| x.scenario == "relay" && x.concurrency == r.concurrency);
        let zero = rows
            .iter()
            .find(|x| x.scenario == "0-hop" && x.concurrency == r.concurrency);
        let ratio = relay.map_or("-".into(), |x| {
            format!("{:.0}%", 100.0 * r.throughput_per_s / x.throughput_per_s)
        });
        let added = zero.map_or("-".into(), |z| {
            format!(
                "{:.1} / {:.1}",
                (r.p50_us as f64 - z.p50_us as f64) / f64::from(r.hops),
                (r.p99_us as f64 - z.p99_us as f64) / f64::from(r.hops)
            )
        });
        println!(
            "  {:<6} shards {} conc {:>3}: {:>5} of relay throughput; added per hop {}",
            r.scenario, r.shards, r.concurrency, ratio, added
        );
    }
}
