//! The `ilp-connector` command line: `run`, `check-config`, `demo`, `decode`, and the operator's
//! tools (`send`, `receive`, `peers`, `routes`, `health`; see `ilp_connector::tools`).
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use ilp_connector::codec::{BtpPacket, Packet};
use ilp_connector::config::Config;
use ilp_connector::node::connector::StartError;
use ilp_connector::testkit::{run_local, Mode, ThreeNodes};
use ilp_connector::tools;

#[derive(Parser)]
#[command(
    name = "ilp-connector",
    version,
    about = "A thread-per-core ILPv4 connector"
)]
struct Cli {
    /// Human-readable logs instead of JSON.
    #[arg(long, global = true)]
    human: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a connector from a YAML config until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: String,
    },
    /// Validate a config file (exit 0 if valid, 2 otherwise).
    CheckConfig { file: String },
    /// Start A → B → C, a sender and a fulfiller in one process and send packets.
    Demo {
        #[arg(long, default_value_t = 1000)]
        packets: u32,
    },
    /// Decode a hex-encoded ILP packet or BTP frame and print its fields.
    Decode { hex: String },
    /// Send Prepares through a node as its child; exit 0 only if every one is fulfilled.
    Send(tools::send::Send),
    /// Fulfil Prepares (fulfilment sha256(data); destination hooks reject-XXX, delay-MS), as a
    /// child dialling a node (--url) or as a peer a node dials (--listen).
    Receive {
        /// Dial this node as a child: btp+ws://USER:TOKEN@HOST:PORT
        #[arg(long, conflicts_with = "listen", required_unless_present = "listen")]
        url: Option<String>,
        /// With --url: ask the node for our address (ILDCP) and print it.
        #[arg(long, requires = "url")]
        address_from_ildcp: bool,
        /// Listen on 127.0.0.1:PORT (0: any free port) for a node that dials us.
        #[arg(long, requires_all = ["user", "token"])]
        listen: Option<u16>,
        /// With --listen: the account the node authenticates as (its nodeId unless its url names one).
        #[arg(long)]
        user: Option<String>,
        /// With --listen: the token it must present.
        #[arg(long)]
        token: Option<String>,
        /// Log every packet (DEBUG).
        #[arg(long, short)]
        verbose: bool,
    },
    /// A node's peers, from its admin port.
    Peers(AdminArgs),
    /// A node's routing table, from its admin port.
    Routes(AdminArgs),
    /// A node's health, from its admin port (exit 1 unless ready).
    Health(AdminArgs),
    /// A node's accounts (asset, balance, limits), from its admin port.
    Accounts(AdminArgs),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The node's admin port (ADMIN_TOKEN, if set, is sent as a bearer token).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config, cli.human),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{file}: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {file}: {e}");
                ExitCode::from(2)
            }
        },
        Command::Demo { packets } => demo(packets),
        Command::Decode { hex } => decode(&hex),
        Command::Send(args) => ExitCode::from(tools::send::run(args)),
        Command::Receive {
            url,
            address_from_ildcp,
            listen,
            user,
            token,
            verbose,
        } => {
            let _logs =
                ilp_connector::logging::init(if verbose { "debug" } else { "warn" }, cli.human);
            let args = match (url, listen, user, token) {
                (Some(url), _, _, _) => tools::receive::Receive::Dial {
                    url,
                    address_from_ildcp,
                },
                (None, Some(port), Some(user), Some(token)) => {
                    tools::receive::Receive::Listen { port, user, token }
                }
                _ => {
                    eprintln!("error: give --url, or --listen with --user and --token");
                    return ExitCode::from(2);
                }
            };
            ExitCode::from(tools::receive::run(args))
        }
        Command::Peers(a) => ExitCode::from(tools::admin::run(
            tools::admin::View::Peers,
            &a.admin,
            a.json,
        )),
        Command::Routes(a) => ExitCode::from(tools::admin::run(
            tools::admin::View::Routes,
            &a.admin,
            a.json,
        )),
        Command::Health(a) => ExitCode::from(tools::admin::run(
            tools::admin::View::Health,
            &a.admin,
            a.json,
        )),
        Command::Accounts(a) => ExitCode::from(tools::admin::run(
            tools::admin::View::Accounts,
            &a.admin,
            a.json,
        )),
    }
}

fn run(path: &str, human: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let _logs = ilp_connector::logging::init(&config.log_level, human);
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let mut node = match ilp_connector::admin::start_node(config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            // A port that is taken is a configuration problem, like a bad config file.
            let code = match e {
                StartError::Bind { .. }
                | StartError::Admin { .. }
                | StartError::Config(_)
                | StartError::Journal(_) => 2,
                StartError::Executor(_) => 1,
            };
            return ExitCode::from(code);
        }
    };
    println!(
        "listening: btp port {}, admin port {}",
        node.btp_port(),
        node.admin_port().map_or("-".into(), |p| p.to_string())
    );
    let mut signals = signals;
    // SIGHUP re-reads the TLS certificate (rotation without a restart); the others stop.
    for sig in signals.forever() {
        if sig != signal_hook::consts::SIGHUP {
            break;
        }
        let _ = node.reload_tls(); // Logged either way.
    }
    node.stop();
    ExitCode::SUCCESS
}

fn demo(packets: u32) -> ExitCode {
    // Logs go to memory: DEBUG while the first packet is traced, then warnings only.
    let (logs, level) = ilp_connector::logging::init_captured("debug");
    let net = match ThreeNodes::start(Mode::Fulfill, 10_000) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for (name, n) in [("A", &net.a), ("B", &net.b), ("C", &net.c)] {
        println!("connector {name}: btp port {}", n.btp_port());
    }
    println!(
        "path: sender -> A (test.a) -> B (test.b) -> C (test.c) -> receiver (test.c.receiver)"
    );
    let url = net.sender_url();
    let traced = run_local({
        let url = url.clone();
        move || async move {
            let s = ThreeNodes::connect_sender(&url).await?;
            s.send("test.c.receiver.demo", 10, 30_000, b"traced").await
        }
    });
    level.set("warn");
    match traced {
        Ok(p) => print_path(&logs.lines(), &p),
        Err(e) => {
            eprintln!("error: the first packet failed: {e}");
            return ExitCode::from(1);
        }
    }
    let result = run_local(move || async move {
        let s = ThreeNodes::connect_sender(&url).await?;
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)
            .map_err(|e| ilp_connector::btp::LinkError::Protocol(e.to_string()))?;
        let (mut fulfilled, mut rejected) = (0u32, 0u32);
        let t = Instant::now();
        for i in 0..packets {
            let started = Instant::now();
            let data = i.to_be_bytes();
            match s.send("test.c.receiver.demo", 10, 30_000, &data).await? {
                Packet::Fulfill(_) => fulfilled += 1,
                _ => rejected += 1,
            }
            let _ = hist.record(started.elapsed().as_micros() as u64);
        }
        Ok::<_, ilp_connector::btp::LinkError>((fulfilled, rejected, hist, t.elapsed()))
    });
    let warnings: Vec<String> = logs
        .lines()
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .map(|l| l.to_string())
        .collect();
    for w in &warnings {
        eprintln!("log: {w}");
    }
    match result {
        Ok((f, r, h, took)) => {
            println!(
                "sent {packets} packets one at a time in {:.2?}: {f} fulfilled, {r} rejected",
                took
            );
            println!(
                "round-trip latency over 3 hops (µs): p50 {} p90 {} p99 {} p99.9 {} max {}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Microseconds since midnight from a log line's RFC 3339 `timestamp`.
fn micros_of_day(line: &serde_json::Value) -> Option<i64> {
    let t = line["timestamp"].as_str()?;
    let clock = t.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    let seconds: f64 = sec.parse().ok()?;
    Some(
        h.parse::<i64>().ok()? * 3_600_000_000
            + m.parse::<i64>().ok()? * 60_000_000
            + (seconds * 1e6) as i64,
    )
}

/// Prints every log line of the traced packet, in order, one line per event.
fn print_path(lines: &[serde_json::Value], answer: &Packet) {
    let Some(cid) = lines
        .iter()
        .find(|l| l["event"] == "packet_received" && l["nodeId"] == "connector-a")
        .and_then(|l| l["correlationId"].as_str())
    else {
        println!("(the traced packet left no log lines)");
        return;
    };
    let mut events: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["correlationId"] == cid).collect();
    events.sort_by_key(|l| micros_of_day(l));
    let t0 = events.first().and_then(|l| micros_of_day(l)).unwrap_or(0);
    println!("one packet across the hops, correlationId {cid}:");
    for l in events {
        let detail = match l["event"].as_str() {
            Some("packet_received") => format!(
                "from {} to {}",
                l["from"].as_str().unwrap_or("?"),
                l["destination"].as_str().unwrap_or("?")
            ),
            Some("route_lookup") => format!("next hop {}", l["next_hop"].as_str().unwrap_or("?")),
            Some("packet_forwarded") => format!(
                "to {}, expires {}",
                l["next_hop"].as_str().unwrap_or("?"),
                l["expires_at"].as_str().unwrap_or("?")
            ),
            Some("packet_response") => format!(
                "{} after {} µs",
                l["result"].as_str().unwrap_or("?"),
                l["latency_us"]
            ),
            _ => String::new(),
        };
        println!(
            "  +{:>5} µs  {:<12} {:<17} {detail}",
            micros_of_day(l).map_or(0, |t| t - t0),
            l["nodeId"].as_str().unwrap_or("?"),
            l["event"].as_str().unwrap_or("?"),
        );
    }
    let outcome = match answer {
        Packet::Fulfill(_) => "fulfilled".to_owned(),
        Packet::Reject(r) => format!("rejected {}", r.code().as_str()),
        Packet::Prepare(_) => "unexpected Prepare".to_owned(),
    };
    println!("  answer at the sender: {outcome}");
}

fn decode(text: &str) -> ExitCode {
    let bytes = match hex::decode(text.trim()) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("error: not hex: {e}");
            return ExitCode::from(2);
        }
    };
    match Packet::decode(bytes.clone()) {
        Ok(p) => {
            println!("{p:#?}");
            ExitCode::SUCCESS
        }
        Err(ilp_err) => match BtpPacket::decode(bytes) {
            Ok(b) => {
                println!("{b:#?}");
                for e in b.entries() {
                    println!(
                        "  entry {:?} (content type {}): {} bytes",
                        String::from_utf8_lossy(e.name),
                        e.content_type,
                        e.data.len()
                    );
                }
                if let Some(Ok(p)) = b.ilp().map(Packet::decode) {
                    println!("  ilp: {p:#?}");
                }
                ExitCode::SUCCESS
            }
            Err(btp_err) => {
                eprintln!("error: not an ILP packet ({ilp_err}) nor a BTP frame ({btp_err})");
                ExitCode::from(1)
            }
        },
    }
}
