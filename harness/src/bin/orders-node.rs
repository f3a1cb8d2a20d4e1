//! `orders-node`: the orders service as the consistency harness runs it, one process per instance, with
//! an optional deliberately broken variant (`--fault`). The production binary (`orders-service`) has no
//! such switch; this one exists so the harness can kill instances with SIGKILL and prove its checker
//! catches each weak spot of the naive design.

use anyhow::Context;
use clap::Parser;
use service::config::{Component, Settings};
use service::faults::TestFaults;
use service::startup::Application;
use service::{shutdown, telemetry};

#[derive(Parser)]
#[command(about = "The orders service for the consistency harness (with fault injection)")]
struct Cli {
    #[command(flatten)]
    settings: Settings,

    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    components: Vec<Component>,

    /// A broken variant (blind-cache-write, commit-then-produce, blind-fill, store-on-receipt), or a correct
    /// one (none, slow-fill).
    #[arg(long, default_value = "none", value_parser = parse_fault)]
    fault: TestFaults,
}

fn parse_fault(name: &str) -> Result<TestFaults, String> {
    TestFaults::variant(name).ok_or_else(|| {
        format!(
            "unknown fault {name:?}: expected one of {}, {}",
            TestFaults::CORRECT.join(", "),
            TestFaults::VARIANTS.join(", ")
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing();
    let shutdown = shutdown::on_signals();
    let application = Application::build_with_faults(cli.settings, cli.components, cli.fault)
        .await
        .context("starting the node")?;
    application.run(shutdown).await.context("the node failed")?;
    Ok(())
}
