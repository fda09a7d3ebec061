//! The template as written by people: a serde mirror of the JSON file.
//!
//! Field groups and names follow the Block v2 schema of the architecture seed
//! exactly (identity, execution, trigger, inputs, outputs, execution control,
//! lifecycle, scope, lens, record_state). Every struct denies unknown fields, so
//! the JSON Schema generated from these types (`factory schema`) is also the
//! validator's first pass. Runtime `state` is deliberately absent: it is owned by
//! the engine and a template that carries it is rejected.
//!
//! These types are "low" (ripgrep's term): they say what the JSON looks like.
//! [`crate::pipeline::Pipeline`] is the "high", validated form the engine uses.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A pipeline template: the whole JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Process Factory template")]
pub struct Template {
    /// Stable machine id, e.g. `clone-factory`.
    pub id: String,
    /// Human name shown in listings.
    pub name: String,
    /// Template version, free-form (e.g. `1.0.0`); recorded with every run.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Run parameters the template declares. A run may only pass declared ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamSpec>,
    /// Named autonomy profiles, chosen per run with `--autonomy NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub autonomy_profiles: BTreeMap<String, AutonomyProfile>,
    /// Model for `llm` blocks whose `model` is null (a run may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// Run-wide audit settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<TemplateAudit>,
    /// Ship criteria of the feedback loop (seed `002`); absent: the seed's
    /// thresholds and no automated score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<ConvergenceSpec>,
    /// The instruction an `llm` block reads above the human corrections it
    /// must apply (gate rejections, routed review items). Absent: a generic
    /// one that speaks of "a reviewer".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrections_instruction: Option<String>,
    pub blocks: Vec<Block>,
}

impl Template {
    /// [`Template::corrections_instruction`] or the generic default.
    pub fn corrections_instruction(&self) -> &str {
        self.corrections_instruction
            .as_deref()
            .filter(|text| !text.trim().is_empty())
            .unwrap_or(crate::transitions::CORRECTIONS_INSTRUCTION)
    }
}

/// When a run that goes through review rounds is ready to ship.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvergenceSpec {
    /// The block whose metric is each version's automated score (e.g.
    /// `clone-tester`); absent: the score is not a criterion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_block: Option<String>,
    /// The metric of `score_block`, in percent.
    #[serde(default = "default_score_metric")]
    pub score_metric: String,
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    /// Percent of scenario ratings that "sound like me".
    #[serde(default = "default_min_approval")]
    pub min_approval: f64,
    /// Percent of extraction verdicts that are "correct".
    #[serde(default = "default_min_accuracy")]
    pub min_accuracy: f64,
    #[serde(default)]
    pub max_critical: u32,
    #[serde(default = "default_max_high")]
    pub max_high: u32,
}

impl Default for ConvergenceSpec {
    fn default() -> Self {
        ConvergenceSpec {
            score_block: None,
            score_metric: default_score_metric(),
            min_score: default_min_score(),
            min_approval: default_min_approval(),
            min_accuracy: default_min_accuracy(),
            max_critical: 0,
            max_high: default_max_high(),
        }
    }
}

fn default_score_metric() -> String {
    "score".to_string()
}
fn default_min_score() -> f64 {
    90.0
}
fn default_min_approval() -> f64 {
    80.0
}
fn default_min_accuracy() -> f64 {
    90.0
}
fn default_max_high() -> u32 {
    3
}

/// Run-wide settings of the D1–D5 audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateAudit {
    /// The run param naming the subject (e.g. `expert_name`), whose density
    /// D2 measures. Absent: `expert_name`, then `subject`, if declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_param: Option<String>,
}

/// Per-block settings of the D1–D5 audit (an extension of Block v2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockAudit {
    /// Golden example per artifact key: a file path relative to the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub golden: BTreeMap<String, String>,
    /// A composite (0–10) below this flags the block for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub threshold: Option<f64>,
    /// Below the threshold, retry (within `max_retries`) with the audit's fix
    /// suggestions as corrections instead of only flagging.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// Below the threshold once no retry is left (or with `retry` off), the
    /// block fails instead of being flagged, so its artifacts never reach
    /// downstream blocks (like a blocking asset check in Dagster).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocking: bool,
}

impl Template {
    /// Every param that has a default, with it: the params of a run or a
    /// stream step that nobody passes params to.
    pub fn param_defaults(&self) -> BTreeMap<String, Value> {
        self.params
            .iter()
            .filter_map(|(name, spec)| spec.default.clone().map(|v| (name.clone(), v)))
            .collect()
    }
}

/// A declared run parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// A required parameter without a default must be given at run creation.
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// How much a human is in the loop for one block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Autonomy {
    /// The block's gate stops the run until a person approves.
    Gate,
    /// The block runs on; its output is flagged for optional review.
    Guided,
    /// No human involvement.
    Auto,
}

impl Autonomy {
    pub fn as_str(self) -> &'static str {
        match self {
            Autonomy::Gate => "gate",
            Autonomy::Guided => "guided",
            Autonomy::Auto => "auto",
        }
    }
}

/// A named set of per-block autonomy levels (the "autonomy dial").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutonomyProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Level for blocks the profile does not list. Absent: the template's own
    /// behaviour (`gate` where `human_gate` is set, `auto` elsewhere). It does
    /// not lower a gate marked `separate_reviewer`; list that block to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Autonomy>,
    /// Per-block levels, keyed by block id.
    #[serde(default)]
    pub blocks: BTreeMap<String, Autonomy>,
}

/// One block: the universal execution unit (Block v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Block {
    // ── Identity ──
    /// Unique within the template: lowercase letters, digits, `-` and `_`.
    pub id: String,
    pub name: String,
    /// Layer label such as `L0` or `L2.5`; blocks are drawn and ordered by layer.
    pub layer: String,
    #[serde(rename = "type")]
    pub block_type: BlockType,
    /// What the block does, for the operator's guide panel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    // ── Execution ──
    /// Skill name; maps to `skills/<skill>/SKILL.md` beside the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
    /// Model alias or id; `null` inherits the run's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Milliseconds before an attempt is killed.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub timeout: u64,
    pub runtime: Runtime,

    // ── Trigger ──
    #[serde(default)]
    pub trigger: Trigger,

    // ── Inputs ──
    #[serde(default)]
    pub inputs: Inputs,

    // ── Outputs ──
    #[serde(default)]
    pub outputs: Outputs,

    // ── Execution control ──
    #[serde(default)]
    pub execution: ExecutionControl,

    // ── Dynamic fan-out ──
    /// Runs the block once per item of a list known only at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,

    // ── Lifecycle, scope, lens, record state (patterns 2 and 3) ──
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lens: Option<Lens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_state: Option<RecordState>,

    // ── Audit (extension) ──
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<BlockAudit>,
}

fn default_timeout_ms() -> u64 {
    300_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BlockType {
    Extract,
    Validate,
    Build,
    Orchestrate,
    Research,
    Ingest,
}

impl ArtifactFormat {
    /// The name a template writes.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::Md => "md",
            ArtifactFormat::Json => "json",
            ArtifactFormat::Html => "html",
            ArtifactFormat::Text => "text",
            ArtifactFormat::Url => "url",
            ArtifactFormat::Csv => "csv",
            ArtifactFormat::Yaml => "yaml",
            ArtifactFormat::Directory => "directory",
            ArtifactFormat::Png => "png",
            ArtifactFormat::Jpeg => "jpeg",
            ArtifactFormat::Webp => "webp",
            ArtifactFormat::Mp3 => "mp3",
            ArtifactFormat::Wav => "wav",
            ArtifactFormat::Ogg => "ogg",
            ArtifactFormat::Pdf => "pdf",
        }
    }

    /// The media kind of a binary format (None for text formats).
    pub fn media_kind(self) -> Option<factory_audit::media::MediaKind> {
        use factory_audit::media::MediaKind;
        Some(match self {
            ArtifactFormat::Png => MediaKind::Png,
            ArtifactFormat::Jpeg => MediaKind::Jpeg,
            ArtifactFormat::Webp => MediaKind::Webp,
            ArtifactFormat::Mp3 => MediaKind::Mp3,
            ArtifactFormat::Wav => MediaKind::Wav,
            ArtifactFormat::Ogg => MediaKind::Ogg,
            ArtifactFormat::Pdf => MediaKind::Pdf,
            _ => return None,
        })
    }

    /// True for binary media: not text, never read into a prompt or the
    /// D1–D5 audit.
    pub fn is_media(self) -> bool {
        self.media_kind().is_some()
    }

    /// What the artifact is served as.
    pub fn media_type(self) -> &'static str {
        match self {
            ArtifactFormat::Json | ArtifactFormat::Directory => "application/json",
            ArtifactFormat::Md => "text/markdown; charset=utf-8",
            ArtifactFormat::Csv => "text/csv; charset=utf-8",
            // Served as text: an artifact's HTML must not run as this site's page.
            ArtifactFormat::Html
            | ArtifactFormat::Text
            | ArtifactFormat::Url
            | ArtifactFormat::Yaml => "text/plain; charset=utf-8",
            media => media
                .media_kind()
                .map_or("application/octet-stream", |k| k.media_type()),
        }
    }

    /// How the D1–D5 audit reads an artifact of this format.
    pub fn audit_format(self) -> factory_audit::Format {
        match self {
            ArtifactFormat::Json => factory_audit::Format::Json,
            ArtifactFormat::Md => factory_audit::Format::Markdown,
            ArtifactFormat::Html => factory_audit::Format::Html,
            _ => factory_audit::Format::Text,
        }
    }
}

/// Which executor runs the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A subprocess: `inputs.config.command` is its argv.
    Command,
    /// An engine-side block named by `inputs.config.builtin`.
    Builtin,
    /// An LLM call assembled from the block's skill (executes in a later release).
    Llm,
    /// A JSON POST to `inputs.config.url` (executes in a later release).
    Http,
    /// One generated image (an OpenAI-compatible `/images/generations`
    /// endpoint or Gemini), its prompt assembled like an `llm` block's.
    Image,
    /// Text-to-speech of an upstream script (an OpenAI-compatible
    /// `/audio/speech` endpoint), one voice per speaker.
    Speech,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Command => "command",
            Runtime::Builtin => "builtin",
            Runtime::Llm => "llm",
            Runtime::Http => "http",
            Runtime::Image => "image",
            Runtime::Speech => "speech",
        }
    }

    /// Whether the block calls a model (and so has a `model` that resolves
    /// to a configured provider).
    pub fn calls_model(self) -> bool {
        matches!(self, Runtime::Llm | Runtime::Image | Runtime::Speech)
    }

    /// Whether the block makes media through a model (`image`, `speech`):
    /// the run's and template's default model — a chat model — does not
    /// apply to it.
    pub fn makes_media(self) -> bool {
        matches!(self, Runtime::Image | Runtime::Speech)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(rename = "type", default)]
    pub trigger_type: TriggerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// For a `webhook` trigger: the environment variable of the server that
    /// holds the hook's signing secret (`whsec_…`, Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// For a `cron` trigger: the IANA time zone its expression is read in
    /// (`Europe/Paris`; default UTC), daylight saving included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// For a `cron` trigger: how many ticks missed while no server ran are
    /// fired late, the most recent ones, oldest first (0–100; default 0:
    /// skip them). A tick less than a minute old always fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub catch_up: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerType {
    #[default]
    Dependency,
    Cron,
    Webhook,
    Event,
    Manual,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// Typed wiring: each entry names an upstream block and one of its artifact keys.
    #[serde(default)]
    pub depends: Vec<Dependency>,
    /// When the block may start, given its dependencies' outcomes.
    #[serde(default, skip_serializing_if = "DependencyMode::is_all")]
    pub mode: DependencyMode,
    /// Patterns (`*`, `?`, `[…]`) naming the run's uploaded input files this
    /// block reads; matching uploads arrive as inputs `uploads.<file name>`.
    #[serde(default)]
    pub files: Vec<String>,
    /// Environment variables that must be set when a run is created.
    #[serde(default)]
    pub env: Vec<String>,
    /// Runtime configuration (e.g. `command`, `builtin`, `url`).
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
}

/// How a block's readiness follows from its upstream blocks.
///
/// `all` is the ordinary DAG rule (Airflow's `all_success`). `any` says
/// "whichever of these produced something": the block waits until every
/// upstream block has settled (done, failed or blocked) and runs when at least
/// one of them is done, reading the artifacts of those that are; it is blocked
/// only when none can finish (Airflow's `none_failed_min_one_success`, with a
/// failure treated like a skip). The corrections router uses it to act on
/// whichever review produced findings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyMode {
    #[default]
    All,
    Any,
}

impl DependencyMode {
    pub fn is_all(&self) -> bool {
        *self == DependencyMode::All
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub block: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    #[serde(default)]
    pub artifacts: Vec<ArtifactSpec>,
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<Publish>>,
    /// Events the block emits when it is done: each entry names an event
    /// and one of the block's JSON artifacts, whose object (or each object
    /// of whose array) becomes one event of the factory's feed
    /// ([`crate::bus::emitted`]), for `event` triggers to start runs or
    /// feed streams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emits: Vec<Emit>,
    /// The key of one of the block's `json` artifacts whose `gaps` array
    /// becomes the run's gap items when an attempt succeeds
    /// ([`crate::gaps`]): later blocks see the open ones in their prompts
    /// and close them; reviewers accept or reopen them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaps: Option<String>,
}

/// One `outputs.emits` entry: `{"event": "entity.created", "artifact": "entities"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// `noun.verb`, not one of the factory's own nouns (`run`, `block`,
    /// `gate`, `record`, `webhook`, `trigger`).
    pub event: String,
    /// The key of one of the block's `json` artifacts.
    pub artifact: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    pub key: String,
    /// Relative path inside the attempt's output directory.
    pub path: String,
    pub format: ArtifactFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFormat {
    Md,
    Json,
    Html,
    Text,
    Url,
    Csv,
    Yaml,
    /// A directory; stored as a JSON manifest of its files (binary ones
    /// base64-encoded).
    Directory,
    // Binary media, stored as produced; checked for what can be checked
    // without a model (`factory_audit::media`). (Plain comments: a doc
    // comment would list the variant apart in the schema's choices.)
    Png,
    Jpeg,
    Webp,
    Mp3,
    Wav,
    Ogg,
    Pdf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub key: String,
    #[serde(rename = "type")]
    pub metric_type: MetricType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Number,
    Integer,
    Percent,
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub domain: String,
    pub slug: String,
}

/// Execution control: parallelism, gates, thresholds and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionControl {
    /// Blocks sharing a group run concurrently; purely descriptive for the
    /// scheduler (readiness alone decides), checked for internal dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_group: Option<String>,
    #[serde(default)]
    pub human_gate: HumanGate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    #[serde(default = "default_true")]
    pub retryable: bool,
    #[serde(default = "default_max_retries")]
    #[schemars(range(max = 20))]
    pub max_retries: u32,
    /// Four-eyes rule: whoever started this block's pass (created the run,
    /// approved its before-gate, retried it) may not approve its gate, nor
    /// lower it (a run override, a change of autonomy); a review link acts
    /// for the person who minted it. A profile's `default` does not lower it.
    /// Someone else may.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub separate_reviewer: bool,
    /// Whether an earlier successful attempt with the same inputs may stand
    /// in for this block's attempt (see `factory_core::memo`). Absent: yes
    /// for `llm` and `command` blocks, no for `http` blocks (a call may have
    /// effects elsewhere); `builtin` blocks are never memoized (they read the
    /// run's own state, which the key does not cover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

impl Default for ExecutionControl {
    fn default() -> Self {
        ExecutionControl {
            parallel_group: None,
            human_gate: HumanGate::None,
            threshold: None,
            retryable: true,
            max_retries: default_max_retries(),
            separate_reviewer: false,
            cache: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HumanGate {
    Before,
    After,
    #[default]
    None,
}

/// A metric floor: an attempt whose metric is below `min` is retried, then failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub metric: String,
    #[schemars(range(min = -1.0e12, max = 1.0e12))]
    pub min: f64,
}

/// `fan_out`: the block becomes a group of instances, one per item of a
/// list read when the block's dependencies are done (a run param, or a
/// JSON artifact of a dependency). Each instance is an ordinary block of the
/// run — its own state, attempts, artifacts, audit and gates — with the id
/// `<block>[<key>]`; blocks that depend on the group wait for it as a whole
/// and read every done instance's artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOut {
    /// Where the list comes from.
    pub over: ListSource,
    /// For a list of objects: the field whose text names each instance
    /// (`positioning` → `perspective[positioning]`). Absent, or an item
    /// without it: a string, number or boolean item names itself, anything
    /// else by its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The most instances the list may make; a longer list fails the block
    /// with an error instead of starting them.
    #[serde(default = "default_fan_out_max")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max: u32,
    /// When the group counts as done, given its instances' outcomes.
    #[serde(default, skip_serializing_if = "Need::is_all")]
    pub need: Need,
}

fn default_fan_out_max() -> u32 {
    100
}

/// The most instances any fan-out may make, whatever its `max`.
pub const FAN_OUT_LIMIT: u32 = 10_000;

/// `fan_out.over`: `{"param": "perspectives"}`, or
/// `{"block": "planner", "artifact": "plan", "pointer": "/perspectives"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSource {
    /// A run param holding a JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// A dependency of the block whose `json` artifact holds the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// That dependency's artifact key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// A JSON pointer (RFC 6901) to the array inside the param or artifact;
    /// absent: the whole value is the array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

/// `fan_out.need`: `"all"` (every instance done; one that fails blocks the
/// group), `"any"` (every instance settled, at least one done), or
/// `{"at_least": k}` (every instance settled, at least `k` done; blocked as
/// soon as `k` can no longer be reached). The blocks after the group read
/// the artifacts of the instances that are done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    #[default]
    All,
    Any,
    AtLeast(u32),
}

impl Need {
    pub fn is_all(&self) -> bool {
        *self == Need::All
    }

    /// How many instances must be done, out of `of`.
    pub fn required(&self, of: usize) -> usize {
        match self {
            Need::All => of,
            Need::Any => 1,
            Need::AtLeast(k) => *k as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    pub mode: LifecycleMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleMode {
    OneShot,
    Daemon,
    OnDemand,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Data Gate tier, 1–4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4))]
    pub gate: Option<u8>,
    #[serde(default)]
    pub run_params: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Pattern 3, the analytical lens ([`crate::lens`]): which angle a block
/// takes, which params its ratings roll up on, and whether past ratings
/// shape new runs.
pub struct Lens {
    /// The analytical angle of a block that is not a fan-out (a fan-out
    /// lens's instances are the perspectives, named by their keys). A lens
    /// block with neither is an aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perspective: Option<String>,
    /// Params whose values key the ratings (e.g. `["entity_id"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregates: Option<Vec<String>>,
    /// Past ratings reach new runs' prompts and shape their fan-out.
    #[serde(default)]
    pub feedback_loop: bool,
    /// Fan-out lens with `feedback_loop`: a perspective whose past mean is
    /// below this (1–5), over at least `min_ratings` ratings, is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 5.0))]
    pub drop_below: Option<f64>,
    /// Ratings a perspective needs before `drop_below` applies (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_ratings: Option<u32>,
    /// Fan-out lens with `feedback_loop`: a perspective whose past mean is
    /// below this (1–5) waits for a person after it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 5.0))]
    pub review_below: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_per: Option<String>,
    #[serde(default)]
    pub states: Vec<String>,
}

/// The JSON Schema of [`Template`], as published by `factory schema`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(Template);
    serde_json::to_value(schema).unwrap_or(Value::Null)
}
