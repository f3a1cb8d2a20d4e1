//! Graceful shutdown: one `CancellationToken` that every part of the service watches.
//!
//! On Ctrl-C or SIGTERM the token is cancelled; the gRPC server stops accepting and drains the calls in
//! flight, the relay finishes its round and flushes the producer, the updater stops reading and its
//! consumer commits what was handled and leaves the group.

use crate::telemetry::ErrorChain;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled by the first Ctrl-C or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    terminate.recv().await;
                }
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "cannot listen for SIGTERM; only Ctrl-C stops the service");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
            _ = terminate => tracing::info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    token
}
