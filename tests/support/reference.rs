//! The reference JS implementation for interop tests: runs the scripts in `tests/interop`
//! (npm `ilp-plugin-btp` 1.5.0, `ilp-connector` 23.0.2, pinned by its package-lock.json) and
//! reads the JSON lines they print. `.ci/run` installs the packages with `npm ci`; on a fresh
//! clone the first use here does it (once) if `node_modules` is missing. Needs `node` and `npm`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the pinned packages once per test run if they are not there yet.
fn ensure_packages() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        let dir = interop_dir();
        if ["ilp-plugin-btp", "ilp-packet", "ilp-connector"]
            .iter()
            .all(|p| {
                dir.join("node_modules")
                    .join(p)
                    .join("package.json")
                    .exists()
            })
        {
            return Ok(());
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("npm ci failed: {status}"))
        }
    });
    if let Err(e) = r {
        panic!("interop packages unavailable: {e}");
    }
}

/// Kills the child process when dropped, so a failing assertion never leaves it running.
pub struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn node_script(script: &str, args: &[&str]) -> (Reaped, mpsc::Receiver<serde_json::Value>) {
    node_script_env(script, args, &[])
}

/// As [`node_script`], with extra environment variables (e.g. `NODE_EXTRA_CA_CERTS`).
pub fn node_script_env(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Reaped, mpsc::Receiver<serde_json::Value>) {
    ensure_packages();
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node on PATH");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    (Reaped(child), rx)
}

pub fn next_line(rx: &mpsc::Receiver<serde_json::Value>, what: &str) -> serde_json::Value {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no {what} from the node script within 20 s"))
}
