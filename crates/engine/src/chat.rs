//! The META chat (seed 003 §5): a chat on the run page that knows the whole
//! run. Each turn sends [`factory_core::run_brief`]'s brief — blocks, audits,
//! gaps, corrections, convergence, read fresh — as the cacheable system
//! context and the conversation so far as the user's turn, through the same
//! provider rules as `llm` blocks (the run's model, else the template's,
//! else the configured default), and keeps both messages as chat records
//! beside the block chats (key `_run/<time-ordered id>`, which no block id
//! can start with).

use std::time::Duration;

use factory_core::run_brief::{self, BriefInput, Correction};
use factory_store::{RunRecord, kinds};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineError, Result, RunHandle};

/// Prefix of the run chat's record keys (block ids start with a letter or digit).
pub const RUN_CHAT: &str = "_run";

/// Earlier messages sent back with each turn, at most (the newest ones).
const HISTORY_TURNS: usize = 20;
/// How long one chat turn may take.
const TURN_TIMEOUT: Duration = Duration::from_secs(120);

/// One message of a chat (the run's or a block's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Why a chat turn could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the chat message is empty")]
    EmptyMessage,
    /// No provider, or none for the model the run asks for.
    #[error("{0}")]
    NotConfigured(String),
    #[error("the LLM provider failed: {0}")]
    Provider(String),
}

/// The answer to one turn.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReply {
    pub reply: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Characters of run context the model was given.
    pub context_chars: usize,
}

impl Engine {
    /// The brief the META chat gives the model about `run_id`, read fresh.
    pub async fn run_brief(&self, run_id: &str) -> Result<String> {
        let handle = self.open(run_id).await?;
        self.brief_of(&handle).await
    }

    /// The brief of the run in `handle`: its items and reviews read once,
    /// for the corrections and the convergence table.
    async fn brief_of(&self, handle: &RunHandle) -> Result<String> {
        let run_id = &handle.doc().run_id;
        let items = self.store.items(run_id, None, None).await?;
        let feedback = self.store.feedback(run_id).await?;
        let reviewed = !items.is_empty() || !feedback.is_empty();
        let convergence = (handle.pipeline().template().convergence.is_some() || reviewed)
            .then(|| crate::feedback::convergence_of(handle, &feedback, &items));
        let corrections: Vec<Correction> = items
            .into_iter()
            .map(|i| Correction {
                text: if i.expert_correction.trim().is_empty() {
                    i.source_text
                } else {
                    i.expert_correction
                },
                target: i.skill_target,
                priority: i.priority,
                status: i.status,
                finding_type: i.finding_type,
                source: i.source,
            })
            .collect();
        Ok(run_brief::brief(&BriefInput {
            pipeline: handle.pipeline(),
            doc: handle.doc(),
            corrections: &corrections,
            convergence: convergence.as_ref(),
        }))
    }

    /// Why the META chat of the run in `handle` cannot be had, if it cannot.
    pub fn run_chat_unavailable(&self, handle: &RunHandle) -> Option<String> {
        self.chat_target(handle.doc(), handle.pipeline()).err()
    }

    /// The provider and model the run's chat talks to: the run's model,
    /// else the template's, else the configured default.
    fn chat_target(
        &self,
        doc: &factory_core::run::RunDoc,
        pipeline: &factory_core::Pipeline,
    ) -> std::result::Result<factory_runtime::llm::Resolved<'_>, String> {
        let Some(settings) = self.config.llm.as_deref() else {
            return Err("no LLM provider is configured".to_string());
        };
        let asked = doc
            .default_model
            .as_deref()
            .or(pipeline.template().default_model.as_deref());
        settings
            .resolve(asked)
            .map_err(|e| format!("the chat needs a configured LLM provider: {e}"))
    }

    /// One META chat turn by `actor`: the run's brief and the conversation
    /// so far go to the run's model; the question and the answer are kept.
    pub async fn run_chat(&self, actor: &str, run_id: &str, message: &str) -> Result<ChatReply> {
        let message = message.trim();
        if message.is_empty() {
            return Err(ChatError::EmptyMessage.into());
        }
        let handle = self.open(run_id).await?;
        let doc = handle.doc().clone();
        let resolved = self
            .chat_target(&doc, handle.pipeline())
            .map_err(ChatError::NotConfigured)?;
        let brief = self.brief_of(&handle).await?;
        let system = format!("{}\n\n{brief}", run_brief::INSTRUCTIONS);
        let earlier = chat_records(self, &doc.run_id, RUN_CHAT).await?;
        let mut transcript = String::new();
        let skip = earlier.len().saturating_sub(HISTORY_TURNS);
        for (_, m) in earlier.iter().skip(skip) {
            transcript.push_str(&format!("{}: {}\n\n", m.role, m.text));
        }
        transcript.push_str(&format!("user: {message}\n"));
        let request = factory_llm::ChatRequest {
            model: resolved.model.clone(),
            system: vec![factory_llm::Part::cacheable(system.clone())],
            user: vec![factory_llm::Part::new(transcript)],
            max_tokens: 1024,
            ..Default::default()
        };
        let reply = resolved
            .client
            .complete(&request, TURN_TIMEOUT)
            .await
            .map_err(|e| ChatError::Provider(e.to_string()))?;
        if reply.text.trim().is_empty() {
            // A 200 with nothing in it is a failed turn, not an answer to keep.
            return Err(ChatError::Provider(format!(
                "model `{}` answered with an empty message",
                reply.model
            ))
            .into());
        }

        let now = crate::now_ms();
        for (role, text, model, who) in [
            ("user", message.to_string(), None, actor.to_string()),
            (
                "assistant",
                reply.text.clone(),
                Some(reply.model.clone()),
                format!("llm:{}", reply.model),
            ),
        ] {
            let body = ChatMessage {
                role: role.to_string(),
                text,
                model,
            };
            self.store
                .put_record(&RunRecord {
                    run_id: doc.run_id.clone(),
                    template_id: doc.template_id.clone(),
                    kind: kinds::CHAT.to_string(),
                    key: format!("{RUN_CHAT}/{}", uuid::Uuid::now_v7()),
                    actor: who,
                    at: now,
                    body: serde_json::to_value(body)
                        .map_err(|e| EngineError::Emit(e.to_string()))?,
                })
                .await?;
        }
        Ok(ChatReply {
            reply: reply.text,
            model: reply.model,
            input_tokens: reply.usage.input_tokens,
            output_tokens: reply.usage.output_tokens,
            context_chars: system.chars().count(),
        })
    }
}

/// The chat records of `run_id` under `prefix` (a block id, or [`RUN_CHAT`]).
pub async fn chat_records(
    engine: &Engine,
    run_id: &str,
    prefix: &str,
) -> Result<Vec<(RunRecord, ChatMessage)>> {
    let prefix = format!("{prefix}/");
    let records = engine.store.records(run_id, kinds::CHAT).await?;
    Ok(records
        .into_iter()
        .filter(|r| r.key.starts_with(&prefix))
        .filter_map(|r| {
            let message = serde_json::from_value(r.body.clone()).ok()?;
            Some((r, message))
        })
        .collect())
}
