//! Process Factory's pure core: the template model, validation, the stateless
//! scheduler and run state transitions.
//!
//! Architecture Invariant: this crate does no IO. No files, no network, no
//! clock, no async runtime. Time comes in as an argument; effects go out as
//! data ([`run::Event`]s and [`scheduler::Decision`]s) for the IO layers
//! (`factory-store`, `factory-runtime`, `factory-engine`, `factory-cli`) to
//! carry out. That keeps every rule here testable with plain values and
//! makes the event log replayable.

pub mod answer;
pub mod audit_analyze;
pub mod bus;
pub mod consensus;
pub mod diagnostics;
pub mod fan_out;
pub mod feedback;
pub mod gaps;
pub mod http_call;
pub mod lens;
pub mod llm_options;
pub mod media_options;
pub mod memo;
pub mod meta_audit;
pub mod notify;
pub mod pipeline;
pub mod prompt;
pub mod render;
pub mod run;
pub mod run_brief;
pub mod scheduler;
pub mod speech_script;
pub mod starter;
pub mod stream;
pub mod template;
pub mod transitions;
pub mod validate;

pub use diagnostics::{Diagnostic, Severity};
pub use pipeline::Pipeline;
pub use run::{ApplyError, BlockStatus, Event, EventRecord, Millis, RunDoc, RunStatus};
pub use scheduler::{Decision, decide};
pub use template::Template;
pub use validate::{
    Validated, validate_stored_str, validate_str, validate_template, validate_value,
};

/// Applies `events` to `doc` as one unit: either all apply (and the numbered
/// records are returned) or none do and `doc` is unchanged.
pub fn commit(
    doc: &mut RunDoc,
    events: Vec<Event>,
    actor: &str,
    now: Millis,
) -> Result<Vec<EventRecord>, ApplyError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut next = doc.clone();
    let records = commit_in_place(&mut next, events, actor, now)?;
    *doc = next;
    Ok(records)
}

/// Like [`commit`] but without the copy that makes it all-or-nothing: on an
/// error `doc` may hold some of the events. For callers that work on a
/// scratch copy they throw away on error (the engine's write loop).
pub fn commit_in_place(
    doc: &mut RunDoc,
    events: Vec<Event>,
    actor: &str,
    now: Millis,
) -> Result<Vec<EventRecord>, ApplyError> {
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let record = EventRecord {
            seq: doc.seq + 1,
            at: now,
            actor: actor.to_string(),
            event,
        };
        doc.apply(&record)?;
        records.push(record);
    }
    Ok(records)
}
