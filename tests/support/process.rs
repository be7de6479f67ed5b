//! The built binary as a child process for multi-process tests: started on a config file,
//! its "listening: btp port X, admin port Y" line read (bounded), its stderr collected, and
//! killed when dropped (a failing assertion never leaves it running).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ilp-connector");

pub struct Proc {
    pub child: Child,
    pub btp_port: u16,
    pub admin_port: u16,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ilp-connector run --config <config>` with `env` added, and waits (20 s at most) for
/// its listening line.
pub fn start(config: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "{} printed no listening line: {}",
                config.display(),
                stderr.lock().unwrap()
            )
        });
    let nums: Vec<u16> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "unexpected line: {line}");
    Proc {
        child,
        btp_port: nums[0],
        admin_port: nums[1],
        stderr,
    }
}

/// GET on the admin port, JSON back (`None` on any failure).
pub fn admin_get(admin_port: u16, path: &str) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{admin_port}{path}");
    let r = ureq::get(&url)
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?;
    serde_json::from_str(&r.into_string().ok()?).ok()
}

/// Polls `f` every 20 ms; panics after 15 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then waits (15 s at most) for a clean exit.
pub fn stop(mut p: Proc, name: &str) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{name} exited with {status} after SIGTERM"
            );
            return;
        }
        assert!(Instant::now() < until, "{name} did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
