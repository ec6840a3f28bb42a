//! The shutdown signal: the first SIGINT or SIGTERM starts a graceful stop, a second one exits at once.

use tracing::{info, warn};

/// Resolves on the first SIGINT/SIGTERM and arms an immediate exit on the second.
pub async fn signal() {
    wait_for_signal().await;
    info!("shutdown requested, finishing in-flight work (signal again to exit now)");
    tokio::spawn(async {
        wait_for_signal().await;
        warn!("second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
