//! Log setup: `tracing` to stderr, JSON by default (`--human` for text), through a bounded
//! non-blocking writer so a slow stderr never stalls a shard. Per-packet events are DEBUG, so
//! at the default `info` level they are filtered before any formatting work.
//!
//! [`init_captured`] sends the same JSON lines to memory instead, with a filter that can be
//! changed later: the demo uses it to follow one packet by `correlationId`, tests to read
//! what the nodes logged.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;

/// A bare level (`debug`) applies to this crate; other crates log warnings and errors only.
/// Anything else is an `EnvFilter` directive string, used as given.
fn filter(level: &str) -> EnvFilter {
    let directives = match level {
        "trace" | "debug" | "info" | "warn" | "error" => format!("warn,ilp_connector={level}"),
        other => other.to_owned(),
    };
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("warn,ilp_connector=info"))
}

/// Lines the stderr writer may hold before it drops new ones.
const BUFFERED_LINES: usize = 64 * 1024;

/// Log lines dropped because stderr did not keep up (set once [`init`] ran).
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer was behind (0 before [`init`]).
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, |c| c.dropped_lines())
}

/// Keeps the log writer thread alive; dropping it flushes what is buffered.
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber writing to stderr. Shards never block on a log line: lines
/// go to a bounded in-memory buffer written by a thread of its own, and when that buffer is
/// full new lines are dropped and counted ([`dropped_lines`], `ilp_log_lines_dropped_total`).
pub fn init(level: &str, human: bool) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(writer);
    if human {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
    LogGuard(guard)
}

/// JSON log lines kept in memory.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Every line logged so far, parsed (lines that are not JSON are skipped).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }

    /// Everything logged so far, as text.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Changes the level of a subscriber installed by [`init_captured`].
pub struct LevelHandle(Box<dyn Fn(&str) + Send + Sync>);

impl LevelHandle {
    pub fn set(&self, level: &str) {
        (self.0)(level)
    }
}

/// Installs the global JSON subscriber writing into memory at `level`.
pub fn init_captured(level: &str) -> (Captured, LevelHandle) {
    let captured = Captured::default();
    let sink = captured.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(move || sink.clone())
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    let set = move |level: &str| {
        let _ = handle.reload(filter(level));
    };
    (captured, LevelHandle(Box::new(set)))
}
