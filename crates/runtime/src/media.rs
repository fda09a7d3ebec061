//! The `image` and `speech` runtimes.
//!
//! An image block's prompt is assembled like an `llm` block's (its SKILL.md,
//! upstream artifacts, params, config, item, corrections) and sent to the
//! image model its `model` resolves to; the picture is its one artifact. A
//! speech block speaks an upstream script: split into what one request may
//! take, one voice per speaker, the pieces joined into one file.

use std::time::Duration;

use factory_core::prompt::{self, PromptInputs, ReplyShape};
use factory_core::run::FailureKind;
use factory_core::template::{ArtifactFormat, Block, Runtime};
use factory_llm::{CallFailure, ImageRequest, LlmError, MediaCall, MediaReply, SpeechRequest};
use serde_json::Value;

use crate::llm::{LlmCall, LlmSettings, ResolvedMedia};
use crate::{AttemptInput, Execution};

pub(crate) async fn run(input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let fail = |kind: FailureKind, message: String| Execution {
        failure: Some(kind),
        ..Execution::failed(format!("block `{}`: {message}", block.id))
    };
    // The input moves into the call below (a reference to it would not be
    // `Send`: it holds a spawn callback); the settings are shared.
    let llm = input.llm.clone();
    let optional = factory_core::media_options::is_optional(&block.inputs.config);
    let unconfigured = llm.as_deref().is_none_or(|settings| {
        settings.media_provider_missing(input.model.as_deref(), block.runtime)
    });
    if optional && unconfigured {
        return left_out(block, llm.as_deref(), input.model.as_deref());
    }
    let Some(settings) = llm.as_deref() else {
        return fail(
            FailureKind::Permanent,
            format!(
                "needs a provider for {} and none is configured: set OPENAI_API_KEY, GEMINI_API_KEY or FACTORY_LLM_BASE_URL",
                if block.runtime == Runtime::Speech {
                    "speech"
                } else {
                    "images"
                }
            ),
        );
    };
    let resolved = match settings.resolve_media(input.model.as_deref(), block.runtime) {
        Ok(resolved) => resolved,
        Err(error) => return fail(FailureKind::Permanent, error),
    };
    let Some(artifact) = block.outputs.artifacts.first() else {
        return fail(FailureKind::Permanent, "declares no artifact".to_string());
    };
    let (format, key) = (artifact.format, artifact.key.clone());
    match block.runtime {
        Runtime::Speech => speech(input, settings, &resolved, format, &key).await,
        _ => image(input, settings, &resolved, format, &key).await,
    }
    .unwrap_or_else(|(kind, message)| fail(kind, message))
}

type Outcome = Result<Execution, (FailureKind, String)>;

/// Knobs that do not parse (validation refuses them; a template changed
/// under a run may still bring them): a permanent failure naming each.
fn knob_problems(
    problems: Vec<factory_core::media_options::MediaOptionError>,
) -> (FailureKind, String) {
    let text: Vec<String> = problems
        .iter()
        .map(|p| format!("inputs.config.{} must be {}", p.key, p.message))
        .collect();
    (FailureKind::Permanent, text.join("; "))
}

/// An optional block whose provider is not configured: done without a call
/// and without its artifact, saying so (a block that reads it gets nothing;
/// validation lets none read it).
fn left_out(block: &Block, settings: Option<&LlmSettings>, model: Option<&str>) -> Execution {
    let why = match settings {
        Some(settings) => settings
            .resolve_media(model, block.runtime)
            .err()
            .unwrap_or_default(),
        None => "no provider is configured".to_string(),
    };
    Execution {
        stdout: format!(
            "not made: {why}\nThe block is optional (inputs.config.optional): it is done without its artifact. Configure the provider and retry the block to make it.\n"
        )
        .into_bytes(),
        metrics: [("made".to_string(), Value::from(0))].into(),
        ..Execution::default()
    }
}

async fn image(
    input: AttemptInput<'_>,
    settings: &LlmSettings,
    resolved: &ResolvedMedia<'_>,
    format: ArtifactFormat,
    key: &str,
) -> Outcome {
    let block = input.block;
    let permanent = |message: String| (FailureKind::Permanent, message);
    let options =
        factory_core::media_options::parse_image(&block.inputs.config).map_err(knob_problems)?;
    let gemini = resolved.kind == crate::llm::ProviderKind::Gemini;
    // One template for either provider: a shape is said as a size or an
    // aspect ratio, and turned into what the provider takes.
    let (size, aspect_ratio) = factory_core::media_options::shape_for(
        options.size.as_deref(),
        options.aspect_ratio.as_deref(),
        gemini,
    )
    .map_err(|problem| {
        permanent(format!(
            "{problem} (model `{}` on `{}`); nothing was sent",
            resolved.model, resolved.provider
        ))
    })?;
    if gemini && options.quality.is_some() {
        return Err(permanent(format!(
            "inputs.config.quality is not something Gemini's image models take (`{}`); remove it; nothing was sent",
            resolved.provider
        )));
    }
    let skill = match (&block.skill, &input.template_dir) {
        (Some(skill), Some(dir)) => Some(
            crate::llm::read_skill(dir, skill)
                .map_err(|error| permanent(format!("cannot read its skill: {error}")))?,
        ),
        _ => None,
    };
    let upstream = crate::upstream_texts(&input.inputs);
    let assembled = prompt::assemble(&PromptInputs {
        block,
        skill: skill.as_deref(),
        params: input.params,
        upstream,
        corrections: input.corrections,
        reply_note: input.reply_note,
        shape: ReplyShape::Image,
        item: input.item,
        lens: input.lens,
        open_gaps: input.open_gaps.as_deref(),
    });
    let prompt_text = assembled.for_image();
    let chars = prompt_text.chars().count();
    if chars > options.max_prompt_chars {
        return Err(permanent(format!(
            "the image prompt is {chars} characters, more than inputs.config.max_prompt_chars ({}); nothing was sent. Trim what the block reads (inputs.config.upstream_max_chars), depend on fewer artifacts, or raise max_prompt_chars if the model takes more",
            options.max_prompt_chars
        )));
    }
    let request = ImageRequest {
        model: resolved.model.clone(),
        prompt: prompt_text.clone(),
        size,
        quality: options.quality,
        aspect_ratio,
        format: format.as_str().to_string(),
    };
    let timeout = Duration::from_millis(block.timeout);
    let reply = match resolved
        .client
        .make(MediaCall::Image(&request), timeout)
        .await
    {
        Ok(reply) => reply,
        Err(failure) => return Ok(failed(block, resolved, prompt_text, failure)),
    };
    let mut notes = Vec::new();
    if let Some(revised) = &reply.revised_prompt {
        notes.push(format!(
            "the provider's words about the prompt: {}",
            clip(revised, 500)
        ));
    }
    let call = record(settings, resolved, &reply, prompt_text, notes, 1, 0);
    Ok(finish(block, key, format, reply.bytes, call))
}

async fn speech(
    input: AttemptInput<'_>,
    settings: &LlmSettings,
    resolved: &ResolvedMedia<'_>,
    format: ArtifactFormat,
    key: &str,
) -> Outcome {
    let block = input.block;
    let permanent = |message: String| (FailureKind::Permanent, message);
    let mut options =
        factory_core::media_options::parse_speech(&block.inputs.config).map_err(knob_problems)?;
    let script = match &options.script {
        Some((from, wanted)) => input
            .inputs
            .iter()
            .find(|a| factory_core::run::group_id(&a.block) == from && &a.key == wanted),
        None => input.inputs.first(),
    }
    .ok_or_else(|| permanent("has no script: its upstream artifact is missing".to_string()))?;
    if script.format.is_media() {
        return Err(permanent(format!(
            "the script `{}.{}` is a `{}` artifact; a speech block speaks text",
            script.block,
            script.key,
            script.format.as_str()
        )));
    }
    let text = crate::text_for_reader(script.format, &script.content);
    let segments = factory_core::speech_script::segments(
        &text,
        script.format == ArtifactFormat::Json,
        &options,
    )
    .map_err(|problem| {
        permanent(format!(
            "script `{}.{}`: {problem}",
            script.block, script.key
        ))
    })?;
    if segments.len() > 1 && format == ArtifactFormat::Ogg {
        return Err(permanent(format!(
            "the script is spoken in {} requests, and Ogg pieces cannot be joined into one file; declare the artifact `mp3` or `wav`",
            segments.len()
        )));
    }
    // People's corrections say how to speak it (the words come from the
    // script's own block).
    if let Some(corrections) = input.corrections.filter(|c| !c.items.is_empty()) {
        let said: Vec<String> = corrections
            .items
            .iter()
            .map(|item| item.correction.trim().to_string())
            .collect();
        let joined = said.join(" ");
        options.instructions = Some(match options.instructions.take() {
            Some(own) => format!("{own} {joined}"),
            None => joined,
        });
    }
    let wire_format = match format {
        ArtifactFormat::Wav => "wav",
        ArtifactFormat::Ogg => "opus",
        _ => "mp3",
    };
    let timeout = Duration::from_millis(block.timeout);
    let started = std::time::Instant::now();
    let mut pieces = Vec::new();
    let mut requests = Vec::new();
    let mut calls = 0;
    let mut queued_ms = 0;
    let mut characters = 0u64;
    let mut media_type = None;
    let script_label = format!("{}.{}", script.block, script.key);
    let prompt_text = segments
        .iter()
        .map(|s| match &s.speaker {
            Some(speaker) => format!("[{speaker} · {}] {}", s.voice, s.text),
            None => format!("[{}] {}", s.voice, s.text),
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    for (n, segment) in segments.iter().enumerate() {
        // One timeout for the whole script: what earlier pieces took is gone
        // for the later ones; waits for a provider slot are not counted (as
        // for an llm call).
        let spent = started
            .elapsed()
            .saturating_sub(Duration::from_millis(queued_ms));
        let left = timeout.saturating_sub(spent);
        let request = SpeechRequest {
            model: resolved.model.clone(),
            input: segment.text.clone(),
            voice: segment.voice.clone(),
            speed: options.speed,
            instructions: options.instructions.clone(),
            format: wire_format.to_string(),
        };
        let outcome = if left.is_zero() {
            Err(CallFailure {
                error: LlmError::Timeout {
                    provider: resolved.provider.to_string(),
                    kind: factory_llm::TimeoutKind::Total,
                    timeout_ms: block.timeout,
                    attempts: calls,
                },
                raw_request: Value::Null,
                raw_response: String::new(),
                partial_text: String::new(),
                usage: factory_llm::Usage::default(),
                attempts: 0,
                latency_ms: spent.as_millis() as u64,
                queued_ms: 0,
                notes: vec![
                    "the block's timeout covers all pieces of its script; raise `timeout`"
                        .to_string(),
                ],
            })
        } else {
            resolved
                .client
                .make(MediaCall::Speech(&request), left)
                .await
        };
        match outcome {
            Ok(reply) => {
                calls += reply.attempts;
                queued_ms += reply.queued_ms;
                characters += segment.text.chars().count() as u64;
                media_type = reply.media_type.clone().or(media_type);
                requests.push(reply.raw_request.clone());
                pieces.push(reply.bytes);
            }
            Err(mut failure) => {
                failure.notes.insert(
                    0,
                    format!(
                        "piece {} of {} of script {script_label} failed; {} spoken before it",
                        n + 1,
                        segments.len(),
                        pieces.len()
                    ),
                );
                failure.attempts += calls;
                let mut execution = failed(block, resolved, prompt_text, failure);
                if let Some(call) = execution.llm.as_deref_mut() {
                    call.characters = characters;
                    call.cost_usd = settings.media_cost(
                        &resolved.model,
                        &factory_llm::Usage::default(),
                        0,
                        characters,
                    );
                }
                return Ok(execution);
            }
        }
    }
    let bytes = match format {
        ArtifactFormat::Wav => crate::audio::join_wav(&pieces),
        ArtifactFormat::Mp3 => Ok(crate::audio::join_mp3(&pieces)),
        _ => Ok(pieces.concat()),
    }
    .map_err(|problem| {
        // Another format, or another sample format, comes again; a piece cut
        // short may not.
        if problem.contains("is not a WAV") {
            (
                FailureKind::Permanent,
                format!(
                    "cannot join the spoken pieces: {problem} (the server sent something other than the `{wire_format}` asked for; declare the format it sends)"
                ),
            )
        } else if problem.contains("another sample format") {
            (
                FailureKind::Permanent,
                format!("cannot join the spoken pieces: {problem}"),
            )
        } else {
            (
                FailureKind::Provider,
                format!("cannot join the spoken pieces: {problem}"),
            )
        }
    })?;
    let reply = MediaReply {
        bytes: Vec::new(),
        media_type,
        model: resolved.model.clone(),
        usage: factory_llm::Usage::default(),
        revised_prompt: None,
        raw_request: Value::Array(requests),
        raw_response: format!(
            "[{} pieces of audio, {} bytes joined: the artifact]",
            pieces.len(),
            bytes.len()
        ),
        latency_ms: started.elapsed().as_millis() as u64,
        attempts: calls,
        queued_ms,
        notes: Vec::new(),
    };
    let notes = vec![format!(
        "script {script_label}: {} characters in {} request(s), voices {}",
        characters,
        segments.len(),
        {
            let mut voices: Vec<&str> = segments.iter().map(|s| s.voice.as_str()).collect();
            voices.sort_unstable();
            voices.dedup();
            voices.join(", ")
        }
    )];
    let call = record(
        settings,
        resolved,
        &reply,
        prompt_text,
        notes,
        0,
        characters,
    );
    Ok(finish(block, key, format, bytes, call))
}

/// The call's record, priced.
fn record(
    settings: &LlmSettings,
    resolved: &ResolvedMedia<'_>,
    reply: &MediaReply,
    prompt: String,
    mut notes: Vec<String>,
    images: u32,
    characters: u64,
) -> LlmCall {
    notes.extend(reply.notes.iter().cloned());
    LlmCall {
        provider: resolved.provider.to_string(),
        model: reply.model.clone(),
        usage: reply.usage,
        latency_ms: reply.latency_ms,
        calls: reply.attempts,
        stop_reason: None,
        prompt,
        raw_request: reply.raw_request.clone(),
        raw_response: reply.raw_response.clone(),
        cost_usd: settings
            .media_cost(&resolved.model, &reply.usage, images, characters)
            .or_else(|| settings.media_cost(&reply.model, &reply.usage, images, characters)),
        queued_ms: reply.queued_ms,
        response_format: String::new(),
        notes,
        error: None,
        images,
        characters,
    }
}

/// The made bytes as the block's artifact, when they are what it declared;
/// a provider that sent something else fails the attempt and says what came.
fn finish(
    block: &Block,
    key: &str,
    format: ArtifactFormat,
    bytes: Vec<u8>,
    call: LlmCall,
) -> Execution {
    let mut execution = Execution {
        llm: Some(Box::new(call)),
        ..Execution::default()
    };
    let path = block
        .outputs
        .artifacts
        .first()
        .map_or(key, |a| a.path.as_str());
    if let Some(problem) = crate::check_format(block, key, path, format, &bytes) {
        // Named only when it is another format than declared (a file too
        // large is still what it says it is).
        let other = sniff(&bytes).filter(|kind| Some(*kind) != format.media_kind());
        let came = other.map_or(String::new(), |kind| {
            format!(
                "; the provider sent {}: declare that format for this model",
                kind.media_type()
            )
        });
        execution.error = Some(format!("{problem}{came}"));
        // Another well-formed format, or too many bytes, comes again on
        // every try: only a broken file is worth another call.
        let again = other.is_some() || bytes.len() > crate::MAX_ARTIFACT_BYTES;
        execution.failure = Some(if again {
            FailureKind::Permanent
        } else {
            FailureKind::Provider
        });
        return execution;
    }
    execution.artifacts.insert(key.to_string(), bytes);
    execution
}

/// Which media the bytes are, by trying each kind.
fn sniff(bytes: &[u8]) -> Option<factory_audit::media::MediaKind> {
    use factory_audit::media::{MediaKind, inspect};
    [
        MediaKind::Png,
        MediaKind::Jpeg,
        MediaKind::Webp,
        MediaKind::Wav,
        MediaKind::Ogg,
        MediaKind::Pdf,
        MediaKind::Mp3,
    ]
    .into_iter()
    .find(|kind| inspect(*kind, bytes).is_ok())
}

/// A call that made nothing, recorded and classified like an llm call's.
fn failed(
    block: &Block,
    resolved: &ResolvedMedia<'_>,
    prompt: String,
    failure: CallFailure,
) -> Execution {
    crate::llm::failed_call_record(
        block,
        (resolved.provider, &resolved.model),
        prompt,
        Vec::new(),
        failure,
        None,
    )
}

fn clip(text: &str, limit: usize) -> String {
    let mut out: String = text.chars().take(limit).collect();
    if text.chars().count() > limit {
        out.push('…');
    }
    out
}
