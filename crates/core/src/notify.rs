//! Notifications: which events of the feed ([`crate::bus`]) tell people
//! something (an [`Occasion`]), which rules send them to which channels,
//! and what the message says. Pure: the store keeps the outbox, the
//! `factory-notify` crate talks SMTP and HTTP, and the engine's notifier
//! connects them.
//!
//! The feed is written in the same transaction as the change an event
//! tells of; the notifier turns each event into one outbox row per channel
//! under an id made of the event's number and the channel
//! ([`delivery_id`]), so reading an event twice (after a crash) makes no
//! second row, and a row is delivered until a channel takes it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::bus::{BusEvent, GATE_WAITING, REVIEW_SUBMITTED, RUN_FINISHED, RUN_READY_TO_SHIP};

/// What a rule can ask to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Occasion {
    /// A human gate starts waiting.
    GateWaiting,
    /// A review page's form was submitted.
    ReviewSubmitted,
    /// A run ended failed.
    RunFailed,
    /// A run ended done.
    RunFinished,
    /// A review made the run meet its convergence criteria (see
    /// `run.ready_to_ship` in [`crate::bus`]).
    ReadyToShip,
}

impl Occasion {
    pub const ALL: [Occasion; 5] = [
        Occasion::GateWaiting,
        Occasion::ReviewSubmitted,
        Occasion::RunFailed,
        Occasion::RunFinished,
        Occasion::ReadyToShip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Occasion::GateWaiting => "gate.waiting",
            Occasion::ReviewSubmitted => "review.submitted",
            Occasion::RunFailed => "run.failed",
            Occasion::RunFinished => "run.finished",
            Occasion::ReadyToShip => "run.ready_to_ship",
        }
    }

    /// The feed event it is read from.
    pub fn feed_name(self) -> &'static str {
        match self {
            Occasion::GateWaiting => GATE_WAITING,
            Occasion::ReviewSubmitted => REVIEW_SUBMITTED,
            Occasion::RunFailed | Occasion::RunFinished => RUN_FINISHED,
            Occasion::ReadyToShip => RUN_READY_TO_SHIP,
        }
    }

    /// The occasion an event of the feed is, if any.
    pub fn of(event: &BusEvent) -> Option<Occasion> {
        match event.name.as_str() {
            GATE_WAITING => Some(Occasion::GateWaiting),
            REVIEW_SUBMITTED => Some(Occasion::ReviewSubmitted),
            RUN_READY_TO_SHIP => Some(Occasion::ReadyToShip),
            RUN_FINISHED => match event.payload.get("status").and_then(Value::as_str) {
                Some("failed") => Some(Occasion::RunFailed),
                Some("done") => Some(Occasion::RunFinished),
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for Occasion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Occasion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Occasion::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not an occasion; use one of {}",
                    Occasion::ALL.map(Occasion::as_str).join(", ")
                )
            })
    }
}

impl Serialize for Occasion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Occasion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a notification is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationStatus {
    /// Waiting for its (next) try.
    Pending,
    /// A channel took it.
    Delivered,
    /// Its tries ran out, or the channel refused it for good.
    Failed,
}

impl NotificationStatus {
    pub const ALL: [NotificationStatus; 3] = [
        NotificationStatus::Pending,
        NotificationStatus::Delivered,
        NotificationStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Failed => "failed",
        }
    }
}

impl FromStr for NotificationStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NotificationStatus::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a notification status; use pending, delivered or failed")
            })
    }
}

impl Serialize for NotificationStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where the notifications of some occasions go: every template's, or
/// only those of `templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub on: Vec<Occasion>,
    /// Template ids; empty: every template.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Channel names (`[notifications.channels.NAME]`).
    pub channels: Vec<String>,
}

/// The channels `rules` send an occasion of `template_id` to, each once,
/// in name order.
pub fn channels_for(rules: &[Rule], occasion: Occasion, template_id: &str) -> Vec<String> {
    let mut out: Vec<String> = rules
        .iter()
        .filter(|r| r.on.contains(&occasion))
        .filter(|r| r.templates.is_empty() || r.templates.iter().any(|t| t == template_id))
        .flat_map(|r| r.channels.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The outbox id of an event's notification to a channel: the same for
/// every reader of the feed, so a second read of the event adds nothing.
pub fn delivery_id(event_seq: i64, channel: &str) -> String {
    format!("ntf-{event_seq}-{channel}")
}

/// The wait before try `attempts + 1` after `attempts` failed ones:
/// doubling from `initial_ms`, at most 15 minutes.
pub fn retry_delay_ms(attempts: u32, initial_ms: u64) -> u64 {
    const MAX_MS: u64 = 15 * 60 * 1000;
    let doublings = attempts.saturating_sub(1).min(30);
    initial_ms.saturating_mul(1u64 << doublings).min(MAX_MS)
}

/// What the notifier knows of the run beside the event, looked up when
/// the notification is made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The server's address as people reach it (`https://factory.example`);
    /// without it messages carry paths only.
    pub base_url: Option<String>,
    /// The block's name in the template.
    pub block_name: Option<String>,
    /// Who may approve a waiting gate, in words.
    pub may_approve: Option<String>,
    /// Blocks that failed, with their errors (a failed run).
    pub failed_blocks: Vec<(String, String)>,
}

/// One notification, as every channel renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub occasion: Occasion,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// One line: an email's subject, a chat message's first line.
    pub subject: String,
    /// Plain text, a fact per line.
    pub text: String,
    /// Where to act on it (the gate's block page, the run page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The event's own fields.
    pub fields: Map<String, Value>,
}

/// Failed blocks a message lists (fan-out can fail hundreds), and the
/// characters kept of each one's error.
const MAX_FAILED_LISTED: usize = 10;
const MAX_ERROR_CHARS: usize = 300;
/// Slack refuses a section's text over 3,000 characters (for good: a 4xx).
const SLACK_SECTION_CHARS: usize = 2_900;

fn short(run_id: &str) -> &str {
    run_id.get(..8).unwrap_or(run_id)
}

fn field<'a>(event: &'a BusEvent, name: &str) -> Option<&'a Value> {
    event.payload.get(name)
}

fn field_text(event: &BusEvent, name: &str) -> String {
    match field(event, name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The message an event makes on `occasion`.
pub fn compose(event: &BusEvent, occasion: Occasion, context: &Context) -> Message {
    let template = event.template_id.as_str();
    let run = event.run_id.as_deref().unwrap_or_default();
    let block = event.block.as_deref().unwrap_or_default();
    let base = context
        .base_url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let run_link = (!run.is_empty()).then(|| format!("{base}/runs/{run}"));
    let block_label = match &context.block_name {
        Some(name) if !name.is_empty() && name != block => format!("`{block}` ({name})"),
        _ => format!("`{block}`"),
    };
    let mut lines = Vec::new();
    let (subject, link) = match occasion {
        Occasion::GateWaiting => {
            let phase = field_text(event, "phase");
            lines.push(format!(
                "Block {block_label} of run {run} ({template}) waits at its {} gate.",
                if phase.is_empty() { "human" } else { &phase }
            ));
            if let Some(who) = &context.may_approve {
                lines.push(format!("Who may approve: {who}."));
            }
            (
                format!(
                    "Waiting for approval: {block} in {template} (run {})",
                    short(run)
                ),
                Some(format!("{base}/runs/{run}/blocks/{block}")),
            )
        }
        Occasion::ReviewSubmitted => {
            let count = |name: &str| field(event, name).and_then(Value::as_u64).unwrap_or(0);
            let (items, accepted, critical) =
                (count("items"), count("accepted"), count("critical"));
            lines.push(format!(
                "{} ({}) submitted the {} review of run {run} ({template}), version {}.",
                field_text(event, "tester"),
                field_text(event, "role"),
                field_text(event, "source"),
                field_text(event, "version"),
            ));
            lines.push(format!(
                "Items judged: {items}; accepted in the run: {accepted}; critical still open or accepted: {critical}."
            ));
            let free_text = field_text(event, "free_text");
            if !free_text.is_empty() {
                lines.push(format!("They wrote: {free_text}"));
            }
            (
                format!(
                    "Review submitted: {block} of {template} (run {}) — {items} items, {accepted} accepted, {critical} critical",
                    short(run)
                ),
                Some(format!("{base}/runs/{run}/blocks/{block}")),
            )
        }
        Occasion::RunFailed => {
            lines.push(format!("Run {run} ({template}) failed."));
            for (block, error) in context.failed_blocks.iter().take(MAX_FAILED_LISTED) {
                let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
                lines.push(format!("Block `{block}` failed: {error}"));
            }
            if context.failed_blocks.len() > MAX_FAILED_LISTED {
                lines.push(format!(
                    "… and {} more failed blocks.",
                    context.failed_blocks.len() - MAX_FAILED_LISTED
                ));
            }
            (
                format!("Run failed: {template} (run {})", short(run)),
                run_link,
            )
        }
        Occasion::RunFinished => {
            lines.push(format!(
                "Run {run} ({template}) finished: every block is done."
            ));
            (
                format!("Run finished: {template} (run {})", short(run)),
                run_link,
            )
        }
        Occasion::ReadyToShip => {
            let version = field_text(event, "version");
            lines.push(format!(
                "Run {run} ({template}) meets its convergence criteria in version {version}: ready to ship."
            ));
            (
                format!("Ready to ship: {template} (run {}) {version}", short(run)),
                run_link,
            )
        }
    };
    if let Some(link) = &link {
        lines.push(format!("Open it: {link}"));
    }
    Message {
        occasion,
        template_id: template.to_string(),
        run_id: event.run_id.clone(),
        block: event.block.clone(),
        subject,
        text: lines.join("\n"),
        link,
        fields: event.payload.clone(),
    }
}

impl Message {
    /// A generic webhook's body.
    pub fn webhook_body(&self, id: &str, at: crate::run::Millis) -> Value {
        json!({
            "id": id,
            "occasion": self.occasion,
            "template": self.template_id,
            "run_id": self.run_id,
            "block": self.block,
            "subject": self.subject,
            "text": self.text,
            "link": self.link,
            "fields": self.fields,
            "at": at,
        })
    }

    /// A Slack incoming webhook's body: the subject in bold, the text, and
    /// the link as Slack's `<url|label>`.
    pub fn slack_body(&self) -> Value {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let link = self
            .link
            .as_ref()
            .map(|link| format!("\n<{link}|Open in Process Factory>"))
            .unwrap_or_default();
        let mut text = format!("*{}*\n{}", escape(&self.subject), escape(&self.text));
        let room = SLACK_SECTION_CHARS.saturating_sub(link.chars().count());
        if text.chars().count() > room {
            text = text.chars().take(room.saturating_sub(1)).collect();
            text.push('…');
        }
        text.push_str(&link);
        json!({
            "text": escape(&self.subject),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, payload: Value) -> BusEvent {
        BusEvent {
            name: name.into(),
            template_id: "clone-factory".into(),
            run_id: Some("0193abcd-1234".into()),
            block: Some("extraction-review".into()),
            record_key: None,
            payload: payload.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn occasions_parse_print_and_come_from_feed_events() {
        for o in Occasion::ALL {
            assert_eq!(o.as_str().parse::<Occasion>(), Ok(o));
        }
        let error = "gate.open".parse::<Occasion>().unwrap_err();
        assert!(error.contains("gate.waiting, review.submitted"), "{error}");
        assert_eq!(
            Occasion::of(&event("run.finished", json!({"status": "failed"}))),
            Some(Occasion::RunFailed)
        );
        assert_eq!(
            Occasion::of(&event("run.finished", json!({"status": "done"}))),
            Some(Occasion::RunFinished)
        );
        assert_eq!(Occasion::of(&event("block.done", json!({}))), None);
        assert_eq!(
            Occasion::of(&event("gate.waiting", json!({}))),
            Some(Occasion::GateWaiting)
        );
    }

    #[test]
    fn rules_pick_channels_by_occasion_and_template() {
        let rules: Vec<Rule> = serde_json::from_value(json!([
            {"on": ["gate.waiting"], "channels": ["mail", "slack"]},
            {"on": ["gate.waiting", "run.failed"], "templates": ["clone-factory"], "channels": ["ops", "mail"]},
        ]))
        .unwrap();
        assert_eq!(
            channels_for(&rules, Occasion::GateWaiting, "clone-factory"),
            ["mail", "ops", "slack"]
        );
        assert_eq!(
            channels_for(&rules, Occasion::GateWaiting, "other"),
            ["mail", "slack"]
        );
        assert_eq!(
            channels_for(&rules, Occasion::RunFailed, "other"),
            Vec::<String>::new()
        );
        let typo = serde_json::from_value::<Rule>(json!({"on": ["gate.wait"], "channels": []}));
        assert!(typo.unwrap_err().to_string().contains("not an occasion"));
    }

    #[test]
    fn retries_double_up_to_fifteen_minutes() {
        assert_eq!(retry_delay_ms(1, 1000), 1000);
        assert_eq!(retry_delay_ms(2, 1000), 2000);
        assert_eq!(retry_delay_ms(5, 1000), 16_000);
        assert_eq!(retry_delay_ms(40, 1000), 15 * 60 * 1000);
    }

    #[test]
    fn a_waiting_gate_says_who_may_approve_and_links_to_the_block() {
        let context = Context {
            base_url: Some("https://factory.example/".into()),
            block_name: Some("Extraction review".into()),
            may_approve: Some("a reviewer, operator or admin".into()),
            ..Context::default()
        };
        let m = compose(
            &event("gate.waiting", json!({"phase": "after"})),
            Occasion::GateWaiting,
            &context,
        );
        assert_eq!(
            m.subject,
            "Waiting for approval: extraction-review in clone-factory (run 0193abcd)"
        );
        assert_eq!(
            m.link.as_deref(),
            Some("https://factory.example/runs/0193abcd-1234/blocks/extraction-review")
        );
        assert!(m.text.contains("`extraction-review` (Extraction review)"));
        assert!(m.text.contains("after gate"));
        assert!(
            m.text
                .contains("Who may approve: a reviewer, operator or admin.")
        );
        let slack = m.slack_body();
        let text = slack["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(text.starts_with("*Waiting for approval"), "{text}");
        assert!(text.ends_with("|Open in Process Factory>"), "{text}");
        let body = m.webhook_body("ntf-7-hook", 5);
        assert_eq!(body["occasion"], "gate.waiting");
        assert_eq!(body["fields"]["phase"], "after");
    }

    #[test]
    fn a_review_summary_counts_items_and_escapes_for_slack() {
        let m = compose(
            &event(
                "review.submitted",
                json!({"items": 4, "accepted": 2, "critical": 1, "tester": "Ana <ana@x>", "role": "expert", "source": "extraction-review", "version": "v1"}),
            ),
            Occasion::ReviewSubmitted,
            &Context::default(),
        );
        assert!(
            m.subject.ends_with("4 items, 2 accepted, 1 critical"),
            "{}",
            m.subject
        );
        assert_eq!(
            m.link.as_deref(),
            Some("/runs/0193abcd-1234/blocks/extraction-review")
        );
        let text = m.slack_body()["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains("Ana &lt;ana@x&gt;"), "{text}");
    }

    #[test]
    fn a_failed_run_lists_its_failed_blocks() {
        let context = Context {
            failed_blocks: vec![("build".into(), "exit code 2".into())],
            ..Context::default()
        };
        let m = compose(
            &event("run.finished", json!({"status": "failed"})),
            Occasion::RunFailed,
            &context,
        );
        assert_eq!(m.subject, "Run failed: clone-factory (run 0193abcd)");
        assert!(m.text.contains("Block `build` failed: exit code 2"));
        assert_eq!(delivery_id(42, "mail"), "ntf-42-mail");
        // Hundreds of failed fan-out instances with long errors: the
        // message lists ten, and Slack gets at most its limit.
        let many = Context {
            failed_blocks: (0..300)
                .map(|i| (format!("item[{i}]"), "x".repeat(2_000)))
                .collect(),
            base_url: Some("http://f.test".into()),
            ..Context::default()
        };
        let m = compose(
            &event("run.finished", json!({"status": "failed"})),
            Occasion::RunFailed,
            &many,
        );
        assert!(
            m.text.contains("… and 290 more failed blocks."),
            "{}",
            m.text
        );
        assert!(!m.text.contains("item[10]"));
        let slack = m.slack_body()["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(slack.chars().count() <= 3_000, "{}", slack.len());
        assert!(
            slack.ends_with("|Open in Process Factory>"),
            "the link survives the cut"
        );
    }
}
