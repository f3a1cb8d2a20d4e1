//! `orders-node`: the orders service as the consistency harness runs it, one process per instance,
//! with an optional deliberately broken variant (`--variant`). The production binary (`orders-service`)
//! has no such switch; this one exists so the harness can kill instances with SIGKILL and prove its
//! checker catches each weak spot of the naive design.

use anyhow::Context;
use clap::Parser;
use harness::node::{self, Variant};
use service::config::{Component, Settings};
use service::{shutdown, telemetry};

#[derive(Parser)]
#[command(about = "The orders service for the consistency harness (with fault injection)")]
struct Cli {
    #[command(flatten)]
    settings: Settings,

    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    components: Vec<Component>,

    /// The service's variant: correct, or a broken one.
    #[arg(long, value_enum, default_value_t = Variant::Correct)]
    variant: Variant,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.settings)?;
    let shutdown = shutdown::on_signals();
    node::run(cli.settings, cli.components, cli.variant, shutdown)
        .await
        .context("the node failed")?;
    Ok(())
}
