//! The templates a run can be created from: JSON files in the server's
//! templates folder (their skills and goldens resolve beside them) and
//! templates registered through the API (kept in the store).

use std::path::PathBuf;

use factory_core::template::Template;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub blocks: usize,
    /// `file` or `registered`.
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip)]
    pub source: String,
    #[serde(skip)]
    pub template: Template,
}

impl CatalogEntry {
    pub fn path_buf(&self) -> Option<PathBuf> {
        self.path.as_ref().map(PathBuf::from)
    }
}

/// Every valid template; invalid files are skipped with a warning (the
/// validate endpoint explains them). Validation goes through the engine's
/// per-text cache, so listing on every page view re-reads files but does not
/// re-validate unchanged templates.
pub async fn catalog(state: &AppState) -> ApiResult<Vec<CatalogEntry>> {
    let mut entries = Vec::new();
    if let Some(dir) = &state.config.templates_dir {
        for (path, source) in factory_engine::template_files(dir) {
            match factory_engine::cached_pipeline(&source) {
                Ok(pipeline) => entries.push(entry(
                    pipeline.template().clone(),
                    source,
                    "file",
                    Some(path.to_string_lossy().into_owned()),
                )),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "skipping an invalid template")
                }
            }
        }
    }
    let registered = state.store.list_templates().await?;
    let mut seen = std::collections::BTreeSet::new();
    for record in registered {
        // Newest registration of each id only.
        if !seen.insert(record.template_id.clone()) {
            continue;
        }
        if entries.iter().any(|e| e.id == record.template_id) {
            continue;
        }
        if let Ok(pipeline) = factory_engine::cached_pipeline(&record.source) {
            entries.push(entry(
                pipeline.template().clone(),
                record.source,
                "registered",
                record.path,
            ));
        }
    }
    Ok(entries)
}

fn entry(
    template: Template,
    source: String,
    origin: &'static str,
    path: Option<String>,
) -> CatalogEntry {
    CatalogEntry {
        id: template.id.clone(),
        name: template.name.clone(),
        version: template.version.clone(),
        description: template.description.clone(),
        blocks: template.blocks.len(),
        origin,
        path,
        source,
        template,
    }
}

pub async fn find(state: &AppState, id: &str) -> ApiResult<CatalogEntry> {
    let all = catalog(state).await?;
    let known: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    all.into_iter().find(|e| e.id == id).ok_or_else(|| {
        ApiError::not_found(
            "template_not_found",
            format!(
                "no template `{id}`; known templates: {} (register one with POST /api/v1/templates)",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
    })
}
