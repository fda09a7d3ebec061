//! The stream templates this server runs: every stream template of its
//! catalog (the templates folder and registered ones), followed every 2 s
//! through a [`factory_engine::StreamSet`]. Webhook deliveries find their
//! template there rather than re-reading the catalog per request.

use std::sync::Arc;

use factory_engine::StreamSource;

use crate::AppState;

/// Brings the runners in line with the catalog.
pub(crate) async fn refresh(state: &AppState) {
    let catalog = match crate::templates::catalog(state).await {
        Ok(catalog) => catalog,
        Err(error) => {
            tracing::warn!(error = %error.message, "cannot read the template catalog");
            return;
        }
    };
    let sources = catalog
        .into_iter()
        .map(|entry| {
            // Absolute: steps run in their own working directory.
            let dir = entry
                .path_buf()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .and_then(|p| p.parent().map(|d| d.to_path_buf()));
            StreamSource {
                source: entry.source,
                dir,
            }
        })
        .collect();
    state.streams.refresh(sources);
}

/// Keeps the runners in line with the catalog until the server stops.
pub(crate) async fn keep_running(
    state: Arc<AppState>,
    grace: std::time::Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        refresh(&state).await;
    }
    // Batches in flight finish within the shutdown grace, or are taken
    // again after the restart (their leases run out).
    if tokio::time::timeout(grace, state.streams.stop_all())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "stream batches still running at shutdown; their records are taken again after the restart"
        );
    }
}
