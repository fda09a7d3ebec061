//! Data-driven tests of template validation: each case is a small template
//! (or raw text) plus the exact set of error diagnostics it must produce, as
//! `(code, path fragment, block)`.

use super::*;
use crate::template::HumanGate;
use proptest::prelude::*;
use serde_json::json;

const CLONE_FACTORY: &str = include_str!("../../../../templates/clone-factory.json");
const OFFLINE_EXAMPLE: &str = include_str!("../../../../examples/offline/pipeline.json");
const MEETING_BRIEF: &str = include_str!("../../../../templates/meeting-brief.json");
const MEETING_BRIEF_OFFLINE: &str =
    include_str!("../../../../examples/meeting-brief/pipeline.json");

// ── Helpers ──

/// One expected error: code, a fragment the JSON path must contain, and the block.
type Expect<'a> = (&'a str, &'a str, Option<&'a str>);

/// A minimal valid block: a `noop` builtin with one artifact `out`.
fn block(id: &str) -> Value {
    json!({
        "id": id,
        "name": format!("Block {id}"),
        "layer": "L0",
        "type": "build",
        "runtime": "builtin",
        "inputs": { "config": { "builtin": "noop" } },
        "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] }
    })
}

/// A block depending on the `out` artifact of each of `deps`.
fn block_on(id: &str, deps: &[&str]) -> Value {
    let mut b = block(id);
    b["inputs"]["depends"] = deps
        .iter()
        .map(|d| json!({ "block": d, "key": "out" }))
        .collect();
    b
}

/// A minimal template around `blocks`.
fn template(blocks: Vec<Value>) -> Value {
    json!({ "id": "t", "name": "Test", "version": "1.0.0", "blocks": blocks })
}

/// A minimal valid template: one block `a`.
fn valid() -> Value {
    template(vec![block("a")])
}

/// Runs validation on `source` and asserts that its error diagnostics are
/// exactly `expect` (as a multiset). Returns the result for further checks.
fn check_str(source: &str, expect: &[Expect<'_>]) -> Validated {
    let validated = validate_str(source);
    assert_errors(&validated, expect);
    validated
}

fn check(value: Value, expect: &[Expect<'_>]) -> Validated {
    let source = serde_json::to_string_pretty(&value).unwrap();
    let validated = check_str(&source, expect);
    // validate_value agrees with validate_str on the same document.
    assert_eq!(validate_value(&value).diagnostics, validated.diagnostics);
    validated
}

fn assert_errors(validated: &Validated, expect: &[Expect<'_>]) {
    let errors: Vec<&Diagnostic> = validated.errors().collect();
    let mut unmatched: Vec<&Diagnostic> = errors.clone();
    let mut missing = Vec::new();
    for &(code, path, block) in expect {
        match unmatched
            .iter()
            .position(|d| d.code == code && d.path.contains(path) && d.block.as_deref() == block)
        {
            Some(at) => {
                unmatched.remove(at);
            }
            None => missing.push((code, path, block)),
        }
    }
    assert!(
        missing.is_empty() && unmatched.is_empty(),
        "diagnostics differ\n  missing:    {missing:?}\n  unexpected: {unmatched:#?}\n  all: {:#?}",
        validated.diagnostics
    );
    assert_eq!(validated.pipeline.is_some(), expect.is_empty());
    for d in &validated.diagnostics {
        assert!(d.code.starts_with("TPL") && d.code.len() == 7, "{d:?}");
        assert!(d.path.starts_with('$'), "{d:?}");
        assert!(!d.message.is_empty(), "{d:?}");
    }
}

/// The single error of a result.
fn only_error(validated: &Validated) -> &Diagnostic {
    let errors: Vec<_> = validated.errors().collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0]
}

fn help(d: &Diagnostic) -> &str {
    d.help
        .as_deref()
        .unwrap_or_else(|| panic!("no help on {d:#?}"))
}

fn warnings(validated: &Validated) -> Vec<&Diagnostic> {
    validated
        .diagnostics
        .iter()
        .filter(|d| !d.is_error())
        .collect()
}

// ── Baseline ──

#[test]
fn minimal_template_is_valid() {
    let validated = check(valid(), &[]);
    assert!(
        validated.diagnostics.is_empty(),
        "{:#?}",
        validated.diagnostics
    );
    let pipeline = validated.pipeline.unwrap();
    assert_eq!(pipeline.len(), 1);
    assert_eq!(pipeline.blocks()[0].timeout, 300_000, "default timeout");
    assert_eq!(
        pipeline.blocks()[0].execution.max_retries,
        2,
        "default max_retries"
    );
    assert!(pipeline.blocks()[0].execution.retryable);
}

#[test]
fn pointer_to_path_renders_json_paths() {
    assert_eq!(
        pointer_to_path("/blocks/3/inputs/depends/0"),
        "$.blocks[3].inputs.depends[0]"
    );
    assert_eq!(pointer_to_path(""), "$");
    assert_eq!(pointer_to_path("/id"), "$.id");
    assert_eq!(pointer_to_path("/params/a~1b~0c"), "$.params.a/b~c");
    assert_eq!(
        pointer_to_path("/blocks/12/outputs/artifacts/0/key"),
        "$.blocks[12].outputs.artifacts[0].key"
    );
}

// ── Syntax ──

#[test]
fn malformed_json_reports_line_and_column() {
    let validated = check_str(
        "{\n  \"id\": \"t\",\n  \"name\": ,\n}",
        &[("TPL0001", "$", None)],
    );
    let d = only_error(&validated);
    assert_eq!(d.path, "$");
    assert_eq!((d.line, d.column), (Some(3), Some(11)));
    assert!(d.message.starts_with("malformed JSON"), "{}", d.message);
    assert!(
        !d.message.contains(" at line "),
        "position is reported separately: {}",
        d.message
    );
    assert!(help(d).contains("line and column"));
    let rendered = d.render("t.json");
    assert!(
        rendered.starts_with("error[TPL0001]: t.json:3:11: $: malformed JSON"),
        "{rendered}"
    );
}

#[test]
fn empty_file_is_a_syntax_error() {
    let validated = check_str("", &[("TPL0001", "$", None)]);
    let d = only_error(&validated);
    assert!(d.line.is_some() && d.column.is_some());
    assert!(d.message.contains("EOF"), "{}", d.message);
    check_str("   \n\t ", &[("TPL0001", "$", None)]);
}

#[test]
fn truncated_file_is_a_syntax_error() {
    let full = serde_json::to_string_pretty(&valid()).unwrap();
    let truncated = &full[..full.len() / 2];
    let validated = check_str(truncated, &[("TPL0001", "$", None)]);
    let d = only_error(&validated);
    assert!(d.message.contains("EOF"), "{}", d.message);
    assert!(d.line.unwrap() > 1);
    // Trailing garbage after a complete document is a syntax error too.
    check_str(&format!("{full} {{"), &[("TPL0001", "$", None)]);
}

#[test]
fn top_level_must_be_an_object() {
    for source in [
        "[]",
        "[{\"id\": \"t\"}]",
        "42",
        "\"template\"",
        "null",
        "true",
    ] {
        let validated = check_str(source, &[("TPL0002", "$", None)]);
        let d = only_error(&validated);
        assert_eq!(d.path, "$");
        assert!(d.message.contains("object"), "{source}: {}", d.message);
        assert!(help(d).contains("type"), "{source}");
    }
}

#[test]
fn missing_required_fields() {
    let mut value = valid();
    value.as_object_mut().unwrap().remove("blocks");
    let validated = check(value, &[("TPL0002", "$", None)]);
    let d = only_error(&validated);
    assert!(d.message.contains("\"blocks\""), "{}", d.message);
    assert_eq!(help(d), "add the missing field");

    let mut b = block("a");
    b.as_object_mut().unwrap().remove("runtime");
    let validated = check(template(vec![b]), &[("TPL0002", "$.blocks[0]", Some("a"))]);
    assert!(only_error(&validated).message.contains("\"runtime\""));

    // Without an id the block is named by its position.
    let mut b = block("a");
    b.as_object_mut().unwrap().remove("id");
    check(
        template(vec![block("x"), b]),
        &[("TPL0002", "$.blocks[1]", Some("#1"))],
    );
}

// ── Unknown fields ──

#[test]
fn unknown_field_at_top_level() {
    let mut value = valid();
    value["nmae"] = json!("x");
    let validated = check(value, &[("TPL0003", "$.nmae", None)]);
    let d = only_error(&validated);
    assert_eq!(d.path, "$.nmae");
    assert!(d.message.contains("`nmae`"));
    assert_eq!(help(d), "did you mean `name`?");
}

#[test]
fn unknown_field_in_a_block_lists_the_allowed_fields() {
    let mut b = block("a");
    b["frobnicate"] = json!(true);
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].frobnicate", Some("a"))],
    );
    let text = help(only_error(&validated));
    assert!(text.starts_with("allowed fields here:"), "{text}");
    for field in ["id", "runtime", "inputs", "execution", "lifecycle"] {
        assert!(text.contains(field), "{text}");
    }

    let mut b = block("a");
    b["skil"] = json!("x");
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].skil", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `skill`?");
}

#[test]
fn unknown_field_in_inputs_suggests_depends() {
    let mut b = block_on("b", &[]);
    b["inputs"]["dependss"] = json!([{ "block": "a", "key": "out" }]);
    let validated = check(
        template(vec![block("a"), b]),
        &[("TPL0003", "$.blocks[1].inputs.dependss", Some("b"))],
    );
    let d = only_error(&validated);
    assert_eq!(d.path, "$.blocks[1].inputs.dependss");
    assert_eq!(help(d), "did you mean `depends`?");
}

#[test]
fn unknown_field_in_execution() {
    let mut b = block("a");
    b["execution"] = json!({ "max_retrys": 1 });
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].execution.max_retrys", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `max_retries`?");

    let mut b = block("a");
    b["execution"] = json!({ "humangate": "after" });
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].execution.humangate", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `human_gate`?");
}

#[test]
fn unknown_field_inside_a_depends_entry() {
    let mut b = block("b");
    b["inputs"]["depends"] = json!([{ "block": "a", "key": "out", "kye": "out" }]);
    let validated = check(
        template(vec![block("a"), b]),
        &[("TPL0003", "$.blocks[1].inputs.depends[0].kye", Some("b"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `key`?");
}

#[test]
fn unknown_field_inside_optional_structs_goes_through_any_of() {
    // `lifecycle`, `scope` and `threshold` are Option<struct>: anyOf [struct, null].
    let mut b = block("a");
    b["lifecycle"] = json!({ "mode": "daemon", "mdoe": "daemon" });
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].lifecycle.mdoe", Some("a"))],
    );
    let d = only_error(&validated);
    assert_eq!(d.path, "$.blocks[0].lifecycle.mdoe");
    assert_eq!(help(d), "did you mean `mode`?");

    let mut b = block("a");
    b["lifecycle"] = json!({ "mode": "forever" });
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].lifecycle.mode", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(
        d.message.contains("one-shot, daemon, on-demand"),
        "{}",
        d.message
    );

    let mut b = block("a");
    b["scope"] = json!({ "gate": 2, "gat": 1 });
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].scope.gat", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `gate`?");

    let mut b = block("a");
    b["outputs"]["metrics"] = json!([{ "key": "score", "type": "number" }]);
    b["execution"] = json!({ "threshold": { "metric": "score", "min": 1, "mni": 2 } });
    let validated = check(
        template(vec![b]),
        &[("TPL0003", "$.blocks[0].execution.threshold.mni", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `min`?");

    // `null` is a fine value for an optional struct.
    let mut b = block("a");
    b["lifecycle"] = Value::Null;
    check(template(vec![b]), &[]);
}

#[test]
fn unknown_fields_in_params_and_profiles() {
    let mut value = valid();
    value["params"] = json!({ "p": { "requird": true } });
    let validated = check(value, &[("TPL0003", "$.params.p.requird", None)]);
    assert_eq!(help(only_error(&validated)), "did you mean `required`?");

    let mut value = valid();
    value["autonomy_profiles"] = json!({ "p": { "defualt": "auto" } });
    let validated = check(value, &[("TPL0003", "$.autonomy_profiles.p.defualt", None)]);
    assert_eq!(help(only_error(&validated)), "did you mean `default`?");
}

#[test]
fn state_in_a_block_is_rejected() {
    let mut b = block("a");
    b["state"] = json!({ "status": "done" });
    let validated = check(
        template(vec![block("z"), b]),
        &[("TPL0004", "$.blocks[1].state", Some("a"))],
    );
    let d = only_error(&validated);
    assert_eq!(d.path, "$.blocks[1].state");
    assert!(d.message.contains("runtime state"), "{}", d.message);
    assert!(help(d).contains("remove the `state`"));

    // Only a block's `state` gets the special code; elsewhere it is just unknown.
    let mut value = valid();
    value["state"] = json!({});
    check(value, &[("TPL0003", "$.state", None)]);
}

// ── Enums and types ──

#[test]
fn bad_enum_values_are_reported_once_with_the_choices() {
    let mut b = block("a");
    b["runtime"] = json!("shell");
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].runtime", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("\"shell\""), "{}", d.message);
    assert!(
        d.message.contains("command, builtin, llm, http"),
        "{}",
        d.message
    );

    let mut b = block("a");
    b["runtime"] = json!("comand");
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].runtime", Some("a"))],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `command`?");

    let mut b = block("a");
    b["runtime"] = json!(7);
    check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].runtime", Some("a"))],
    );

    let mut b = block("a");
    b["execution"] = json!({ "human_gate": "maybe" });
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].execution.human_gate", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("before, after, none"), "{}", d.message);

    let mut b = block("a");
    b["type"] = json!("extractor");
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].type", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(
        d.message.contains("extract, validate, build"),
        "{}",
        d.message
    );
    assert_eq!(help(d), "did you mean `extract`?");

    let mut value = valid();
    value["autonomy_profiles"] = json!({ "p": { "blocks": { "a": "guidd" } } });
    let validated = check(
        value,
        &[("TPL0002", "$.autonomy_profiles.p.blocks.a", None)],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("gate, guided, auto"), "{}", d.message);
    assert_eq!(help(d), "did you mean `guided`?");

    // `ArtifactFormat` mixes plain variants (an `enum`) and a documented one (a `const`).
    let mut b = block("a");
    b["outputs"]["artifacts"][0]["format"] = json!("markdown");
    let validated = check(
        template(vec![b]),
        &[(
            "TPL0002",
            "$.blocks[0].outputs.artifacts[0].format",
            Some("a"),
        )],
    );
    let d = only_error(&validated);
    assert!(
        d.message.contains(
            "md, json, html, text, url, csv, yaml, png, jpeg, webp, mp3, wav, ogg, pdf, directory"
        ),
        "{}",
        d.message
    );
    let mut b = block("a");
    b["outputs"]["artifacts"][0]["format"] = json!("directry");
    let validated = check(
        template(vec![b]),
        &[(
            "TPL0002",
            "$.blocks[0].outputs.artifacts[0].format",
            Some("a"),
        )],
    );
    assert_eq!(help(only_error(&validated)), "did you mean `directory`?");
}

#[test]
fn wrong_types() {
    let mut b = block("a");
    b["timeout"] = json!("30s");
    let validated = check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].timeout", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("integer"), "{}", d.message);
    assert_eq!(help(d), "change the value to the expected type");

    let mut b = block("a");
    b["execution"] = json!({ "retryable": "yes" });
    check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].execution.retryable", Some("a"))],
    );

    let mut b = block("a");
    b["inputs"]["depends"] = json!("a");
    check(
        template(vec![b]),
        &[("TPL0002", "$.blocks[0].inputs.depends", Some("a"))],
    );

    let mut value = valid();
    value["blocks"] = json!({ "a": block("a") });
    check(value, &[("TPL0002", "$.blocks", None)]);
}

#[test]
fn numbers_out_of_range() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "timeout": -1 }), "$.blocks[0].timeout", "minimum"),
        (json!({ "timeout": 0 }), "$.blocks[0].timeout", "minimum"),
        (
            json!({ "timeout": 1_000_000_000_000u64 }),
            "$.blocks[0].timeout",
            "maximum",
        ),
        (
            json!({ "execution": { "max_retries": 1000 } }),
            "$.blocks[0].execution.max_retries",
            "maximum",
        ),
        (
            json!({ "execution": { "max_retries": -1 } }),
            "$.blocks[0].execution.max_retries",
            "minimum",
        ),
        (
            json!({ "scope": { "gate": 9 } }),
            "$.blocks[0].scope.gate",
            "maximum",
        ),
        (
            json!({ "scope": { "gate": 0 } }),
            "$.blocks[0].scope.gate",
            "minimum",
        ),
    ];
    for (patch, path, bound) in cases {
        let mut b = block("a");
        for (key, value) in patch.as_object().unwrap() {
            b[key] = value.clone();
        }
        let validated = check(template(vec![b]), &[("TPL0002", path, Some("a"))]);
        let d = only_error(&validated);
        assert_eq!(d.path, path);
        assert!(d.message.contains(bound), "{patch}: {}", d.message);
        assert_eq!(help(d), "use a value inside the allowed range", "{patch}");
    }

    // The bounds themselves are fine (a scope passes the shape check, then
    // is refused as not acted on yet).
    let mut b = block("a");
    b["timeout"] = json!(86_400_000);
    b["execution"] = json!({ "max_retries": 20 });
    b["scope"] = json!({ "gate": 4 });
    check(
        template(vec![b]),
        &[("TPL0028", "$.blocks[0].scope", Some("a"))],
    );
}

// ── Ids and wiring ──

#[test]
fn duplicate_block_ids() {
    let validated = check(
        template(vec![block("a"), block("b"), block("a")]),
        &[("TPL0005", "$.blocks[2].id", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(
        d.message.contains("$.blocks[0]"),
        "names the first declaration: {}",
        d.message
    );
    assert!(help(d).contains("unique"));
}

#[test]
fn invalid_ids() {
    let validated = check(
        template(vec![
            block("Fetch Data"),
            block("-x"),
            block(""),
            block("ok_1-2"),
        ]),
        &[
            ("TPL0006", "$.blocks[0].id", Some("Fetch Data")),
            ("TPL0006", "$.blocks[1].id", Some("-x")),
            ("TPL0006", "$.blocks[2].id", None),
        ],
    );
    for d in validated.errors() {
        assert!(help(d).contains("lowercase"));
    }
    let long = "a".repeat(129);
    check(
        template(vec![block(&long)]),
        &[("TPL0006", "$.blocks[0].id", Some(long.as_str()))],
    );
    check(template(vec![block(&"a".repeat(128))]), &[]);

    let mut value = valid();
    value["id"] = json!("My Template");
    check(value, &[("TPL0006", "$.id", None)]);
}

#[test]
fn dependency_on_a_missing_block_suggests_the_closest() {
    let validated = check(
        template(vec![block("fetch"), block_on("report", &["fetsh"])]),
        &[(
            "TPL0007",
            "$.blocks[1].inputs.depends[0].block",
            Some("report"),
        )],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("`fetsh`"), "{}", d.message);
    assert_eq!(help(d), "did you mean `fetch`?");

    // Nothing close: no guess.
    let validated = check(
        template(vec![block("fetch"), block_on("report", &["zzzzzzzz"])]),
        &[(
            "TPL0007",
            "$.blocks[1].inputs.depends[0].block",
            Some("report"),
        )],
    );
    assert_eq!(only_error(&validated).help, None);
}

#[test]
fn dependency_on_an_undeclared_artifact_lists_the_declared_keys() {
    let mut a = block("a");
    a["outputs"]["artifacts"] = json!([
        { "key": "words", "path": "words.json", "format": "json" },
        { "key": "stats", "path": "stats.json", "format": "json" }
    ]);
    let mut b = block("b");
    b["inputs"]["depends"] = json!([{ "block": "a", "key": "summary" }]);
    let validated = check(
        template(vec![a.clone(), b]),
        &[("TPL0008", "$.blocks[1].inputs.depends[0].key", Some("b"))],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("`summary`"), "{}", d.message);
    assert_eq!(help(d), "`a` declares: words, stats");

    let mut b = block("b");
    b["inputs"]["depends"] = json!([{ "block": "a", "key": "word" }]);
    let validated = check(
        template(vec![a, b]),
        &[("TPL0008", "$.blocks[1].inputs.depends[0].key", Some("b"))],
    );
    assert_eq!(
        help(only_error(&validated)),
        "did you mean `words`? `a` declares: words, stats"
    );

    let mut a = block("a");
    a["outputs"] = json!({});
    let validated = check(
        template(vec![a, block_on("b", &["a"])]),
        &[("TPL0008", "$.blocks[1].inputs.depends[0].key", Some("b"))],
    );
    assert!(help(only_error(&validated)).contains("declares no artifacts"));
}

#[test]
fn self_dependency() {
    let validated = check(
        template(vec![block("a"), block_on("b", &["a", "b"])]),
        &[("TPL0009", "$.blocks[1].inputs.depends[1]", Some("b"))],
    );
    assert!(help(only_error(&validated)).contains("upstream"));
}

/// Parses "dependency cycle: x -> y -> … -> x" into its ids.
fn cycle_of(d: &Diagnostic) -> Vec<String> {
    let path = d
        .message
        .strip_prefix("dependency cycle: ")
        .unwrap_or_else(|| panic!("{}", d.message));
    path.split(" -> ").map(str::to_string).collect()
}

/// Asserts `cycle` is a closed path whose every step is a real edge of
/// `value` (`x -> y` means `y` depends on `x`).
fn assert_closed_path(value: &Value, cycle: &[String]) {
    assert!(cycle.len() >= 3, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
    let inner = &cycle[..cycle.len() - 1];
    let distinct: BTreeSet<&String> = inner.iter().collect();
    assert_eq!(distinct.len(), inner.len(), "simple cycle: {cycle:?}");
    for pair in cycle.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        let dependent = value["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == json!(to))
            .unwrap_or_else(|| panic!("no block {to}"));
        let deps = dependent["inputs"]["depends"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            deps.iter().any(|d| d["block"] == json!(from)),
            "{to} does not depend on {from}: {cycle:?}"
        );
    }
}

/// Validates `value`, expects exactly one error, a TPL0010 cycle whose block
/// is where the reported path starts; returns the path.
fn check_cycle(value: &Value) -> Vec<String> {
    let validated = validate_value(value);
    let d = only_error(&validated);
    assert_eq!((d.code, d.path.as_str()), ("TPL0010", "$.blocks"), "{d:#?}");
    assert!(validated.pipeline.is_none());
    let cycle = cycle_of(d);
    assert_closed_path(value, &cycle);
    assert_eq!(d.block.as_deref(), Some(cycle[0].as_str()));
    assert!(help(d).contains("DAG"));
    cycle
}

#[test]
fn three_cycle_is_reported_as_a_closed_path() {
    // a <- c, b <- a, c <- b: a -> b -> c -> a. `d` hangs off the cycle, `e` is free.
    let value = template(vec![
        block_on("a", &["c"]),
        block_on("b", &["a"]),
        block_on("c", &["b"]),
        block_on("d", &["c"]),
        block("e"),
    ]);
    let cycle = check_cycle(&value);
    let members: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["a", "b", "c"]));
    let text = cycle.join(" -> ");
    assert!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"].contains(&text.as_str()),
        "{text}"
    );
    // Same through the text entry point.
    check_str(
        &value.to_string(),
        &[("TPL0010", "$.blocks", Some(cycle[0].as_str()))],
    );
}

#[test]
fn two_cycle_and_cycle_behind_a_dag_prefix() {
    let value = template(vec![
        block("root"),
        block_on("x", &["root", "y"]),
        block_on("y", &["x"]),
        block_on("z", &["y"]),
    ]);
    let cycle = check_cycle(&value);
    let members: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["x", "y"]));
}

// ── Outputs, thresholds, runtime config ──

#[test]
fn duplicate_artifact_and_metric_keys() {
    let mut b = block("a");
    b["outputs"] = json!({
        "artifacts": [
            { "key": "out", "path": "a.txt", "format": "text" },
            { "key": "out", "path": "b.txt", "format": "text" }
        ],
        "metrics": [{ "key": "m", "type": "number" }, { "key": "m", "type": "integer" }]
    });
    check(
        template(vec![b]),
        &[
            ("TPL0011", "$.blocks[0].outputs.artifacts[1].key", Some("a")),
            ("TPL0011", "$.blocks[0].outputs.metrics[1].key", Some("a")),
        ],
    );
}

#[test]
fn artifact_paths_must_be_relative_without_parent_dirs() {
    for bad in ["/etc/passwd", "../out.txt", "a/../../b", "", "  "] {
        let mut b = block("a");
        b["outputs"]["artifacts"][0]["path"] = json!(bad);
        let validated = check(
            template(vec![b]),
            &[(
                "TPL0012",
                "$.blocks[0].outputs.artifacts[0].path",
                Some("a"),
            )],
        );
        let d = only_error(&validated);
        assert!(help(d).contains("relative"), "{bad:?}");
    }
    for good in ["out.txt", "sub/dir/out.md", "./x.json", "a..b"] {
        let mut b = block("a");
        b["outputs"]["artifacts"][0]["path"] = json!(good);
        check(template(vec![b]), &[]);
    }
}

#[test]
fn golden_paths_and_skills_stay_beside_the_template() {
    for bad in ["/etc/passwd", "../golden.md", "golden/../../x.md", ""] {
        let mut b = block("a");
        b["audit"] = json!({"golden": {"out": bad}});
        let validated = check(
            template(vec![b]),
            &[("TPL0012", "$.blocks[0].audit.golden.out", Some("a"))],
        );
        assert!(
            help(only_error(&validated)).contains("beside the template"),
            "{bad:?}"
        );
    }
    let mut b = block("a");
    b["audit"] = json!({"golden": {"out": "golden/out.md"}});
    check(template(vec![b]), &[]);

    for bad in ["../../etc", "a/b", ".hidden", "x\\y"] {
        let mut b = block("a");
        b["skill"] = json!(bad);
        let validated = check(
            template(vec![b]),
            &[("TPL0012", "$.blocks[0].skill", Some("a"))],
        );
        assert!(
            help(only_error(&validated)).contains("skills/<skill>/SKILL.md"),
            "{bad:?}"
        );
    }
    let mut b = block("a");
    b["skill"] = json!("deep-research_v2.1");
    check(template(vec![b]), &[]);
}

#[test]
fn threshold_on_an_undeclared_metric() {
    let mut b = block("a");
    b["execution"] = json!({ "threshold": { "metric": "score", "min": 85 } });
    let validated = check(
        template(vec![b]),
        &[(
            "TPL0013",
            "$.blocks[0].execution.threshold.metric",
            Some("a"),
        )],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("`score`"));
    assert!(
        help(d).contains("\"key\": \"score\""),
        "shows how to declare it: {}",
        help(d)
    );

    let mut b = block("a");
    b["outputs"]["metrics"] = json!([{ "key": "quality", "type": "percent" }]);
    b["execution"] = json!({ "threshold": { "metric": "score", "min": 85 } });
    let validated = check(
        template(vec![b.clone()]),
        &[(
            "TPL0013",
            "$.blocks[0].execution.threshold.metric",
            Some("a"),
        )],
    );
    assert_eq!(help(only_error(&validated)), "declared metrics: quality");

    b["execution"]["threshold"]["metric"] = json!("quality");
    check(template(vec![b]), &[]);
}

fn with_runtime(runtime: &str, config: Value) -> Value {
    let mut b = block("a");
    b["runtime"] = json!(runtime);
    b["inputs"]["config"] = config;
    b
}

#[test]
fn command_blocks_need_an_argv() {
    let validated = check(
        template(vec![with_runtime("command", json!({}))]),
        &[("TPL0014", "$.blocks[0].inputs.config", Some("a"))],
    );
    assert!(help(only_error(&validated)).contains("\"command\""));

    for bad in [
        json!([]),
        json!(["sh", 1]),
        json!("sh -c true"),
        json!(["sh", ""]),
        json!([null]),
    ] {
        let validated = check(
            template(vec![with_runtime(
                "command",
                json!({ "command": bad.clone() }),
            )]),
            &[("TPL0014", "$.blocks[0].inputs.config.command", Some("a"))],
        );
        let d = only_error(&validated);
        assert!(d.message.contains("argv"), "{bad}: {}", d.message);
        assert!(help(d).starts_with("e.g."), "{bad}");
    }
    check(
        template(vec![with_runtime(
            "command",
            json!({ "command": ["true"] }),
        )]),
        &[],
    );
}

#[test]
fn builtin_blocks_need_a_known_builtin() {
    let validated = check(
        template(vec![with_runtime(
            "builtin",
            json!({ "builtin": "sleeep" }),
        )]),
        &[("TPL0014", "$.blocks[0].inputs.config.builtin", Some("a"))],
    );
    let d = only_error(&validated);
    assert!(d.message.contains("`sleeep`"));
    assert_eq!(
        help(d),
        "known builtins: noop, sleep, corrections-router, review-page, run-aggregate, specificity-deep-check, cross-block-consistency, delta-report, audit-scorecard"
    );

    check(
        template(vec![with_runtime("builtin", json!({}))]),
        &[("TPL0014", "$.blocks[0].inputs.config", Some("a"))],
    );
    check(
        template(vec![with_runtime(
            "builtin",
            json!({ "builtin": "review-page", "page": "audit" }),
        )]),
        &[("TPL0014", "$.blocks[0].inputs.config.page", Some("a"))],
    );
    check(
        template(vec![with_runtime("builtin", json!({ "builtin": "sleep" }))]),
        &[("TPL0014", "$.blocks[0].inputs.config.ms", Some("a"))],
    );
    check(
        template(vec![with_runtime(
            "builtin",
            json!({ "builtin": "sleep", "ms": -5 }),
        )]),
        &[("TPL0014", "$.blocks[0].inputs.config.ms", Some("a"))],
    );
    check(
        template(vec![with_runtime(
            "builtin",
            json!({ "builtin": "sleep", "ms": 5 }),
        )]),
        &[],
    );
}

#[test]
fn llm_blocks_need_a_skill() {
    let validated = check(
        template(vec![with_runtime("llm", json!({}))]),
        &[("TPL0014", "$.blocks[0].skill", Some("a"))],
    );
    assert!(help(only_error(&validated)).contains("\"skill\""));
    let mut b = with_runtime("llm", json!({}));
    b["skill"] = json!("");
    check(
        template(vec![b.clone()]),
        &[("TPL0014", "$.blocks[0].skill", Some("a"))],
    );
    b["skill"] = json!("deep-research");
    check(template(vec![b]), &[]);
}

#[test]
fn only_blocks_that_write_files_may_declare_media() {
    let mut b = with_runtime("llm", json!({}));
    b["skill"] = json!("cards");
    b["outputs"]["artifacts"][0]["format"] = json!("png");
    let validated = check(
        template(vec![b]),
        &[(
            "TPL0014",
            "$.blocks[0].outputs.artifacts[0].format",
            Some("a"),
        )],
    );
    let d = only_error(&validated);
    assert!(
        d.message
            .contains("an `llm` block's outputs are text; it cannot produce `png`"),
        "{}",
        d.message
    );
    assert!(help(d).contains("`command` block"));
    let mut b = with_runtime("command", json!({"command": ["make-card"]}));
    b["outputs"]["artifacts"][0]["format"] = json!("png");
    check(template(vec![b]), &[]);
}

#[test]
fn image_and_speech_blocks_make_one_media_artifact_and_check_their_knobs() {
    let mut image = with_runtime("image", json!({"size": "1024x1024", "style": "flat"}));
    image["skill"] = json!("social-card");
    image["outputs"]["artifacts"][0]["format"] = json!("png");
    check(template(vec![image.clone()]), &[]);
    // A text artifact, a bad size, and no skill or description.
    let mut bad = image.clone();
    bad["outputs"]["artifacts"][0]["format"] = json!("md");
    bad["inputs"]["config"]["size"] = json!("huge");
    bad.as_object_mut().unwrap().remove("skill");
    let validated = check(
        template(vec![bad]),
        &[
            (
                "TPL0014",
                "$.blocks[0].outputs.artifacts[0].format",
                Some("a"),
            ),
            ("TPL0014", "$.blocks[0].inputs.config.size", Some("a")),
            ("TPL0014", "$.blocks[0].skill", Some("a")),
        ],
    );
    assert!(
        validated
            .errors()
            .any(|d| d.message.contains("makes one png, jpeg, webp artifact")),
        "{:#?}",
        validated.diagnostics
    );
    // Speech: the script must be a dependency, its settings known, no skill.
    let mut speech = with_runtime(
        "speech",
        json!({"voices": {"HOST": "alloy"}, "script": "a.out"}),
    );
    speech["id"] = json!("b");
    speech["inputs"]["depends"] = json!([{"block": "a", "key": "out"}]);
    speech["outputs"]["artifacts"][0]["format"] = json!("mp3");
    check(template(vec![block("a"), speech.clone()]), &[]);
    let mut bad = speech.clone();
    bad["inputs"]["config"] = json!({"script": "x.out", "voice_name": "alloy"});
    bad["skill"] = json!("narrator");
    bad["outputs"]["artifacts"][0]["format"] = json!("png");
    let validated = check(
        template(vec![block("a"), bad]),
        &[
            (
                "TPL0014",
                "$.blocks[1].outputs.artifacts[0].format",
                Some("b"),
            ),
            ("TPL0014", "$.blocks[1].inputs.config.voice_name", Some("b")),
            ("TPL0014", "$.blocks[1].inputs.config.script", Some("b")),
            ("TPL0014", "$.blocks[1].skill", Some("b")),
        ],
    );
    assert!(
        validated.errors().any(|d| d
            .message
            .contains("`x.out` is not one of this block's dependencies")),
        "{:#?}",
        validated.diagnostics
    );
    // A shape said twice, and a script that is a fan-out's many artifacts.
    let mut twice = image.clone();
    twice["inputs"]["config"]["aspect_ratio"] = json!("3:2");
    check(
        template(vec![twice]),
        &[(
            "TPL0014",
            "$.blocks[0].inputs.config.aspect_ratio",
            Some("a"),
        )],
    );
    let mut many = block("a");
    many["fan_out"] = json!({"over": {"param": "items"}});
    let mut t = template(vec![many, speech.clone()]);
    t["params"] = json!({"items": {"default": ["x"]}});
    let validated = validate_value(&t);
    assert!(
        validated
            .errors()
            .any(|d| d.path == "$.blocks[1].inputs.depends[0]"
                && d.message.contains("fans out into one artifact per item")),
        "{:#?}",
        validated.diagnostics
    );
    // An image block may fan out (each instance draws its item); a speech
    // block may not.
    let mut speech = speech;
    speech["fan_out"] = json!({"over": {"param": "items"}});
    let mut t = template(vec![block("a"), speech]);
    t["params"] = json!({"items": {"default": ["x"]}});
    let validated = validate_value(&t);
    assert!(
        validated.errors().any(|d| d.path == "$.blocks[1].runtime"
            && d.message.contains("`fan_out` on a `speech` block")),
        "{:#?}",
        validated.diagnostics
    );
}

#[test]
fn http_blocks_need_a_url() {
    let validated = check(
        template(vec![with_runtime("http", json!({}))]),
        &[("TPL0014", "$.blocks[0].inputs.config.url", Some("a"))],
    );
    assert!(only_error(&validated).message.contains("url_env"));
    check(
        template(vec![with_runtime("http", json!({ "url": "ftp://x" }))]),
        &[("TPL0014", "$.blocks[0].inputs.config.url", Some("a"))],
    );
    check(
        template(vec![with_runtime(
            "http",
            json!({ "url": "https://example.com/hook" }),
        )]),
        &[],
    );
    check(
        template(vec![with_runtime("http", json!({ "url_env": "SYNC_URL" }))]),
        &[],
    );
}

#[test]
fn autonomy_profile_naming_a_missing_block() {
    let mut value = template(vec![block("fetch"), block_on("report", &["fetch"])]);
    value["autonomy_profiles"] = json!({
        "careful": { "default": "gate", "blocks": { "reprot": "auto", "fetch": "guided" } }
    });
    let validated = check(
        value,
        &[("TPL0015", "$.autonomy_profiles.careful.blocks.reprot", None)],
    );
    let d = only_error(&validated);
    assert!(
        d.message.contains("`careful`") && d.message.contains("`reprot`"),
        "{}",
        d.message
    );
    assert_eq!(help(d), "did you mean `report`?");
}

#[test]
fn bad_env_var_names() {
    let mut b = block("a");
    b["inputs"]["env"] = json!(["API_KEY", "1TOKEN", "MY-VAR", "", "_ok9"]);
    let validated = check(
        template(vec![b]),
        &[
            ("TPL0020", "$.blocks[0].inputs.env[1]", Some("a")),
            ("TPL0020", "$.blocks[0].inputs.env[2]", Some("a")),
            ("TPL0020", "$.blocks[0].inputs.env[3]", Some("a")),
        ],
    );
    for d in validated.errors() {
        assert!(help(d).contains("letters, digits"));
    }
}

#[test]
fn empty_blocks() {
    let validated = check(template(vec![]), &[("TPL0018", "$.blocks", None)]);
    assert_eq!(help(only_error(&validated)), "add at least one block");
}

// ── Warnings ──

#[test]
fn warnings_do_not_block_validity() {
    let mut b = block("a");
    b["execution"] = json!({ "retryable": false, "max_retries": 2 });
    let validated = check(template(vec![b]), &[]);
    let w = warnings(&validated);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].code, "TPL0019");
    assert_eq!(w[0].path, "$.blocks[0].execution.max_retries");
    assert_eq!(w[0].block.as_deref(), Some("a"));
    assert!(help(w[0]).contains("max_retries: 0"));
    assert!(validated.pipeline.is_some());
    assert!(!validated.has_errors());
}

#[test]
fn dependency_inside_the_same_parallel_group_is_a_warning() {
    let mut a = block("a");
    a["execution"] = json!({ "parallel_group": "g" });
    let mut b = block_on("b", &["a"]);
    b["execution"] = json!({ "parallel_group": "g" });
    let mut c = block_on("c", &["a"]);
    c["execution"] = json!({ "parallel_group": "other" });
    let validated = check(template(vec![a, b, c]), &[]);
    let w = warnings(&validated);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].code, "TPL0016");
    assert_eq!(w[0].path, "$.blocks[1].inputs.depends[0]");
    assert_eq!(w[0].block.as_deref(), Some("b"));
    assert!(w[0].message.contains("`g`"));
}

#[test]
fn other_warnings() {
    // The same dependency twice.
    let validated = check(template(vec![block("a"), block_on("b", &["a", "a"])]), &[]);
    let w = warnings(&validated);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(
        (w[0].code, w[0].path.as_str()),
        ("TPL0017", "$.blocks[1].inputs.depends[1]")
    );

    // A required param with a default.
    let mut value = valid();
    value["params"] = json!({ "title": { "required": true, "default": "x" } });
    let validated = check(value, &[]);
    let w = warnings(&validated);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(
        (w[0].code, w[0].path.as_str()),
        ("TPL0021", "$.params.title")
    );
}

#[test]
fn bad_file_patterns_are_reported() {
    let mut b = block("a");
    b["inputs"]["files"] = json!(["*.md", "[oops"]);
    let validated = check(
        template(vec![b]),
        &[("TPL0023", "$.blocks[0].inputs.files[1]", Some("a"))],
    );
    let e = only_error(&validated);
    assert_eq!(
        (e.code, e.path.as_str()),
        ("TPL0023", "$.blocks[0].inputs.files[1]")
    );
    assert!(e.message.contains("[oops"));
    assert!(help(e).contains("*.md"));
}

// ── Many problems at once ──

#[test]
fn independent_errors_are_all_reported() {
    let mut bad_path = block("b");
    bad_path["outputs"]["artifacts"][0]["path"] = json!("/abs");
    let mut bad_env = block_on("c", &["missing"]);
    bad_env["inputs"]["env"] = json!(["NOT-OK"]);
    let value = template(vec![
        block("a"),
        bad_path,
        bad_env,
        block("a"),
        with_runtime("llm", json!({})),
    ]);
    // The last block is also `a`: its id is duplicate *and* it lacks a skill.
    let validated = check(
        value,
        &[
            (
                "TPL0012",
                "$.blocks[1].outputs.artifacts[0].path",
                Some("b"),
            ),
            ("TPL0007", "$.blocks[2].inputs.depends[0].block", Some("c")),
            ("TPL0020", "$.blocks[2].inputs.env[0]", Some("c")),
            ("TPL0005", "$.blocks[3].id", Some("a")),
            ("TPL0005", "$.blocks[4].id", Some("a")),
            ("TPL0014", "$.blocks[4].skill", Some("a")),
        ],
    );
    assert_eq!(validated.errors().count(), 6);
}

#[test]
fn four_shape_errors_are_all_reported() {
    let mut a = block("a");
    a["runtime"] = json!("shell");
    a["timeout"] = json!("soon");
    let mut b = block("b");
    b["inputs"]["dependss"] = json!([]);
    b["state"] = json!({});
    check(
        template(vec![a, b]),
        &[
            ("TPL0002", "$.blocks[0].runtime", Some("a")),
            ("TPL0002", "$.blocks[0].timeout", Some("a")),
            ("TPL0003", "$.blocks[1].inputs.dependss", Some("b")),
            ("TPL0004", "$.blocks[1].state", Some("b")),
        ],
    );
}

// ── Shipped templates ──

#[test]
fn the_offline_example_validates() {
    let validated = check_str(OFFLINE_EXAMPLE, &[]);
    let pipeline = validated.pipeline.unwrap();
    assert_eq!(pipeline.template().id, "corpus-report");
    assert!(
        pipeline
            .blocks()
            .iter()
            .all(|b| b.runtime == template::Runtime::Command)
    );
}

#[test]
fn the_clone_factory_template_validates() {
    let validated = check_str(CLONE_FACTORY, &[]);
    let pipeline = validated.pipeline.unwrap();
    assert_eq!(pipeline.len(), 31);
    assert_eq!(pipeline.template().id, "clone-factory");

    let after_gates: BTreeSet<&str> = pipeline
        .blocks()
        .iter()
        .filter(|b| b.execution.human_gate == HumanGate::After)
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(
        after_gates,
        BTreeSet::from([
            "expert-framework-creator",
            "extraction-reviewer",
            "gap-analyzer",
            "clone-tester",
            "expert-audit"
        ])
    );
    assert!(
        pipeline
            .blocks()
            .iter()
            .all(|b| b.execution.human_gate != HumanGate::Before)
    );

    let tester = pipeline.block("clone-tester").unwrap();
    let threshold = tester.execution.threshold.as_ref().unwrap();
    assert_eq!(threshold.metric, "score");
    assert_eq!(threshold.min, 85.0);

    // Parallel groups in order of first appearance, with their sizes.
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for b in pipeline.blocks() {
        if let Some(group) = b.execution.parallel_group.as_deref() {
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, n)) => *n += 1,
                None => groups.push((group, 1)),
            }
        }
    }
    assert_eq!(
        groups.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![3, 5, 6, 3, 2],
        "{groups:?}"
    );

    // Its profiles name real blocks, and the graph is a DAG in topological order.
    assert_eq!(pipeline.template().autonomy_profiles.len(), 3);
    let position: BTreeMap<usize, usize> = pipeline
        .topo_order()
        .iter()
        .enumerate()
        .map(|(p, &i)| (i, p))
        .collect();
    for i in 0..pipeline.len() {
        for &u in pipeline.upstream(i) {
            assert!(position[&u] < position[&i]);
        }
    }
}

// ── Never panics ──

/// Every JSON pointer to a value inside `value` (not the root).
fn pointers(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{prefix}/{i}");
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        _ => {}
    }
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e15f64..1.0e15).prop_map(Value::from),
        prop_oneof![
            Just(""),
            Just("a"),
            Just("before"),
            Just("after"),
            Just("gate"),
            Just("command"),
            Just("../x"),
            Just("/abs"),
            Just("Bad Id"),
            Just("noop"),
            Just("sleep"),
            Just("deep-research"),
            Just("clone-compiler"),
            Just("score"),
            Just("out"),
        ]
        .prop_map(Value::from),
        "[a-z_\\-]{0,8}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Replace(usize, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), scalar()).prop_map(|(at, v)| Mutation::Replace(at, v)),
    ]
}

fn mutate(value: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(value, "", &mut all);
    if all.is_empty() {
        return;
    }
    let (at, replacement) = match mutation {
        Mutation::Delete(at) => (*at, None),
        Mutation::Replace(at, v) => (*at, Some(v.clone())),
    };
    let pointer = &all[at % all.len()];
    match replacement {
        Some(v) => *value.pointer_mut(pointer).unwrap() = v,
        None => {
            let (parent, last) = pointer.rsplit_once('/').unwrap();
            let key = last.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent).unwrap() {
                Value::Object(map) => {
                    map.remove(&key);
                }
                Value::Array(items) => {
                    let i: usize = key.parse().unwrap();
                    items.remove(i);
                }
                _ => unreachable!(),
            }
        }
    }
}

fn assert_consistent(validated: &Validated) {
    assert_eq!(
        validated.pipeline.is_some(),
        !validated.has_errors(),
        "{:#?}",
        validated.diagnostics
    );
    for d in &validated.diagnostics {
        assert!(d.code.starts_with("TPL"));
        assert!(d.path.starts_with('$'), "{d:?}");
    }
}

/// 256 cases per property by default; `PROPTEST_CASES=100000` fuzzes longer.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn json_bytes_never_panic(bytes in proptest::collection::vec(
        proptest::sample::select(br#"{}[]":,0123456789.-eE truefalsn\u"blocksidpathmodeexecution"#.to_vec()),
        0..400,
    )) {
        // Bytes drawn from JSON's alphabet and the template's words, so most
        // reach the parser and many reach validation.
        let source = String::from_utf8_lossy(&bytes);
        assert_consistent(&validate_str(&source));
    }

    #[test]
    fn arbitrary_text_never_panics(source in ".{0,200}") {
        assert_consistent(&validate_str(&source));
    }

    #[test]
    fn json_like_text_never_panics(source in "[\\[\\]{}\":,. a-z0-9\\-\n]{0,120}") {
        assert_consistent(&validate_str(&source));
    }

    #[test]
    fn truncated_templates_never_panic(cut in 0usize..10_000) {
        let cut = cut % OFFLINE_EXAMPLE.len();
        let source = &OFFLINE_EXAMPLE[..OFFLINE_EXAMPLE.floor_char_boundary(cut)];
        let validated = validate_str(source);
        assert_consistent(&validated);
        // Cutting only trailing whitespace leaves a complete, valid file.
        if source.trim_end().len() < OFFLINE_EXAMPLE.trim_end().len() {
            prop_assert!(validated.has_errors());
        }
    }

    #[test]
    fn mutated_templates_never_panic(
        use_clone_factory in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let source = if use_clone_factory { CLONE_FACTORY } else { OFFLINE_EXAMPLE };
        let mut value: Value = serde_json::from_str(source).unwrap();
        for m in &mutations {
            mutate(&mut value, m);
        }
        let validated = validate_str(&value.to_string());
        assert_consistent(&validated);
        if let Some(pipeline) = &validated.pipeline {
            prop_assert!(validated.errors().next().is_none());
            prop_assert_eq!(pipeline.topo_order().len(), pipeline.len());
        }
        let again = validate_value(&value);
        prop_assert_eq!(again.diagnostics, validated.diagnostics);
    }
}

#[test]
fn float_where_an_integer_is_needed_names_the_field() {
    let mut template: Value =
        serde_json::from_str(include_str!("../../../../examples/offline/pipeline.json")).unwrap();
    template["blocks"][1]["execution"]["max_retries"] = serde_json::json!(2.0);
    let validated = validate_value(&template);
    let errors: Vec<_> = validated.errors().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "$.blocks[1].execution.max_retries");
    assert_eq!(errors[0].block.as_deref(), Some("collect-stats"));
}

#[test]
fn a_scalar_where_an_optional_object_belongs_says_so() {
    let mut template: Value =
        serde_json::from_str(include_str!("../../../../examples/offline/pipeline.json")).unwrap();
    template["blocks"][0]["lifecycle"] = serde_json::json!("daemon");
    let validated = validate_value(&template);
    let errors: Vec<_> = validated.errors().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "$.blocks[0].lifecycle");
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap()
            .contains("expected an object"),
        "{errors:?}"
    );
}

#[test]
fn convergence_names_a_block_and_one_of_its_metrics() {
    let mut value = template(vec![with_runtime("builtin", json!({ "builtin": "noop" }))]);
    value["convergence"] = json!({ "score_block": "tester" });
    check(
        value.clone(),
        &[("TPL0025", "$.convergence.score_block", None)],
    );
    value["convergence"] = json!({ "score_block": "a", "score_metric": "pct" });
    check(
        value,
        &[("TPL0025", "$.convergence.score_metric", Some("a"))],
    );
}

#[test]
fn a_blocking_audit_needs_a_threshold() {
    let mut b = block("writer");
    b["audit"] = json!({ "blocking": true });
    let validated = check(
        template(vec![b]),
        &[("TPL0022", ".audit.blocking", Some("writer"))],
    );
    assert!(help(only_error(&validated)).contains("audit.threshold"));

    let mut b = block("writer");
    b["audit"] = json!({ "blocking": true, "threshold": 6.0 });
    check(template(vec![b]), &[]);
}

#[test]
fn json_deeper_than_the_parser_goes_is_called_too_deep_not_malformed() {
    let deep = format!(
        "{{\"id\": \"t\", \"x\": {}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let validated = validate_str(&deep);
    let error = validated.errors().next().unwrap();
    assert!(
        error.message.contains("nested too deep"),
        "{}",
        error.message
    );
    assert!(error.message.contains("128"), "{}", error.message);
    assert!(!error.message.contains("malformed"));
    let broken = validate_str("{\"id\": ");
    assert!(
        broken
            .errors()
            .next()
            .unwrap()
            .message
            .starts_with("malformed JSON")
    );
}

/// The issue's own example: a cron trigger with "every tuesday lol", a
/// daemon, per-record state. Each field is parsed and what the engine does
/// not act on is refused by name — none of it is silently ignored.
#[test]
fn stream_fields_are_parsed_and_refused_rather_than_ignored() {
    let mut b = block("a");
    b["trigger"] = json!({ "type": "cron", "cron": "every tuesday lol" });
    b["lifecycle"] = json!({ "mode": "daemon" });
    b["record_state"] = json!({ "states": ["raw"] });
    let validated = check(
        template(vec![b]),
        &[
            ("TPL0026", "$.blocks[0].trigger.cron", Some("a")),
            ("TPL0027", "$.blocks[0].record_state.track_per", Some("a")),
            ("TPL0027", "$.blocks[0].record_state.states", Some("a")),
            // A cron intake of a stream runs a step that lists records.
            ("TPL0029", "$.blocks[0].runtime", Some("a")),
            ("TPL0029", "$.blocks[0].outputs.artifacts", Some("a")),
        ],
    );
    let cron = validated.errors().find(|d| d.code == "TPL0026").unwrap();
    assert!(
        cron.message.contains("every tuesday lol"),
        "{}",
        cron.message
    );
    assert!(cron.help.as_deref().unwrap().contains("five fields"));

    // A bad field is named with where it starts.
    let mut b = block("a");
    b["trigger"] = json!({ "type": "cron", "cron": "0 25 * * *" });
    let validated = check(
        template(vec![b]),
        &[("TPL0026", "$.blocks[0].trigger.cron", Some("a"))],
    );
    let cron = validated.errors().find(|d| d.code == "TPL0026").unwrap();
    assert!(
        cron.message.contains("hour field `25`") && cron.message.contains("character 3"),
        "{}",
        cron.message
    );

    // A field of another trigger type; a daemon nothing feeds; scope and
    // publish, which nothing reads yet (a lens is checked on its own).
    let mut b = block("a");
    b["trigger"] = json!({ "cron": "0 6 * * *" });
    b["lifecycle"] = json!({ "mode": "daemon" });
    b["lens"] = json!({ "perspective": "positioning" });
    b["scope"] = json!({ "gate": 2 });
    b["outputs"]["publish"] = json!([{ "domain": "example.org", "slug": "brief" }]);
    check(
        template(vec![b]),
        &[
            ("TPL0026", "$.blocks[0].trigger.cron", Some("a")),
            ("TPL0029", "$.blocks[0].trigger", Some("a")),
            ("TPL0032", "$.blocks[0].lens", Some("a")),
            ("TPL0028", "$.blocks[0].scope", Some("a")),
            ("TPL0028", "$.blocks[0].outputs.publish", Some("a")),
        ],
    );

    // What the engine does act on stays valid: a dependency trigger and a
    // one-shot lifecycle, written out.
    let mut b = block("a");
    b["trigger"] = json!({ "type": "dependency" });
    b["lifecycle"] = json!({ "mode": "one-shot" });
    check(template(vec![b]), &[]);

    // A cron or event trigger on a dag-batch block without dependencies
    // starts runs; on a block with dependencies it is refused; a manual
    // trigger outside a stream is still refused.
    let mut a = block("a");
    a["trigger"] = json!({ "type": "event", "event": "entity.created(gate=2)" });
    let validated = check(template(vec![a.clone()]), &[]);
    assert_eq!(validated.pipeline.unwrap().starters().len(), 1);
    let mut b = block_on("b", &["a"]);
    b["trigger"] = json!({ "type": "cron", "cron": "0 6 * * *" });
    check(
        template(vec![a.clone(), b]),
        &[("TPL0026", "$.blocks[1].trigger.type", Some("b"))],
    );
    let mut m = block("m");
    m["trigger"] = json!({ "type": "manual" });
    check(
        template(vec![m]),
        &[("TPL0028", "$.blocks[0].trigger.type", Some("m"))],
    );
}

#[test]
fn emitted_events_name_a_json_artifact_of_the_block_and_a_name_of_their_own() {
    let mut b = block("a");
    b["outputs"]["artifacts"] = json!([
        { "key": "out", "path": "out.md", "format": "md" },
        { "key": "entities", "path": "entities.json", "format": "json" }
    ]);
    b["outputs"]["emits"] = json!([{ "event": "entity.created", "artifact": "entities" }]);
    check(template(vec![b.clone()]), &[]);
    b["outputs"]["emits"] = json!([
        { "event": "run.finished", "artifact": "entities" },
        { "event": "entity.created", "artifact": "out" },
        { "event": "entity.created", "artifact": "nope" },
        { "event": "entity.created", "artifact": "nope" },
        { "event": "entity.created", "artifact": "entities", "extra": 1 }
    ]);
    check(
        template(vec![b.clone()]),
        &[("TPL0003", "$.blocks[0].outputs.emits[4].extra", Some("a"))],
    );
    b["outputs"]["emits"].as_array_mut().unwrap().pop();
    let validated = check(
        template(vec![b]),
        &[
            ("TPL0026", "$.blocks[0].outputs.emits[0].event", Some("a")),
            (
                "TPL0026",
                "$.blocks[0].outputs.emits[1].artifact",
                Some("a"),
            ),
            (
                "TPL0008",
                "$.blocks[0].outputs.emits[2].artifact",
                Some("a"),
            ),
            (
                "TPL0008",
                "$.blocks[0].outputs.emits[3].artifact",
                Some("a"),
            ),
            ("TPL0011", "$.blocks[0].outputs.emits[3]", Some("a")),
        ],
    );
    assert!(
        validated
            .errors()
            .any(|d| d.message.contains("factory's own"))
    );
}

// ── fan_out ──

/// `b` fans out a `command` block over `over`.
fn fanned(mut b: Value, over: Value) -> Value {
    b["runtime"] = json!("command");
    b["inputs"]["config"] = json!({ "command": ["true"] });
    b["fan_out"] = json!({ "over": over });
    b
}

#[test]
fn a_fan_out_reads_a_declared_param_or_a_json_artifact_of_a_dependency() {
    let mut planner = block("planner");
    planner["outputs"]["artifacts"] = json!([
        { "key": "plan", "path": "plan.json", "format": "json" },
        { "key": "notes", "path": "notes.md", "format": "md" }
    ]);
    let mut t = template(vec![
        planner.clone(),
        fanned(block_on("lens", &[]), json!({ "param": "perspectives" })),
        fanned(
            block_on("by-plan", &["planner"]),
            json!({ "block": "planner", "artifact": "plan", "pointer": "/items" }),
        ),
    ]);
    t["blocks"][2]["inputs"]["depends"] = json!([{ "block": "planner", "key": "plan" }]);
    t["params"] = json!({ "perspectives": { "default": ["a", "b"] } });
    check(t.clone(), &[]);

    let mut bad = t.clone();
    bad["params"] = json!({});
    check(bad, &[("TPL0031", "fan_out.over.param", Some("lens"))]);

    let mut bad = t.clone();
    bad["blocks"][2]["fan_out"]["over"] = json!({ "block": "planner", "artifact": "notes" });
    let validated = check(
        bad,
        &[("TPL0031", "fan_out.over.artifact", Some("by-plan"))],
    );
    assert!(
        only_error(&validated)
            .message
            .contains("not a `json` artifact")
    );

    let mut bad = t.clone();
    bad["blocks"][2]["inputs"]["depends"] = json!([]);
    let validated = check(bad, &[("TPL0031", "fan_out.over.block", Some("by-plan"))]);
    assert!(help(only_error(&validated)).contains("inputs.depends"));

    let mut bad = t.clone();
    bad["blocks"][1]["fan_out"]["over"] = json!({ "param": "perspectives", "block": "planner" });
    check(bad, &[("TPL0031", "fan_out.over", Some("lens"))]);

    let mut bad = t.clone();
    bad["blocks"][2]["fan_out"]["over"]["pointer"] = json!("items");
    check(bad, &[("TPL0031", "fan_out.over.pointer", Some("by-plan"))]);
}

#[test]
fn a_fan_out_is_bounded_and_only_on_blocks_that_can_tell_instances_apart() {
    let mut t = template(vec![fanned(block("lens"), json!({ "param": "p" }))]);
    t["params"] = json!({ "p": {} });

    let mut bad = t.clone();
    bad["blocks"][0]["fan_out"]["max"] = json!(20_000);
    check(bad, &[("TPL0002", "fan_out.max", Some("lens"))]);
    let mut bad = t.clone();
    bad["blocks"][0]["fan_out"]["need"] = json!({ "at_least": 200 });
    check(bad, &[("TPL0031", "fan_out.need", Some("lens"))]);
    let mut ok = t.clone();
    ok["blocks"][0]["fan_out"]["need"] = json!({ "at_least": 2 });
    check(ok, &[]);
    let mut bad = t.clone();
    bad["blocks"][0]["fan_out"]["need"] = json!("most");
    let validated = validate_value(&bad);
    assert!(validated.has_errors(), "an unknown need is refused");
    let mut bad = t.clone();
    bad["blocks"][0]["runtime"] = json!("builtin");
    bad["blocks"][0]["inputs"]["config"] =
        json!({ "builtin": "review-page", "page": "expert-audit" });
    check(bad, &[("TPL0031", "runtime", Some("lens"))]);
    let mut ok = t.clone();
    ok["blocks"][0]["runtime"] = json!("builtin");
    ok["blocks"][0]["inputs"]["config"] = json!({ "builtin": "noop" });
    check(ok, &[]);
    let mut bad = t.clone();
    bad["blocks"][0]["outputs"]["artifacts"] =
        json!([{ "key": "out", "path": "out.json", "format": "json" }]);
    bad["blocks"][0]["outputs"]["emits"] = json!([{ "event": "lens.made", "artifact": "out" }]);
    check(bad, &[("TPL0031", "outputs.emits", Some("lens"))]);
    let mut bad = t.clone();
    bad["blocks"][0]["fan_out"]["surprise"] = json!(1);
    assert!(
        validate_value(&bad).has_errors(),
        "unknown fields are refused"
    );

    // A list read from a block that fans out itself is not one list.
    let mut nested = t.clone();
    let mut second = fanned(
        block_on("second", &["lens"]),
        json!({ "block": "lens", "artifact": "out" }),
    );
    nested["blocks"][0]["outputs"]["artifacts"] =
        json!([{ "key": "out", "path": "out.json", "format": "json" }]);
    second["inputs"]["depends"] = json!([{ "block": "lens", "key": "out" }]);
    nested["blocks"].as_array_mut().unwrap().push(second);
    check(nested, &[("TPL0031", "fan_out.over.block", Some("second"))]);
}

#[test]
fn the_meeting_brief_templates_are_valid() {
    for source in [MEETING_BRIEF, MEETING_BRIEF_OFFLINE] {
        let validated = check_str(source, &[]);
        assert!(
            validated.diagnostics.is_empty(),
            "{:#?}",
            validated.diagnostics
        );
        let pipeline = validated.pipeline.unwrap();
        assert!(pipeline.block("perspective").unwrap().fan_out.is_some());
    }
}

#[test]
fn a_lens_names_its_perspective_once_rolls_up_on_declared_params_and_aggregates_perspectives() {
    let with_params = |blocks: Vec<Value>| {
        let mut t = template(blocks);
        t["params"] =
            json!({ "entity_id": { "required": true }, "angles": { "default": ["a", "b"] } });
        t
    };
    // A lens is for blocks whose prompt or step hears it.
    let command = |mut b: Value| {
        b["runtime"] = json!("command");
        b["inputs"]["config"] = json!({ "command": ["true"] });
        b
    };
    let mut fan = command(block("lens"));
    fan["fan_out"] = json!({ "over": { "param": "angles" } });
    fan["lens"] = json!({ "aggregates": ["entity_id"], "feedback_loop": true, "drop_below": 2, "min_ratings": 2, "review_below": 3 });
    let mut fixed = command(block("risk"));
    fixed["lens"] = json!({ "perspective": "partnership risk", "aggregates": ["entity_id"] });
    let mut brief = command(block_on("brief", &["lens", "risk"]));
    brief["lens"] = json!({ "aggregates": ["entity_id"], "feedback_loop": true });
    check(
        with_params(vec![fan.clone(), fixed.clone(), brief.clone()]),
        &[],
    );

    // A perspective on a fan-out, an empty one, an undeclared or repeated
    // aggregate param.
    let mut bad_fan = fan.clone();
    bad_fan["lens"]["perspective"] = json!("positioning");
    bad_fan["lens"]["aggregates"] = json!(["entity_id", "entity", "entity_id"]);
    let mut empty = fixed.clone();
    empty["lens"]["perspective"] = json!("  ");
    let validated = check(
        with_params(vec![bad_fan, empty, brief.clone()]),
        &[
            ("TPL0032", "$.blocks[0].lens.perspective", Some("lens")),
            ("TPL0032", "$.blocks[0].lens.aggregates[1]", Some("lens")),
            ("TPL0032", "$.blocks[0].lens.aggregates[2]", Some("lens")),
            ("TPL0032", "$.blocks[1].lens.perspective", Some("risk")),
        ],
    );
    assert!(
        validated
            .errors()
            .any(|d| d.message.contains("`entity` is not a declared param"))
    );

    // What acts through ratings, where it cannot: on a block that does not
    // fan out, without the feedback loop, `min_ratings` without a bar.
    let mut no_loop = fan.clone();
    no_loop["lens"]["feedback_loop"] = json!(false);
    let mut not_fan = fixed.clone();
    not_fan["lens"]["review_below"] = json!(2.5);
    check(
        with_params(vec![no_loop, not_fan, brief.clone()]),
        &[
            ("TPL0032", "$.blocks[0].lens.drop_below", Some("lens")),
            ("TPL0032", "$.blocks[0].lens.review_below", Some("lens")),
            ("TPL0032", "$.blocks[0].lens.min_ratings", Some("lens")),
            ("TPL0032", "$.blocks[1].lens.review_below", Some("risk")),
        ],
    );
    let mut no_bar = fan.clone();
    no_bar["lens"]["drop_below"] = Value::Null;
    check(
        with_params(vec![no_bar, fixed.clone(), brief.clone()]),
        &[("TPL0032", "$.blocks[0].lens.min_ratings", Some("lens"))],
    );
    // A bar outside 1–5 is a schema error.
    let mut high = fan.clone();
    high["lens"]["drop_below"] = json!(7);
    check(
        with_params(vec![high, fixed.clone(), brief.clone()]),
        &[("TPL0002", "$.blocks[0].lens.drop_below", Some("lens"))],
    );

    // An aggregate reading no perspective.
    let plain = block("plain");
    let mut lonely = command(block_on("brief", &["plain"]));
    lonely["lens"] = json!({ "aggregates": ["entity_id"] });
    check(
        with_params(vec![plain, lonely]),
        &[("TPL0032", "$.blocks[1].lens", Some("brief"))],
    );
    // A built-in hears nothing.
    let mut noop = block("risk");
    noop["lens"] = json!({ "perspective": "risk" });
    let validated = check(
        with_params(vec![fan.clone(), noop, brief.clone()]),
        &[("TPL0032", "$.blocks[1].lens", Some("risk"))],
    );
    assert!(
        validated
            .errors()
            .any(|d| d.message.contains("`lens` on a `builtin` block"))
    );
}

#[test]
fn on_demand_says_how_runs_start_on_the_block_they_start_from() {
    // A person starts it (manual or no trigger), or a feed event does.
    for trigger in [
        json!({ "type": "manual" }),
        json!({ "type": "dependency" }),
        json!({ "type": "event", "event": "meeting.scheduled" }),
    ] {
        let mut a = block("a");
        a["lifecycle"] = json!({ "mode": "on-demand" });
        a["trigger"] = trigger.clone();
        let validated = check(template(vec![a, block_on("b", &["a"])]), &[]);
        let starters = validated.pipeline.unwrap().starters().len();
        assert_eq!(
            starters,
            usize::from(trigger["type"] == "event"),
            "{trigger}"
        );
    }
    // Not on a schedule, not on a block its dependencies start.
    let mut a = block("a");
    a["lifecycle"] = json!({ "mode": "on-demand" });
    a["trigger"] = json!({ "type": "cron", "cron": "0 6 * * *" });
    let mut b = block_on("b", &["a"]);
    b["lifecycle"] = json!({ "mode": "on-demand" });
    check(
        template(vec![a, b]),
        &[
            ("TPL0026", "$.blocks[0].lifecycle.mode", Some("a")),
            ("TPL0026", "$.blocks[1].lifecycle.mode", Some("b")),
        ],
    );
}

#[test]
fn a_block_labelled_before_its_dependency_is_warned_about() {
    let mut early = block_on("gaps", &["review"]);
    early["layer"] = json!("L2.5");
    let mut review = block("review");
    review["layer"] = json!("L2.6");
    let layer_warnings = |value: Value| -> Vec<Diagnostic> {
        let validated = check(value, &[]);
        validated
            .diagnostics
            .into_iter()
            .filter(|d| d.code == "TPL0033")
            .collect()
    };
    let warnings = layer_warnings(template(vec![review.clone(), early.clone()]));
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].path, "$.blocks[1].inputs.depends[0]");
    assert_eq!(warnings[0].block.as_deref(), Some("gaps"));
    assert!(
        warnings[0].message.contains("L2.6"),
        "{}",
        warnings[0].message
    );
    early["layer"] = json!("L2.7");
    assert!(layer_warnings(template(vec![review.clone(), early.clone()])).is_empty());
    // Labels that are not `L<number>` are not compared.
    early["layer"] = json!("extract");
    assert!(layer_warnings(template(vec![review, early])).is_empty());
}

#[test]
fn outputs_gaps_names_one_of_the_blocks_json_artifacts() {
    let mut b = block("analyzer");
    b["outputs"]["gaps"] = json!("out");
    // `out` is a text artifact here.
    check(
        template(vec![b.clone()]),
        &[("TPL0014", "$.blocks[0].outputs.gaps", Some("analyzer"))],
    );
    b["outputs"]["gaps"] = json!("nowhere");
    check(
        template(vec![b.clone()]),
        &[("TPL0008", "$.blocks[0].outputs.gaps", Some("analyzer"))],
    );
    b["outputs"]["gaps"] = json!("gaps");
    b["outputs"]["artifacts"] = json!([{ "key": "gaps", "path": "gaps.json", "format": "json" }]);
    check(template(vec![b]), &[]);
}

#[test]
fn an_optional_http_call_is_never_memoized() {
    let mut b = with_runtime("http", json!({ "url_env": "HOOK", "optional": true }));
    b["execution"] = json!({ "cache": true });
    check(
        template(vec![b]),
        &[("TPL0030", "$.blocks[0].execution.cache", Some("a"))],
    );
}

#[test]
fn a_corrections_router_names_only_review_pages_as_its_sources() {
    let router = |config: Value| template(vec![with_runtime("builtin", config)]);
    check(
        router(json!({"builtin": "corrections-router", "sources": ["extraction-review"]})),
        &[],
    );
    check(router(json!({"builtin": "corrections-router"})), &[]);
    for (bad, says) in [
        (json!([]), "non-empty list"),
        (json!("extraction-review"), "non-empty list"),
        (
            json!(["extraction-reviews"]),
            "\"extraction-reviews\", which is not a review page",
        ),
    ] {
        let validated = check(
            router(json!({"builtin": "corrections-router", "sources": bad.clone()})),
            &[("TPL0014", "$.blocks[0].inputs.config.sources", Some("a"))],
        );
        let d = only_error(&validated);
        assert!(d.message.contains(says), "{bad}: {}", d.message);
        assert!(
            help(d).contains("extraction-review, expert-audit"),
            "{}",
            help(d)
        );
    }
    let validated = check(
        router(json!({"builtin": "corrections-router", "source": ["expert-audit"]})),
        &[("TPL0014", "$.blocks[0].inputs.config.source", Some("a"))],
    );
    assert!(
        only_error(&validated)
            .message
            .contains("no setting `source`")
    );
}
