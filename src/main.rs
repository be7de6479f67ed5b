//! The `ilp-connector` command line.
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use ilp_connector::codec::{BtpPacket, Packet};

#[derive(Parser)]
#[command(
    name = "ilp-connector",
    version,
    about = "A thread-per-core ILPv4 connector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode a hex-encoded ILP packet or BTP frame and print its fields.
    Decode {
        /// Lowercase or uppercase hex, no spaces.
        hex: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { hex } => decode(&hex),
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
