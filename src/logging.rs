//! Log setup: `tracing` to stderr, JSON by default (`--human` for text). Per-packet events are
//! DEBUG, so at the default `info` level they are filtered before any formatting work.
pub fn init(level: &str, human: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if human {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
