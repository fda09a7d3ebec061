//! What an attempt reads: its upstream blocks' artifacts and the run's
//! uploaded files. Located first (addresses only: enough for a memo key),
//! then read.

use factory_core::run::{BlockStatus, RunDoc};
use factory_core::template::{ArtifactFormat, Block, DependencyMode};
use factory_runtime::InputArtifact;
use factory_store::Store;

/// An input an attempt reads, located but not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputRef {
    /// The upstream block, or `uploads` for the run's uploaded files.
    pub block: String,
    pub key: String,
    pub path: String,
    pub format: ArtifactFormat,
    pub hash: String,
}

/// The artifacts of `block`'s dependencies (a failed or blocked one of an
/// `any` block contributes nothing; a fan-out block, each of its done
/// instances' — `inputs/<block>[<key>]/…` for a command) and the uploaded files its
/// `inputs.files` patterns match.
pub(crate) async fn locate(
    store: &dyn Store,
    doc: &RunDoc,
    block: &Block,
) -> Result<Vec<InputRef>, String> {
    let mut inputs = Vec::new();
    for dep in &block.inputs.depends {
        let settled_without_output = doc
            .blocks
            .get(&dep.block)
            .is_some_and(|s| s.status != BlockStatus::Done);
        if block.inputs.mode == DependencyMode::Any && settled_without_output {
            continue;
        }
        for (from, artifact) in doc.dependency_artifacts(&dep.block, &dep.key)? {
            inputs.push(InputRef {
                block: from,
                key: dep.key.clone(),
                path: artifact.path.clone(),
                format: artifact.format,
                hash: artifact.hash.clone(),
            });
        }
    }
    inputs.extend(uploads(store, doc, block).await?);
    Ok(inputs)
}

/// Reads the located inputs' contents.
pub(crate) async fn read(
    store: &dyn Store,
    located: Vec<InputRef>,
) -> Result<Vec<InputArtifact>, String> {
    let mut inputs = Vec::with_capacity(located.len());
    for input in located {
        let content = store.get_blob(&input.hash).await.map_err(|error| {
            if input.block == "uploads" {
                format!("cannot read uploaded file `{}`: {error}", input.key)
            } else {
                format!(
                    "cannot read artifact `{}.{}`: {error}",
                    input.block, input.key
                )
            }
        })?;
        inputs.push(InputArtifact {
            block: input.block,
            key: input.key,
            path: input.path,
            format: input.format,
            content,
        });
    }
    Ok(inputs)
}

/// The run's uploaded files that match the block's `inputs.files` patterns,
/// as inputs of the pseudo-block `uploads`.
async fn uploads(store: &dyn Store, doc: &RunDoc, block: &Block) -> Result<Vec<InputRef>, String> {
    if block.inputs.files.is_empty() {
        return Ok(Vec::new());
    }
    let patterns: Vec<glob::Pattern> = block
        .inputs
        .files
        .iter()
        .map(|p| {
            glob::Pattern::new(p)
                .map_err(|e| format!("block `{}`: inputs.files pattern `{p}`: {e}", block.id))
        })
        .collect::<Result<_, _>>()?;
    let records = store
        .records(&doc.run_id, factory_store::kinds::UPLOAD)
        .await
        .map_err(|error| format!("cannot list the run's uploaded files: {error}"))?;
    let mut inputs = Vec::new();
    for record in records {
        let name = record.key;
        if !patterns.iter().any(|p| p.matches(&name)) {
            continue;
        }
        let Some(hash) = record.body.get("hash").and_then(|h| h.as_str()) else {
            return Err(format!("uploaded file `{name}` has no content hash"));
        };
        let format = match name
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
        {
            Some(ext) if ext == "md" || ext == "markdown" => ArtifactFormat::Md,
            Some(ext) if ext == "json" => ArtifactFormat::Json,
            Some(ext) if ext == "csv" => ArtifactFormat::Csv,
            Some(ext) if ext == "html" || ext == "htm" => ArtifactFormat::Html,
            Some(ext) if ext == "yaml" || ext == "yml" => ArtifactFormat::Yaml,
            // Uploaded media stays media: never read into a prompt as text.
            Some(ext) if ext == "png" => ArtifactFormat::Png,
            Some(ext) if ext == "jpg" || ext == "jpeg" => ArtifactFormat::Jpeg,
            Some(ext) if ext == "webp" => ArtifactFormat::Webp,
            Some(ext) if ext == "mp3" => ArtifactFormat::Mp3,
            Some(ext) if ext == "wav" => ArtifactFormat::Wav,
            Some(ext) if ext == "ogg" || ext == "oga" || ext == "opus" => ArtifactFormat::Ogg,
            Some(ext) if ext == "pdf" => ArtifactFormat::Pdf,
            _ => ArtifactFormat::Text,
        };
        inputs.push(InputRef {
            block: "uploads".to_string(),
            key: name.clone(),
            path: name,
            format,
            hash: hash.to_string(),
        });
    }
    Ok(inputs)
}
