//! The Block v2 fields of the stream and lens patterns (`trigger`,
//! `lifecycle`, `record_state`, `scope`, `lens`) and `outputs.publish`.
//!
//! Two rules: what is written must make sense (a cron expression parses, an
//! event filter parses, a `record_state` says what it tracks), and what the
//! engine does not act on yet is refused, not ignored. In a dag-batch run
//! every block is started by its dependencies, once per run; a cron or event
//! trigger on a block without dependencies starts runs ([`crate::starter`]);
//! daemons and per-record state make a stream template ([`crate::stream`]);
//! `lifecycle.mode: on-demand` on a block without dependencies says runs
//! start when a person or a feed event asks; `lens` is checked in
//! [`super::lens`]. Anything else (a scope) would validate and then run
//! once, at once, as a one-shot, so it is refused.

use croner::parser::{CronParser, Seconds, Year};

use crate::diagnostics::{Diagnostic, codes};
use crate::template::{self, LifecycleMode, TriggerType};

/// The fields of a cron expression, in order.
const CRON_FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

pub(super) fn check(i: usize, block: &template::Block, out: &mut Vec<Diagnostic>) {
    let at = |suffix: &str| format!("$.blocks[{i}]{suffix}");
    let id = &block.id;
    let mut push = |diagnostic: Diagnostic| out.push(diagnostic.in_block(id.clone()));

    check_trigger(&block.trigger, &at, &mut push);

    if let Some(record_state) = &block.record_state {
        if record_state
            .track_per
            .as_deref()
            .is_none_or(|key| key.trim().is_empty())
        {
            push(
                Diagnostic::error(
                    codes::RECORD_STATE,
                    at(".record_state.track_per"),
                    "`record_state` without `track_per`: nothing says what a record is",
                )
                .with_help(
                    "name the field that identifies a record, e.g. `\"track_per\": \"video_id\"`",
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (s, state) in record_state.states.iter().enumerate() {
            if state.trim().is_empty() {
                push(Diagnostic::error(
                    codes::RECORD_STATE,
                    at(&format!(".record_state.states[{s}]")),
                    "a record state has no name",
                ));
            } else if !seen.insert(state.as_str()) {
                push(
                    Diagnostic::error(
                        codes::RECORD_STATE,
                        at(&format!(".record_state.states[{s}]")),
                        format!("record state `{state}` is listed twice"),
                    )
                    .with_help("list each state once, in the order records move through them"),
                );
            }
        }
        if record_state.states.len() < 2 {
            push(
                Diagnostic::error(
                    codes::RECORD_STATE,
                    at(".record_state.states"),
                    format!(
                        "`record_state.states` lists {} state(s): a record needs at least a first and a last",
                        record_state.states.len()
                    ),
                )
                .with_help("e.g. `\"states\": [\"raw\", \"annotated\", \"embedded\", \"scored\"]`"),
            );
        }
    }

    let mode = block.lifecycle.as_ref().map(|l| l.mode);

    // Parsed, but nothing acts on it yet: refused rather than ignored.
    let not_yet = |field: &str, what: String| {
        Diagnostic::error(
            codes::NOT_SUPPORTED_YET,
            at(field),
            format!("{what}: the engine does not act on it yet, so the block would run once, as a one-shot, as if it were not there"),
        )
        .with_help(
            "remove it (this release runs dag-batch templates: blocks started by their dependencies, once per run); \
             a scope is not acted on yet",
        )
    };
    // Cron and event triggers feed a stream intake (a daemon) or, on a
    // dag-batch block without dependencies, start runs
    // ([`crate::starter`]); a block with dependencies is started by them.
    let daemon = mode == Some(LifecycleMode::Daemon);
    let on_demand = mode == Some(LifecycleMode::OnDemand);
    let acted_on = match block.trigger.trigger_type {
        TriggerType::Dependency | TriggerType::Webhook => true,
        TriggerType::Cron | TriggerType::Event => {
            if !daemon && !block.inputs.depends.is_empty() {
                push(
                    Diagnostic::error(
                        codes::TRIGGER,
                        at(".trigger.type"),
                        format!(
                            "a `{}` trigger starts runs of the template from a block without dependencies; this block has dependencies, which start it",
                            trigger_name(block.trigger.trigger_type)
                        ),
                    )
                    .with_help("put the trigger on a block without `inputs.depends` (the run's first block), or remove it"),
                );
            }
            true
        }
        // A manual trigger feeds a stream intake, or says of an on-demand
        // template's first block that a person starts its runs; a block of
        // a dag-batch run that waits for a person is a `human_gate: before`.
        TriggerType::Manual => daemon || (on_demand && block.inputs.depends.is_empty()),
    };
    check_emits(block, &at, &mut push);
    check_gaps(block, &at, &mut push);
    if !acted_on {
        push(not_yet(
            ".trigger.type",
            format!(
                "`trigger.type: {}`",
                trigger_name(block.trigger.trigger_type)
            ),
        ));
    }
    // On demand: runs start when a person asks (manual, or no trigger) or
    // when a feed event arrives (`event`), never on a schedule; it is said
    // of the block runs start from.
    if on_demand {
        if !block.inputs.depends.is_empty() {
            push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(".lifecycle.mode"),
                    "`lifecycle.mode: on-demand` says how runs start, and this block is started by its dependencies",
                )
                .with_help("put it on a block without `inputs.depends` (where runs start), or remove it"),
            );
        } else if block.trigger.trigger_type == TriggerType::Cron {
            push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(".lifecycle.mode"),
                    "`lifecycle.mode: on-demand` with a `cron` trigger: a schedule is not a demand",
                )
                .with_help("use `trigger.type: manual` (a person starts runs) or `event` (a feed event does), or drop `lifecycle` to run on the schedule"),
            );
        }
    }
    if block.scope.is_some() {
        push(not_yet(".scope", "`scope`".into()));
    }
    if block
        .outputs
        .publish
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        push(not_yet(".outputs.publish", "`outputs.publish`".into()));
    }
}

/// `outputs.gaps`: one of the block's JSON artifacts, on a block that runs
/// a step (its gaps come from what the step wrote).
fn check_gaps(
    block: &template::Block,
    at: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(Diagnostic),
) {
    let Some(key) = &block.outputs.gaps else {
        return;
    };
    match block.outputs.artifacts.iter().find(|a| &a.key == key) {
        None => push(
            Diagnostic::error(
                codes::MISSING_ARTIFACT,
                at(".outputs.gaps"),
                format!("`{key}` is not an artifact of this block, so no gap would be found"),
            )
            .with_help("name one of the block's `outputs.artifacts` keys"),
        ),
        Some(artifact) if artifact.format != template::ArtifactFormat::Json => push(
            Diagnostic::error(
                codes::RUNTIME_CONFIG,
                at(".outputs.gaps"),
                format!("artifact `{key}` is not `json`: gaps are read from its `gaps` array"),
            )
            .with_help("name a `\"format\": \"json\"` artifact"),
        ),
        Some(_) => {}
    }
    if block.fan_out.is_some() {
        push(
            Diagnostic::error(
                codes::FAN_OUT,
                at(".outputs.gaps"),
                "`outputs.gaps` on a fan-out block: its instances would each replace the others' gaps"
                    .to_string(),
            )
            .with_help("find gaps in the block that reads the instances"),
        );
    }
}

/// `outputs.emits`: a name a block may emit, from one of its JSON
/// artifacts, each pair once.
fn check_emits(
    block: &template::Block,
    at: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(Diagnostic),
) {
    let mut seen = std::collections::BTreeSet::new();
    for (n, emit) in block.outputs.emits.iter().enumerate() {
        if let Err(problem) = crate::bus::check_emitted_name(&emit.event) {
            push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(&format!(".outputs.emits[{n}].event")),
                    problem,
                )
                .with_help("name it after what happened, e.g. `entity.created`"),
            );
        }
        match block.outputs.artifacts.iter().find(|a| a.key == emit.artifact) {
            None => push(
                Diagnostic::error(
                    codes::MISSING_ARTIFACT,
                    at(&format!(".outputs.emits[{n}].artifact")),
                    format!(
                        "`{}` is not an artifact of this block, so nothing would be emitted",
                        emit.artifact
                    ),
                )
                .with_help("name one of the block's `outputs.artifacts` keys"),
            ),
            Some(artifact) if artifact.format != template::ArtifactFormat::Json => push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(&format!(".outputs.emits[{n}].artifact")),
                    format!(
                        "artifact `{}` is not `json`: events are made of a JSON object or an array of objects",
                        emit.artifact
                    ),
                )
                .with_help("emit from a `\"format\": \"json\"` artifact"),
            ),
            Some(_) => {}
        }
        if !seen.insert((&emit.event, &emit.artifact)) {
            push(
                Diagnostic::error(
                    codes::DUPLICATE_KEY,
                    at(&format!(".outputs.emits[{n}]")),
                    format!("`{}` from `{}` is listed twice", emit.event, emit.artifact),
                )
                .with_help("list each event and artifact pair once"),
            );
        }
    }
}

/// `trigger.cron` of a cron trigger: present and parsed.
fn check_cron_expression(
    trigger: &template::Trigger,
    at: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(Diagnostic),
) {
    match trigger.cron.as_deref() {
        None => push(
            Diagnostic::error(
                codes::TRIGGER,
                at(".trigger.cron"),
                "a `cron` trigger needs `trigger.cron`",
            )
            .with_help("e.g. `\"cron\": \"0 6 * * 1-5\"` (06:00 on weekdays)"),
        ),
        Some(expression) => {
            if let Err((message, column)) = parse_cron(expression) {
                let mut diagnostic = Diagnostic::error(
                    codes::TRIGGER,
                    at(".trigger.cron"),
                    format!("cron expression `{expression}`: {message}"),
                )
                .with_help(
                    "five fields: minute hour day-of-month month day-of-week (e.g. `*/15 * * * *`), or @hourly, @daily, @weekly, @monthly, @yearly",
                );
                if let Some(column) = column {
                    diagnostic
                        .message
                        .push_str(&format!(" (at character {column})"));
                }
                push(diagnostic);
            }
        }
    }
}

fn trigger_name(trigger: TriggerType) -> &'static str {
    match trigger {
        TriggerType::Dependency => "dependency",
        TriggerType::Cron => "cron",
        TriggerType::Webhook => "webhook",
        TriggerType::Event => "event",
        TriggerType::Manual => "manual",
    }
}

/// Each trigger field belongs to one trigger type; the type's own field is
/// parsed.
fn check_trigger(
    trigger: &template::Trigger,
    at: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(Diagnostic),
) {
    let kind = trigger.trigger_type;
    for (field, value, owner) in [
        ("cron", &trigger.cron, TriggerType::Cron),
        ("event", &trigger.event, TriggerType::Event),
        ("webhook", &trigger.webhook, TriggerType::Webhook),
        ("secret_env", &trigger.secret_env, TriggerType::Webhook),
        ("timezone", &trigger.timezone, TriggerType::Cron),
        (
            "catch_up",
            &trigger.catch_up.map(|n| n.to_string()),
            TriggerType::Cron,
        ),
    ] {
        if value.is_some() && kind != owner {
            push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(&format!(".trigger.{field}")),
                    format!(
                        "`trigger.{field}` on a `{}` trigger would be ignored",
                        trigger_name(kind)
                    ),
                )
                .with_help(format!("set `\"type\": \"{field}\"` or remove `{field}`")),
            );
        }
    }
    match kind {
        TriggerType::Cron => {
            if let Err(problem) = crate::stream::cron::time_zone(trigger.timezone.as_deref()) {
                push(
                    Diagnostic::error(codes::TRIGGER, at(".trigger.timezone"), problem).with_help(
                        "an IANA time zone name, e.g. `Europe/Paris`, or leave it out for UTC",
                    ),
                );
            }
            if trigger
                .catch_up
                .is_some_and(|n| n > crate::stream::cron::MAX_CATCH_UP)
            {
                push(
                    Diagnostic::error(
                        codes::TRIGGER,
                        at(".trigger.catch_up"),
                        format!(
                            "`catch_up` is {}; at most {} missed ticks are fired late",
                            trigger.catch_up.unwrap_or(0),
                            crate::stream::cron::MAX_CATCH_UP
                        ),
                    )
                    .with_help("0 skips missed ticks; N fires the N most recent"),
                );
            }
            check_cron_expression(trigger, at, push);
        }
        TriggerType::Event => match trigger.event.as_deref() {
            None => push(
                Diagnostic::error(
                    codes::TRIGGER,
                    at(".trigger.event"),
                    "an `event` trigger needs `trigger.event`",
                )
                .with_help("e.g. `\"event\": \"entity.created(gate=2)\"`"),
            ),
            Some(filter) => {
                if let Err(problem) = parse_event_filter(filter) {
                    push(
                        Diagnostic::error(
                            codes::TRIGGER,
                            at(".trigger.event"),
                            format!("event filter `{filter}`: {problem}"),
                        )
                        .with_help("write `name.verb` or `name.verb(key=value, …)`, e.g. `entity.created(gate=2)`"),
                    );
                }
            }
        },
        TriggerType::Webhook => {
            match trigger.secret_env.as_deref() {
                None => push(
                    Diagnostic::error(
                        codes::TRIGGER,
                        at(".trigger.secret_env"),
                        "a `webhook` trigger needs `trigger.secret_env`: the server accepts signed deliveries only",
                    )
                    .with_help("name the environment variable that holds the hook's `whsec_…` secret, e.g. `\"secret_env\": \"INGEST_WEBHOOK_SECRET\"`"),
                ),
                Some(name) if !super::valid_env_name(name) => push(
                    Diagnostic::error(
                        codes::TRIGGER,
                        at(".trigger.secret_env"),
                        format!("`{name}` is not an environment variable name"),
                    )
                    .with_help("use letters, digits and `_`, not starting with a digit, e.g. `INGEST_WEBHOOK_SECRET`"),
                ),
                Some(_) => {}
            }
            if let Some(path) = trigger.webhook.as_deref()
                && !valid_hook_path(path)
            {
                push(
                    Diagnostic::error(
                        codes::TRIGGER,
                        at(".trigger.webhook"),
                        format!("webhook path `{path}` is not a path the server can mount"),
                    )
                    .with_help("segments of lowercase letters, digits, `-` and `_` joined by `/`, e.g. `youtube/new-video`"),
                );
            }
        }
        TriggerType::Dependency | TriggerType::Manual => {}
    }
}

/// Parses a five-field cron expression (or an `@` alias); on failure, why
/// and the 1-based character where the failing field starts, when one field
/// is to blame.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, (String, Option<usize>)> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let trimmed = expression.trim();
    if trimmed.starts_with('@') {
        return parser
            .parse(trimmed)
            .map_err(|error| (error.to_string(), Some(1)));
    }
    let fields: Vec<(usize, &str)> = trimmed
        .split_whitespace()
        .map(|field| {
            (
                field.as_ptr() as usize - expression.as_ptr() as usize,
                field,
            )
        })
        .collect();
    if fields.len() != CRON_FIELDS.len() {
        return Err((
            format!(
                "{} field{} where a cron expression has five (minute hour day-of-month month day-of-week)",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ),
            None,
        ));
    }
    match parser.parse(trimmed) {
        Ok(cron) => Ok(cron),
        Err(error) => {
            // Which field: the first that fails with every other field `*`.
            for (n, (offset, field)) in fields.iter().enumerate() {
                let alone: Vec<&str> = (0..CRON_FIELDS.len())
                    .map(|k| if k == n { *field } else { "*" })
                    .collect();
                if let Err(alone_error) = parser.parse(&alone.join(" ")) {
                    let column = expression[..*offset].chars().count() + 1;
                    return Err((
                        format!(
                            "the {} field `{field}` is not valid ({alone_error})",
                            CRON_FIELDS[n]
                        ),
                        Some(column),
                    ));
                }
            }
            Err((error.to_string(), None))
        }
    }
}

/// An event filter: `name.verb` or `name.verb(key=value, …)`
/// ([`crate::bus::EventFilter`]).
pub fn parse_event_filter(filter: &str) -> Result<(), String> {
    crate::bus::EventFilter::parse(filter).map(|_| ())
}

fn valid_hook_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_parse_or_name_the_field_and_where_it_starts() {
        for good in [
            "*/15 * * * *",
            "0 6 * * 1-5",
            "30 2 1 * *",
            "@daily",
            " 0 0 * * SUN ",
        ] {
            assert!(parse_cron(good).is_ok(), "{good}");
        }
        let (message, column) = parse_cron("every tuesday lol").unwrap_err();
        assert!(
            message.contains("3 fields where a cron expression has five"),
            "{message}"
        );
        assert_eq!(column, None);
        let (message, column) = parse_cron("0 25 * * *").unwrap_err();
        assert!(message.contains("the hour field `25`"), "{message}");
        assert_eq!(column, Some(3));
        let (message, column) = parse_cron("0 6 * * mon-frx").unwrap_err();
        assert!(message.contains("day of week field `mon-frx`"), "{message}");
        assert_eq!(column, Some(9));
        assert!(parse_cron("0 0 6 * * *").is_err(), "no seconds field");
        assert!(parse_cron("@fortnightly").is_err());
        assert!(parse_cron("").is_err());
    }

    #[test]
    fn event_filters_parse() {
        for good in [
            "entity.created",
            "entity.created(gate=2)",
            "record.state_changed(state=scored, template=\"ingest-stream\")",
            "run.finished( status = done )",
            "entity.created(title=\"a, b\", gate=2)",
        ] {
            assert_eq!(parse_event_filter(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("created", "not an event name"),
            ("Entity.Created", "not an event name"),
            ("entity.created(gate=2", "not closed"),
            ("entity.created()", "empty parentheses"),
            ("entity.created(gate)", "not `key=value`"),
            ("entity.created(gate=two words)", "not a value"),
            ("entity.created(Gate=2)", "not a field name"),
            ("entity.created(title=\"a, b)", "not a value"),
        ] {
            let error = parse_event_filter(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn hook_paths_are_plain_segments() {
        assert!(valid_hook_path("youtube/new-video"));
        assert!(valid_hook_path("feed_1"));
        for bad in ["", "/lead", "trail/", "a//b", "Up", "a b", "../x", "a?b"] {
            assert!(!valid_hook_path(bad), "{bad}");
        }
    }
}
