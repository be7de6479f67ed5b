//! The `ilp-connector` command line: `run`, `check-config`, `demo`, `decode`.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use ilp_connector::codec::{BtpPacket, Packet};
use ilp_connector::config::Config;
use ilp_connector::node::connector::ConnectorNode;
use ilp_connector::testkit::{run_local, Fulfiller, Mode, SenderLink};

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
        Command::Demo { packets } => demo(packets, cli.human),
        Command::Decode { hex } => decode(&hex),
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
    ilp_connector::logging::init(&config.log_level, human);
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let mut node = match ConnectorNode::start(config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "listening: btp port {}, admin port {}",
        node.btp_port(),
        node.admin_port().map_or("-".into(), |p| p.to_string())
    );
    let mut signals = signals;
    let _ = signals.forever().next();
    node.stop();
    ExitCode::SUCCESS
}

fn demo(packets: u32, human: bool) -> ExitCode {
    ilp_connector::logging::init("warn", human);
    let start = |yaml: String| Config::from_yaml(&yaml).map(ConnectorNode::start);
    let fulfiller = Fulfiller::start("connector-c", "secret-cr", Mode::Fulfill);
    let c = start(format!("nodeId: connector-c\nilpAddress: test.c\nbtpServerPort: 0\npeers:\n  - {{id: connector-b, relation: peer, authToken: secret-bc}}\n  - {{id: receiver, relation: child, url: \"{}\", authToken: secret-cr}}\n", fulfiller.url()));
    let Ok(Ok(c)) = c else {
        eprintln!("error: cannot start C");
        return ExitCode::from(1);
    };
    let b = start(format!("nodeId: connector-b\nilpAddress: test.b\nbtpServerPort: 0\npeers:\n  - {{id: connector-a, relation: peer, authToken: secret-ab}}\n  - {{id: connector-c, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-bc}}\nroutes:\n  - {{prefix: test.c, nextHop: connector-c}}\n", c.btp_port()));
    let Ok(Ok(b)) = b else {
        eprintln!("error: cannot start B");
        return ExitCode::from(1);
    };
    let a = start(format!("nodeId: connector-a\nilpAddress: test.a\nbtpServerPort: 0\npeers:\n  - {{id: sender, relation: child, authToken: secret-sa}}\n  - {{id: connector-b, relation: peer, url: \"ws://127.0.0.1:{}\", authToken: secret-ab}}\nroutes:\n  - {{prefix: test.c, nextHop: connector-b}}\n", b.btp_port()));
    let Ok(Ok(a)) = a else {
        eprintln!("error: cannot start A");
        return ExitCode::from(1);
    };
    for (name, n) in [("A", &a), ("B", &b), ("C", &c)] {
        if !n.wait_ready(Duration::from_secs(10)) {
            eprintln!("error: connector {name} did not become ready");
            return ExitCode::from(1);
        }
        println!("connector {name}: btp port {}", n.btp_port());
    }
    let url = format!("ws://127.0.0.1:{}", a.btp_port());
    let result = run_local(move || async move {
        let s = SenderLink::connect(&url, "sender", "secret-sa").await?;
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
    match result {
        Ok((f, r, h, took)) => {
            println!("path: sender -> A (test.a) -> B (test.b) -> C (test.c) -> receiver (test.c.receiver)");
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
            println!("(run with RUST_LOG-style `logLevel: debug` configs to follow one packet by correlationId across the hops)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo failed: {e}");
            ExitCode::from(1)
        }
    }
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
