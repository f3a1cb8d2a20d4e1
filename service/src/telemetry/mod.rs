//! Logs (`tracing`, filtered by `RUST_LOG`, default `info`) and Prometheus metrics.

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber; a second call (tests) is a no-op.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,h2=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
