//! `orders-service`: the orders gRPC API, the outbox relay and the cache updater, together by default or
//! one part per process (`run --components relay`), plus `migrate` and `health-check`.

use anyhow::Context;
use clap::Parser;
use service::config::{Cli, Command, Component};
use service::grpc::health::WireStatus;
use service::startup::Application;
use service::storage::Storage;
use service::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = cli.settings;
    telemetry::init_tracing();
    let components = match cli.command {
        Some(Command::Migrate) => {
            let storage = Storage::connect_lazy(&settings.database_url, 1)?;
            storage.migrate().await.context("applying the migrations")?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Some(Command::HealthCheck { service }) => {
            let status = service::grpc::health::probe(settings.grpc_addr, &service).await?;
            println!("{service:?}: {status:?}");
            std::process::exit(if status == WireStatus::Serving { 0 } else { 1 });
        }
        Some(Command::Run { components }) => components,
        None => vec![Component::Api, Component::Relay, Component::Updater],
    };
    // Only the service serves metrics: `migrate` and `health-check` run beside it, with the same
    // environment, and would find METRICS_ADDR taken.
    telemetry::init(&settings)?;
    let shutdown = shutdown::on_signals();
    let application = Application::build(settings, components)
        .await
        .context("starting the service")?;
    application.run(shutdown).await.context("the service failed")?;
    tracing::info!("stopped");
    Ok(())
}
