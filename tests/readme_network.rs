//! README's "A network in five terminals", run as written (multi-process, the release binary):
//! every `cargo run --release -- …` line of that section in order, with the configs' fixed
//! ports (3001–3003, 8081–8083) swapped for free ones. Nodes and the receiver stay up; every
//! other command must exit 0 and print its result (a `reject-` destination must exit 1).
//! Finally every byte any of them printed (stdout and stderr, logs included) is searched for
//! the configs' tokens: none may appear.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ilp-connector");
const PREFIX: &str = "cargo run --release -- ";
const FIXED_PORTS: [&str; 6] = ["3001", "3002", "3003", "8081", "8082", "8083"];

/// Kills the process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The commands of the README section, in order.
fn readme_commands() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("### A network in five terminals")
        .expect("the README section");
    let section = &readme[start..];
    let end = section[4..].find("\n### ").map_or(section.len(), |e| e + 4);
    section[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix(PREFIX))
        .map(str::to_owned)
        .collect()
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// Spawns the binary (stderr into `stderr`) and returns it with a channel of its stdout lines.
fn spawn(args: &[String], stderr: &std::path::Path) -> (Reaped, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Reaped(child), rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, cmd: &str) -> String {
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no output from `{cmd}` within 20 s"));
    assert!(line.contains(what), "`{cmd}` printed {line:?}");
    line
}

fn wait_ready(admin: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{admin}/health");
    while ureq::get(&url)
        .timeout(Duration::from_secs(2))
        .call()
        .is_err()
    {
        assert!(Instant::now() < until, "{url} never said ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_command_of_the_five_terminal_section_works() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 8,
        "the section lost commands: {commands:?}"
    );
    let ports: HashMap<&str, String> = FIXED_PORTS.iter().map(|p| (*p, free_port())).collect();
    let swap = |s: &str| {
        let mut s = s.to_owned();
        for (fixed, free) in &ports {
            s = s.replace(fixed, free);
        }
        s
    };
    let dir = std::env::temp_dir().join(format!("ilp-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for n in ["a", "b", "c"] {
        let yaml = std::fs::read_to_string(root.join(format!("configs/{n}.yaml"))).unwrap();
        std::fs::write(dir.join(format!("{n}.yaml")), swap(&yaml)).unwrap();
    }
    let secrets: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| {
            let yaml = std::fs::read_to_string(root.join(format!("configs/{n}.yaml"))).unwrap();
            yaml.lines()
                .filter_map(|l| l.split("authToken:").nth(1))
                .map(|t| t.split_whitespace().next().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    assert!(secrets.len() >= 4, "{secrets:?}");
    let mut printed = Vec::new();
    let mut running = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let stderr = dir.join(format!("stderr-{i}"));
        let args: Vec<String> = swap(cmd)
            .split_whitespace()
            .map(|a| match a.strip_prefix("configs/") {
                Some(file) => dir.join(file).display().to_string(),
                None => a.to_owned(),
            })
            .collect();
        match args[0].as_str() {
            "run" => {
                let (child, rx) = spawn(&args, &stderr);
                printed.push(wait_line(&rx, "listening", cmd));
                // The node's admin port, as the config gives it: ready = its dials are up.
                let config = std::fs::read_to_string(&args[2]).unwrap();
                let admin = config
                    .lines()
                    .find_map(|l| l.strip_prefix("healthCheckPort:"))
                    .unwrap()
                    .trim()
                    .to_owned();
                wait_ready(&admin);
                running.push(child);
            }
            "receive" => {
                let (child, rx) = spawn(&args, &stderr);
                let line = wait_line(&rx, "receiving at", cmd);
                assert!(line.contains("test.c.receiver"), "{line}");
                printed.push(line);
                running.push(child);
            }
            _ => {
                let (mut child, rx) = spawn(&args, &stderr);
                let until = Instant::now() + Duration::from_secs(60);
                let status = loop {
                    if let Some(s) = child.0.try_wait().unwrap() {
                        break s;
                    }
                    assert!(Instant::now() < until, "`{cmd}` did not finish in 60 s");
                    std::thread::sleep(Duration::from_millis(20));
                };
                // The reader thread ends at the end of stdout.
                let mut out = Vec::new();
                while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
                    out.push(line);
                }
                assert!(!out.is_empty(), "`{cmd}` printed nothing");
                let expected = if cmd.contains("reject-") { 1 } else { 0 };
                assert_eq!(status.code(), Some(expected), "`{cmd}`: {out:?}");
                if args[0] == "send" && expected == 0 {
                    assert!(
                        out.iter().any(|l| l.contains("fulfill")),
                        "`{cmd}`: {out:?}"
                    );
                }
                printed.extend(out);
            }
        }
    }
    // Stopped gracefully (SIGTERM), so their last log lines are written too.
    for mut p in running.drain(..) {
        let _ = Command::new("kill")
            .args(["-TERM", &p.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while p.0.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut everything = printed.join("\n");
    for i in 0..commands.len() {
        everything += &std::fs::read_to_string(dir.join(format!("stderr-{i}"))).unwrap_or_default();
    }
    assert!(everything.len() > 1000, "hardly any output: {everything}");
    for s in &secrets {
        assert!(
            !everything.contains(s.as_str()),
            "the token {s:?} was printed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
