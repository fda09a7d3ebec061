//! Block executors. Given a block, its inputs and a fresh directory, produce
//! the block's artifacts, metrics and logs.
//!
//! Architecture Invariant: runtimes know nothing of stores, runs or the
//! scheduler. They take an [`AttemptInput`] and return an [`Execution`] of
//! plain bytes; the engine stores and records the result. A runtime never
//! panics on user input: every failure is an `Execution` with an `error` that
//! names the block, artifact or file at fault.

pub mod audio;
mod builtin;
mod command;
pub mod confine;
mod directory;
pub mod http;
pub mod llm;
mod media;
pub mod process;
mod review_page;

use std::collections::BTreeMap;
use std::path::PathBuf;

use factory_core::run::Corrections;
use factory_core::template::{ArtifactFormat, Block, Runtime};
use serde_json::Value;

pub use directory::{bundle_binary_files, bundle_files, pack_directory, unpack_directory};

/// An upstream artifact handed to a block.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub block: String,
    pub key: String,
    /// The path the upstream block declared (its file name is reused).
    pub path: String,
    pub format: ArtifactFormat,
    pub content: Vec<u8>,
}

/// Everything one attempt needs.
pub struct AttemptInput<'a> {
    pub run_id: &'a str,
    pub block: &'a Block,
    pub attempt: u32,
    /// The run version (pass through the feedback loop) this attempt is in.
    pub run_version: u32,
    pub params: &'a BTreeMap<String, Value>,
    pub inputs: Vec<InputArtifact>,
    pub corrections: Option<&'a Corrections>,
    /// Why the previous reply could not be used (`llm` blocks).
    pub reply_note: Option<&'a factory_core::run::ReplyNote>,
    /// The run's sampling (`llm` blocks), under the block's own.
    pub run_sampling: &'a BTreeMap<String, Value>,
    /// The block's golden examples by artifact key (their shape becomes the
    /// JSON schema an `llm` block asks for).
    pub golden: &'a BTreeMap<String, Vec<u8>>,
    /// A directory for this attempt only; created fresh (emptied if it exists).
    pub attempt_dir: PathBuf,
    /// The template's directory, for scripts referenced relative to it.
    pub template_dir: Option<PathBuf>,
    /// Called with the process id once a subprocess has started.
    pub on_spawn: Option<Box<dyn FnOnce(i32) + Send + 'a>>,
    /// Configured LLM providers, for `llm` blocks.
    pub llm: Option<std::sync::Arc<llm::LlmSettings>>,
    /// The model this attempt uses (run override, block, run or template
    /// default); None for the configured default.
    pub model: Option<String>,
    /// Told an `llm` block's reply so far while it streams in.
    pub progress: Option<factory_llm::Progress>,
    /// For an instance of a fan-out block: its item (an `llm` block's
    /// prompt names it; a command reads `FACTORY_ITEM`).
    pub item: Option<&'a factory_core::run::InstanceOf>,
    /// For a lens block: its perspective and past ratings (an `llm` block's
    /// prompt carries them; a command reads `FACTORY_PERSPECTIVE` and
    /// `FACTORY_FEEDBACK`).
    pub lens: Option<&'a factory_core::lens::Brief>,
    /// For an `llm` block: the open gaps that concern it, as the prompt's
    /// "OPEN GAPS" section.
    pub open_gaps: Option<String>,
}

/// What an attempt produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Execution {
    /// Declared artifacts, by key, as stored bytes.
    pub artifacts: BTreeMap<String, Vec<u8>>,
    pub metrics: BTreeMap<String, Value>,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Set when the attempt failed; names what went wrong and where.
    pub error: Option<String>,
    pub timed_out: bool,
    /// Whose fault a failure was (None: the engine's default handling).
    pub failure: Option<factory_core::run::FailureKind>,
    /// The offending part of an unusable reply.
    pub reply_excerpt: Option<String>,
    /// The provider call of an `llm` block.
    pub llm: Option<Box<llm::LlmCall>>,
}

impl Execution {
    /// An attempt that failed with `error` before producing anything.
    pub fn failed(error: impl Into<String>) -> Execution {
        Execution {
            error: Some(error.into()),
            ..Execution::default()
        }
    }
}

/// Logs longer than this keep only their tail.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// Runs one attempt of a block.
pub async fn execute(input: AttemptInput<'_>) -> Execution {
    // Only subprocesses get a directory: creating and deleting one per
    // attempt costs more than a whole built-in block.
    if input.block.runtime == Runtime::Command
        && let Err(error) = prepare_dir(&input.attempt_dir)
    {
        return Execution::failed(format!(
            "cannot prepare the attempt directory {}: {error}",
            input.attempt_dir.display()
        ));
    }
    match input.block.runtime {
        Runtime::Command => command::run(input).await,
        Runtime::Builtin => builtin::run(input).await,
        Runtime::Llm => llm::run(input).await,
        Runtime::Http => http::run(input).await,
        Runtime::Image | Runtime::Speech => media::run(input).await,
    }
}

fn prepare_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

/// An artifact as a reader of text gets it — a prompt, the block chat, a
/// diff, `factory prompt`: media as one line saying what it is, a folder's
/// binary files as a line each, text as text.
pub fn text_for_reader(format: ArtifactFormat, bytes: &[u8]) -> String {
    if let Some(kind) = format.media_kind() {
        return format!(
            "[{} artifact of {} bytes{}; media is not put into prompts]",
            format.as_str(),
            bytes.len(),
            factory_audit::media::inspect(kind, bytes)
                .map(|facts| format!(": {}", facts.summary()))
                .unwrap_or_default()
        );
    }
    String::from_utf8_lossy(&text_bytes(format, bytes)).into_owned()
}

/// The upstream artifacts as a prompt reads them (an `llm` or `image` block).
pub fn upstream_texts(inputs: &[InputArtifact]) -> Vec<factory_core::prompt::UpstreamText> {
    inputs
        .iter()
        .map(|artifact| factory_core::prompt::UpstreamText {
            block: artifact.block.clone(),
            key: artifact.key.clone(),
            format: artifact.format,
            text: text_for_reader(artifact.format, &artifact.content),
        })
        .collect()
}

/// A text artifact's bytes as a reader of text gets them: a folder's
/// binary files a line each ([`text_view`]), anything else as it is.
pub fn text_bytes(format: ArtifactFormat, bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if format == ArtifactFormat::Directory {
        directory::text_view(bytes)
    } else {
        std::borrow::Cow::Borrowed(bytes)
    }
}

/// The largest artifact an attempt may produce (a podcast episode, a PDF).
pub const MAX_ARTIFACT_BYTES: usize = 64 * 1024 * 1024;

/// Checks a produced artifact against its declared format, so a broken JSON
/// file fails the attempt that wrote it rather than the block that reads it.
pub fn check_format(
    block: &Block,
    key: &str,
    path: &str,
    format: ArtifactFormat,
    bytes: &[u8],
) -> Option<String> {
    if bytes.len() > MAX_ARTIFACT_BYTES {
        return Some(format!(
            "artifact `{key}` of block `{}` ({path}) is {} bytes; an artifact may be at most {MAX_ARTIFACT_BYTES} bytes (64 MiB)",
            block.id,
            bytes.len(),
        ));
    }
    if let Some(kind) = format.media_kind() {
        return factory_audit::media::inspect(kind, bytes)
            .err()
            .map(|problem| {
                format!(
                    "artifact `{key}` of block `{}` ({path}, declared `{}`) {problem}",
                    block.id,
                    format.as_str()
                )
            });
    }
    match format {
        ArtifactFormat::Json => serde_json::from_slice::<Value>(bytes).err().map(|error| {
            format!(
                "artifact `{key}` of block `{}` ({path}) is not valid JSON: {error}",
                block.id
            )
        }),
        _ => None,
    }
}
