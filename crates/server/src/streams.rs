//! The templates this server runs on its own: every stream template of its
//! catalog (the templates folder and registered ones) and every template
//! whose cron or event triggers start runs, followed every 2 s through a
//! [`factory_engine::StreamSet`]. Webhook deliveries find their
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
            let path = entry.path_buf().and_then(|p| std::fs::canonicalize(p).ok());
            StreamSource {
                source: entry.source,
                path,
            }
        })
        .collect();
    state.streams.refresh(sources);
}

/// How often old feed rows are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keeps the runners in line with the catalog until the server stops, and
/// prunes the event feed to `retention` every hour.
pub(crate) async fn keep_running(
    state: Arc<AppState>,
    grace: std::time::Duration,
    retention: Option<std::time::Duration>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        if let Some(keep) = retention
            && pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            pruned_at = Some(std::time::Instant::now());
            match state.engine.prune_feed(keep).await {
                Ok(pruned) => tracing::debug!(?pruned, "event feed pruned"),
                Err(error) => tracing::warn!(%error, "cannot prune the event feed"),
            }
        }
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
