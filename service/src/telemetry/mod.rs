//! Logs (`tracing`, filtered by `RUST_LOG`, default `info`) and Prometheus metrics.

pub mod metrics;
pub mod trace_context;

use std::fmt;
use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::Settings;

/// What every process of the service sets up first: logs, and the metrics endpoint if
/// `METRICS_ADDR` is set.
pub fn init(settings: &Settings) -> anyhow::Result<()> {
    init_tracing();
    if let Some(address) = settings.metrics_addr {
        metrics::install(address).context("starting the metrics endpoint")?;
        tracing::info!(%address, "metrics at /metrics");
    }
    Ok(())
}

/// Installs the global log subscriber, with colours only on a terminal (a file or a pipe gets plain
/// text); a second call (tests) is a no-op.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,h2=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

/// Displays an error with its sources, `: `-separated, as anyhow's `{:#}` does: for logs, where an
/// error's own message names only what failed, not why.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
