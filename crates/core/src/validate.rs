//! Template validation: JSON syntax, then shape (against the generated JSON
//! Schema), then meaning (ids, wiring, cycles, runtime config).
//!
//! Every pass collects all of its problems. A later pass runs only when the
//! earlier one leaves something it can work on: semantic checks need typed
//! blocks, so they run once the shape is right.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::Value;

use crate::diagnostics::{Diagnostic, codes};
use crate::pipeline::Pipeline;
use crate::template::{self, Runtime, Template};

/// Built-in block names the `builtin` runtime knows. Kept here so that
/// validation (pure) and the runtime (IO) agree on one list.
pub const BUILTINS: &[&str] = &[
    "noop",
    "sleep",
    "corrections-router",
    "review-page",
    // The meta-audit's steps (`crate::meta_audit`), run by the engine.
    "run-aggregate",
    "specificity-deep-check",
    "cross-block-consistency",
    "delta-report",
    "audit-scorecard",
];

/// The review pages `factory serve` renders for a `review-page` builtin.
pub const REVIEW_PAGES: &[&str] = &["extraction-review", "expert-audit"];

/// The outcome of validating a template: the pipeline if there were no
/// errors, and every diagnostic (errors and warnings) found.
#[derive(Debug)]
pub struct Validated {
    pub pipeline: Option<Pipeline>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Validated {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    fn failed(diagnostics: Vec<Diagnostic>) -> Validated {
        Validated {
            pipeline: None,
            diagnostics,
        }
    }
}

/// Validates template source text.
pub fn validate_str(source: &str) -> Validated {
    validate_str_as(source, Stored::No)
}

/// Validates the template a stored run was created with. Checks added since
/// (the refusal of stream and lens fields, TPL0026–TPL0028) are warnings
/// here, not errors: a run created before them must still open, resume and
/// show, with the template it ran under.
pub fn validate_stored_str(source: &str) -> Validated {
    validate_str_as(source, Stored::Yes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    No,
    Yes,
}

/// Codes that came after templates were first stored with runs.
const NEWER_THAN_STORED_RUNS: [&str; 4] = [
    codes::TRIGGER,
    codes::RECORD_STATE,
    codes::NOT_SUPPORTED_YET,
    codes::STREAM,
];

fn validate_str_as(source: &str, stored: Stored) -> Validated {
    match serde_json::from_str::<Value>(source) {
        Ok(value) => {
            let typed = typed_template(&value);
            // A large template's tree is several times its text: let it go
            // before the pipeline is built beside the typed template.
            drop(value);
            typed.map_or_else(Validated::failed, |template| {
                validate_template_as(template, stored)
            })
        }
        Err(error) => {
            let message = strip_position(&error.to_string());
            // serde_json stops at 128 levels of nesting: the text may be
            // valid JSON, just deeper than any template needs.
            let diagnostic = if message.contains("recursion limit exceeded") {
                Diagnostic::error(
                    codes::SYNTAX,
                    "$",
                    "JSON nested too deep: more than 128 levels of arrays and objects",
                )
                .with_help("a template is a few levels deep; flatten the value that nests this far")
            } else {
                Diagnostic::error(codes::SYNTAX, "$", format!("malformed JSON: {message}"))
                    .with_help("fix the JSON syntax at this line and column")
            };
            Validated::failed(vec![diagnostic.at(error.line(), error.column())])
        }
    }
}

/// Validates a parsed JSON value.
pub fn validate_value(value: &Value) -> Validated {
    typed_template(value).map_or_else(Validated::failed, validate_template)
}

/// The shape check, then the typed template (or why there is none).
fn typed_template(value: &Value) -> Result<Template, Vec<Diagnostic>> {
    let shape = check_shape(value);
    if shape.iter().any(Diagnostic::is_error) {
        return Err(shape);
    }
    match serde_path_to_error::deserialize::<_, Template>(value) {
        Ok(template) => Ok(template),
        Err(error) => {
            // The schema accepted it but the types did not (e.g. `2.0` where an
            // integer is needed): report where, like any other shape error.
            let segments = error.path().to_string();
            let path = if segments == "." {
                "$".to_string()
            } else {
                format!("$.{segments}")
            }
            .replace(".[", "[");
            let block = block_for_path(value, &path);
            Err(vec![
                Diagnostic::error(codes::SCHEMA, path, error.into_inner().to_string())
                    .in_block(block.unwrap_or_default())
                    .with_help("change the value to the expected type (whole numbers without a decimal point)"),
            ])
        }
    }
}

/// Semantic validation of a typed template; builds the [`Pipeline`] when clean.
pub fn validate_template(template: Template) -> Validated {
    validate_template_as(template, Stored::No)
}

fn validate_template_as(template: Template, stored: Stored) -> Validated {
    let mut diagnostics = check_semantics(&template);
    if stored == Stored::Yes {
        for diagnostic in &mut diagnostics {
            if NEWER_THAN_STORED_RUNS.contains(&diagnostic.code) {
                diagnostic.severity = crate::diagnostics::Severity::Warning;
            }
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Validated::failed(diagnostics);
    }
    match Pipeline::build(template) {
        Ok(pipeline) => Validated {
            pipeline: Some(pipeline),
            diagnostics,
        },
        Err(cycle) => {
            let first = cycle.first().cloned().unwrap_or_default();
            diagnostics.push(
                Diagnostic::error(
                    codes::CYCLE,
                    "$.blocks",
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                )
                .in_block(first)
                .with_help("remove one of these dependencies so the blocks form a DAG"),
            );
            Validated::failed(diagnostics)
        }
    }
}

// ── Shape: the generated JSON Schema ──

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(template::json_schema)
}

fn check_shape(value: &Value) -> Vec<Diagnostic> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    let Some(validator) = VALIDATOR.get_or_init(|| jsonschema::validator_for(schema()).ok()) else {
        return vec![Diagnostic::error(
            codes::SCHEMA,
            "$",
            "internal error: the template schema did not compile",
        )];
    };
    let mut diagnostics = Vec::new();
    for error in validator.iter_errors(value) {
        push_schema_error(value, &error, &mut diagnostics);
    }
    diagnostics.sort_by(|a, b| a.path.cmp(&b.path).then(a.message.cmp(&b.message)));
    diagnostics.dedup();
    diagnostics
}

fn push_schema_error(
    root: &Value,
    error: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Diagnostic>,
) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let pointer = error.instance_path().as_str().to_string();
    let path = pointer_to_path(&pointer);
    let block = block_for_pointer(root, &pointer);
    match error.kind() {
        // `Option<Struct>` fields are `anyOf: [struct, null]`; report what is
        // wrong inside the struct rather than "not valid under any schema".
        Kind::AnyOf { context } | Kind::OneOfNotValid { context } => {
            // An enum whose variants carry doc comments is a `oneOf` of
            // `const`s; report it once, like `enum`, not once per variant.
            if let Some(allowed) = const_options(context, &pointer) {
                out.push(enum_diagnostic(error.instance(), path, block, &allowed));
                return;
            }
            let informative: Vec<_> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().all(|e| {
                        matches!(e.kind(), Kind::Type { .. })
                            && e.instance_path().as_str() == pointer
                    })
                })
                .collect();
            if informative.is_empty() {
                out.push(
                    Diagnostic::error(
                        codes::SCHEMA,
                        path,
                        format!("{} is not an allowed value here", error.instance()),
                    )
                    .in_block(block.unwrap_or_default())
                    .with_help("expected an object (or null); see `factory schema` for its fields"),
                );
            } else {
                for branch in informative {
                    for inner in branch {
                        push_schema_error(root, inner, out);
                    }
                }
            }
        }
        Kind::AdditionalProperties { unexpected } => {
            let allowed = allowed_properties(&pointer, root);
            for field in unexpected {
                let field_path = format!("{path}.{field}");
                if field == "state" && is_block_pointer(&pointer) {
                    out.push(
                        Diagnostic::error(
                            codes::STATE_IN_TEMPLATE,
                            field_path,
                            "`state` is runtime state managed by the engine and is never accepted in a template",
                        )
                        .in_block(block.clone().unwrap_or_default())
                        .with_help("remove the `state` object from this block"),
                    );
                    continue;
                }
                let mut diagnostic = Diagnostic::error(
                    codes::UNKNOWN_FIELD,
                    field_path,
                    format!("unknown field `{field}`"),
                )
                .in_block(block.clone().unwrap_or_default());
                diagnostic = match closest(field, allowed.iter().map(String::as_str)) {
                    Some(suggestion) => {
                        diagnostic.with_help(format!("did you mean `{suggestion}`?"))
                    }
                    None if !allowed.is_empty() => {
                        diagnostic.with_help(format!("allowed fields here: {}", allowed.join(", ")))
                    }
                    None => diagnostic,
                };
                out.push(diagnostic);
            }
        }
        Kind::Enum { options } => {
            let allowed = options
                .as_array()
                .map(|values| {
                    values
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            out.push(enum_diagnostic(error.instance(), path, block, &allowed));
        }
        _ => {
            let help = match error.kind() {
                Kind::Minimum { .. } | Kind::Maximum { .. } => {
                    Some("use a value inside the allowed range")
                }
                Kind::Required { .. } => Some("add the missing field"),
                Kind::Type { .. } => Some("change the value to the expected type"),
                _ => None,
            };
            let mut diagnostic = Diagnostic::error(codes::SCHEMA, path, masked(error))
                .in_block(block.unwrap_or_default());
            if let Some(help) = help {
                diagnostic = diagnostic.with_help(help);
            }
            out.push(diagnostic);
        }
    }
}

fn enum_diagnostic(
    instance: &Value,
    path: String,
    block: Option<String>,
    allowed: &[String],
) -> Diagnostic {
    let mut diagnostic = Diagnostic::error(
        codes::SCHEMA,
        path,
        format!("{instance} is not one of: {}", allowed.join(", ")),
    )
    .in_block(block.unwrap_or_default());
    if let Some(text) = instance.as_str()
        && let Some(suggestion) = closest(text, allowed.iter().map(String::as_str))
    {
        diagnostic = diagnostic.with_help(format!("did you mean `{suggestion}`?"));
    }
    diagnostic
}

/// The allowed values when every branch of a `oneOf`/`anyOf` is a `const` or
/// an `enum` (possibly with a `type`) failing at this very location.
fn const_options(
    context: &[Vec<jsonschema::ValidationError<'static>>],
    pointer: &str,
) -> Option<Vec<String>> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let mut allowed = Vec::new();
    for branch in context {
        let mut values = Vec::new();
        for e in branch {
            if e.instance_path().as_str() != pointer {
                return None;
            }
            match e.kind() {
                Kind::Constant { expected_value } => values.push(text(expected_value)),
                Kind::Enum { options } => values.extend(options.as_array()?.iter().map(text)),
                Kind::Type { .. } => {}
                _ => return None,
            }
        }
        if values.is_empty() {
            return None;
        }
        allowed.extend(values);
    }
    (!allowed.is_empty()).then_some(allowed)
}

fn masked(error: &jsonschema::ValidationError<'_>) -> String {
    let text = error.to_string();
    // Keep messages short: a whole block object quoted back is noise.
    if text.len() > 300 {
        format!("{}…", &text[..text.floor_char_boundary(300)])
    } else {
        text
    }
}

/// `/blocks/3/inputs/depends/0` → `$.blocks[3].inputs.depends[0]`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::from("$");
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}

fn block_for_pointer(root: &Value, pointer: &str) -> Option<String> {
    let mut segments = pointer.split('/').skip(1);
    if segments.next() != Some("blocks") {
        return None;
    }
    let index: usize = segments.next()?.parse().ok()?;
    let block = root.get("blocks")?.get(index)?;
    Some(
        block
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("#{index}"), str::to_string),
    )
}

/// `$.blocks[3].execution` → the id of block 3.
fn block_for_path(root: &Value, path: &str) -> Option<String> {
    let index = path.strip_prefix("$.blocks[")?.split(']').next()?;
    block_for_pointer(root, &format!("/blocks/{index}"))
}

fn is_block_pointer(pointer: &str) -> bool {
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    segments.len() == 2 && segments[0] == "blocks"
}

/// Property names the schema allows at an instance location, for "did you mean".
fn allowed_properties(pointer: &str, root: &Value) -> Vec<String> {
    let schema = schema();
    let mut node = schema;
    let mut instance = root;
    for segment in pointer.split('/').skip(1) {
        node = resolve(schema, node);
        if let Some(items) = node.get("items") {
            node = items;
        } else if let Some(property) = node.get("properties").and_then(|p| p.get(segment)) {
            node = property;
        } else if let Some(additional) = node.get("additionalProperties")
            && additional.is_object()
        {
            node = additional;
        } else {
            return Vec::new();
        }
        instance = match instance {
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Object(map) => map.get(segment),
            _ => None,
        }
        .unwrap_or(&Value::Null);
    }
    let node = resolve(schema, node);
    node.get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

/// Follows `$ref` and picks the object branch of `anyOf: [T, null]`.
fn resolve<'a>(schema: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..8 {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            let pointer = reference.trim_start_matches('#');
            match schema.pointer(pointer) {
                Some(target) => node = target,
                None => return node,
            }
        } else if let Some(branches) = node.get("anyOf").and_then(Value::as_array) {
            match branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            {
                Some(branch) => node = branch,
                None => return node,
            }
        } else {
            return node;
        }
    }
    node
}

/// The candidate nearest to a misspelt `word`, if one is near enough to be
/// what was meant.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(1) + 1 && *distance > 0)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

// ── Meaning ──

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && id.len() <= 128
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_semantics(template: &Template) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !valid_id(&template.id) {
        out.push(
            Diagnostic::error(
                codes::BAD_ID,
                "$.id",
                format!("invalid template id `{}`", template.id),
            )
            .with_help(
                "use lowercase letters, digits, `-` and `_`, starting with a letter or digit",
            ),
        );
    }
    if template.blocks.is_empty() {
        out.push(
            Diagnostic::error(
                codes::EMPTY_TEMPLATE,
                "$.blocks",
                "the template has no blocks",
            )
            .with_help("add at least one block"),
        );
    }

    // Ids first: everything else resolves references through them.
    let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, block) in template.blocks.iter().enumerate() {
        let path = format!("$.blocks[{i}].id");
        if !valid_id(&block.id) {
            out.push(
                Diagnostic::error(
                    codes::BAD_ID,
                    &path,
                    format!("invalid block id `{}`", block.id),
                )
                .in_block(block.id.clone())
                .with_help(
                    "use lowercase letters, digits, `-` and `_`, starting with a letter or digit",
                ),
            );
        }
        if let Some(&earlier) = first_seen.get(block.id.as_str()) {
            out.push(
                Diagnostic::error(
                    codes::DUPLICATE_BLOCK,
                    &path,
                    format!(
                        "duplicate block id `{}` (first declared at $.blocks[{earlier}])",
                        block.id
                    ),
                )
                .in_block(block.id.clone())
                .with_help("give every block a unique id"),
            );
        } else {
            first_seen.insert(&block.id, i);
        }
    }
    let artifacts_of: BTreeMap<&str, Vec<&str>> = template
        .blocks
        .iter()
        .map(|b| {
            (
                b.id.as_str(),
                b.outputs.artifacts.iter().map(|a| a.key.as_str()).collect(),
            )
        })
        .collect();

    let declared_params: BTreeSet<&str> = template.params.keys().map(String::as_str).collect();
    for (i, block) in template.blocks.iter().enumerate() {
        check_block(i, block, &artifacts_of, &declared_params, &mut out);
    }
    if let Some(subject) = template
        .audit
        .as_ref()
        .and_then(|a| a.subject_param.as_ref())
        && !template.params.contains_key(subject)
    {
        out.push(
            Diagnostic::error(
                codes::AUDIT,
                "$.audit.subject_param",
                format!("audit subject param `{subject}` is not declared in params"),
            )
            .with_help("declare it under `params` or name a declared param"),
        );
    }
    check_convergence(template, &mut out);
    fan_out::check(template, &mut out);
    lens::check(template, &mut out);
    media::check_optional_readers(template, &mut out);
    if let Err(problems) = crate::stream::plan(template) {
        out.extend(problems);
    }
    out.extend(crate::stream::misplaced_batch(template));
    out.extend(crate::starter::check(template));
    check_parallel_groups(template, &mut out);
    check_layer_order(template, &mut out);
    check_profiles(template, &first_seen, &mut out);
    for (name, spec) in &template.params {
        if spec.required && spec.default.is_some() {
            out.push(
                Diagnostic::warning(
                    codes::PARAM,
                    format!("$.params.{name}"),
                    format!(
                        "param `{name}` is required but has a default, so it can never be missing"
                    ),
                )
                .with_help("drop `required` or the default"),
            );
        }
    }
    out
}

/// The number of a layer label such as `L2.5` (None for other labels).
fn layer_number(layer: &str) -> Option<f64> {
    layer
        .strip_prefix(['L', 'l'])
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| n.is_finite())
}

/// Layers are how people read a pipeline; a block labelled before one of its
/// dependencies says it runs earlier than it can, so the label misleads.
fn check_layer_order(template: &Template, out: &mut Vec<Diagnostic>) {
    let layers: BTreeMap<&str, (&str, f64)> = template
        .blocks
        .iter()
        .filter_map(|b| Some((b.id.as_str(), (b.layer.as_str(), layer_number(&b.layer)?))))
        .collect();
    for (i, block) in template.blocks.iter().enumerate() {
        let Some(own) = layer_number(&block.layer) else {
            continue;
        };
        let mut reported = BTreeSet::new();
        for (d, dep) in block.inputs.depends.iter().enumerate() {
            let Some(&(label, upstream)) = layers.get(dep.block.as_str()) else {
                continue;
            };
            if upstream > own && reported.insert(dep.block.as_str()) {
                out.push(
                    Diagnostic::warning(
                        codes::LAYER_ORDER,
                        format!("$.blocks[{i}].inputs.depends[{d}]"),
                        format!(
                            "`{}` is in layer {} but depends on `{}` in the later layer {label}; it can only run after it",
                            block.id, block.layer, dep.block
                        ),
                    )
                    .in_block(block.id.clone())
                    .with_help("give the block a layer at or after its dependencies', or drop the dependency"),
                );
            }
        }
    }
}

fn check_block(
    i: usize,
    block: &template::Block,
    artifacts_of: &BTreeMap<&str, Vec<&str>>,
    declared_params: &BTreeSet<&str>,
    out: &mut Vec<Diagnostic>,
) {
    let at = |suffix: &str| format!("$.blocks[{i}]{suffix}");
    let id = block.id.clone();

    stream_fields::check(i, block, out);

    for (f, pattern) in block.inputs.files.iter().enumerate() {
        if let Err(error) = glob::Pattern::new(pattern) {
            out.push(
                Diagnostic::error(
                    codes::FILE_PATTERN,
                    at(&format!(".inputs.files[{f}]")),
                    format!("file pattern `{pattern}` is not valid: {error}"),
                )
                .in_block(id.clone())
                .with_help("use `*`, `?` and `[…]`, e.g. `*.md` or `transcript-*.txt`"),
            );
        }
    }

    if block.inputs.mode == template::DependencyMode::Any {
        let upstream: BTreeSet<&str> = block
            .inputs
            .depends
            .iter()
            .map(|d| d.block.as_str())
            .collect();
        if upstream.len() < 2 {
            out.push(
                Diagnostic::error(
                    codes::ANY_MODE,
                    at(".inputs.mode"),
                    format!(
                        "`mode: any` needs dependencies on at least two blocks; this block depends on {}",
                        upstream.len()
                    ),
                )
                .in_block(id.clone())
                .with_help("remove `mode` (the default `all`) or add the other blocks it may follow"),
            );
        }
    }

    let mut keys = BTreeSet::new();
    for (a, artifact) in block.outputs.artifacts.iter().enumerate() {
        if !keys.insert(artifact.key.as_str()) {
            out.push(
                Diagnostic::error(
                    codes::DUPLICATE_KEY,
                    at(&format!(".outputs.artifacts[{a}].key")),
                    format!("duplicate artifact key `{}`", artifact.key),
                )
                .in_block(id.clone()),
            );
        }
        let path = std::path::Path::new(&artifact.path);
        if artifact.path.trim().is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            out.push(
                Diagnostic::error(
                    codes::BAD_PATH,
                    at(&format!(".outputs.artifacts[{a}].path")),
                    format!(
                        "artifact path `{}` must be a non-empty relative path without `..`",
                        artifact.path
                    ),
                )
                .in_block(id.clone())
                .with_help(
                    "paths are relative to the attempt's output directory, e.g. `report.md`",
                ),
            );
        }
    }

    let mut metric_keys = BTreeSet::new();
    for (m, metric) in block.outputs.metrics.iter().enumerate() {
        if !metric_keys.insert(metric.key.as_str()) {
            out.push(
                Diagnostic::error(
                    codes::DUPLICATE_KEY,
                    at(&format!(".outputs.metrics[{m}].key")),
                    format!("duplicate metric key `{}`", metric.key),
                )
                .in_block(id.clone()),
            );
        }
    }

    let mut seen_deps = BTreeSet::new();
    for (d, dep) in block.inputs.depends.iter().enumerate() {
        let path = at(&format!(".inputs.depends[{d}]"));
        if dep.block == block.id {
            out.push(
                Diagnostic::error(
                    codes::SELF_DEPENDENCY,
                    &path,
                    "a block cannot depend on itself",
                )
                .in_block(id.clone())
                .with_help("depend on an upstream block's artifact instead"),
            );
            continue;
        }
        match artifacts_of.get(dep.block.as_str()) {
            None => {
                let mut diagnostic = Diagnostic::error(
                    codes::MISSING_BLOCK,
                    format!("{path}.block"),
                    format!("depends on unknown block `{}`", dep.block),
                )
                .in_block(id.clone());
                if let Some(suggestion) = closest(&dep.block, artifacts_of.keys().copied()) {
                    diagnostic = diagnostic.with_help(format!("did you mean `{suggestion}`?"));
                }
                out.push(diagnostic);
            }
            Some(keys) if !keys.contains(&dep.key.as_str()) => {
                let help = if keys.is_empty() {
                    format!(
                        "block `{}` declares no artifacts; add one under its outputs.artifacts",
                        dep.block
                    )
                } else {
                    match closest(&dep.key, keys.iter().copied()) {
                        Some(s) => format!(
                            "did you mean `{s}`? `{}` declares: {}",
                            dep.block,
                            keys.join(", ")
                        ),
                        None => format!("`{}` declares: {}", dep.block, keys.join(", ")),
                    }
                };
                out.push(
                    Diagnostic::error(
                        codes::MISSING_ARTIFACT,
                        format!("{path}.key"),
                        format!("block `{}` declares no artifact `{}`", dep.block, dep.key),
                    )
                    .in_block(id.clone())
                    .with_help(help),
                );
            }
            Some(_) => {}
        }
        if !seen_deps.insert((dep.block.as_str(), dep.key.as_str())) {
            out.push(
                Diagnostic::warning(
                    codes::DUPLICATE_DEPENDENCY,
                    &path,
                    format!("dependency on `{}.{}` is listed twice", dep.block, dep.key),
                )
                .in_block(id.clone()),
            );
        }
    }

    for (e, name) in block.inputs.env.iter().enumerate() {
        if !valid_env_name(name) {
            out.push(
                Diagnostic::error(
                    codes::BAD_ENV_NAME,
                    at(&format!(".inputs.env[{e}]")),
                    format!("`{name}` is not a valid environment variable name"),
                )
                .in_block(id.clone())
                .with_help("use letters, digits and `_`, not starting with a digit"),
            );
        }
    }

    if let Some(threshold) = &block.execution.threshold
        && !metric_keys.contains(threshold.metric.as_str())
    {
        let declared: Vec<&str> = metric_keys.iter().copied().collect();
        out.push(
            Diagnostic::error(
                codes::THRESHOLD_METRIC,
                at(".execution.threshold.metric"),
                format!(
                    "threshold metric `{}` is not declared in outputs.metrics",
                    threshold.metric
                ),
            )
            .in_block(id.clone())
            .with_help(if declared.is_empty() {
                format!(
                    "declare it: \"metrics\": [{{\"key\": \"{}\", \"type\": \"number\"}}]",
                    threshold.metric
                )
            } else {
                format!("declared metrics: {}", declared.join(", "))
            }),
        );
    }

    if !block.execution.retryable && block.execution.max_retries > 0 {
        out.push(
            Diagnostic::warning(
                codes::RETRIES_UNUSED,
                at(".execution.max_retries"),
                "max_retries is set but the block is not retryable, so it never retries",
            )
            .in_block(id.clone())
            .with_help("set `retryable: true` or `max_retries: 0`"),
        );
    }

    if let Some(skill) = block.skill.as_deref().filter(|s| !s.is_empty())
        && (skill.starts_with('.')
            || !skill
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        out.push(
            Diagnostic::error(
                codes::BAD_PATH,
                at(".skill"),
                format!("skill `{skill}` must be a plain folder name under skills/"),
            )
            .in_block(id.clone())
            .with_help("use letters, digits, `-`, `_` and `.` (not first): the skill is read from skills/<skill>/SKILL.md beside the template"),
        );
    }
    if let Some(audit) = &block.audit {
        for (artifact_key, golden_path) in &audit.golden {
            let path = std::path::Path::new(golden_path);
            if golden_path.trim().is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                out.push(
                    Diagnostic::error(
                        codes::BAD_PATH,
                        at(&format!(".audit.golden.{artifact_key}")),
                        format!(
                            "golden path `{golden_path}` must be a non-empty relative path without `..`"
                        ),
                    )
                    .in_block(id.clone())
                    .with_help("golden examples are read from beside the template, e.g. `golden/report.md`"),
                );
            }
        }
        for artifact_key in audit.golden.keys() {
            if !keys.contains(artifact_key.as_str()) {
                out.push(
                    Diagnostic::error(
                        codes::AUDIT,
                        at(&format!(".audit.golden.{artifact_key}")),
                        format!("golden example for `{artifact_key}`, which the block does not declare as an artifact"),
                    )
                    .in_block(id.clone())
                    .with_help(format!(
                        "key it by one of the block's artifact keys: {}",
                        keys.iter().copied().collect::<Vec<_>>().join(", ")
                    )),
                );
            }
        }
        if audit.blocking && audit.threshold.is_none() {
            out.push(
                Diagnostic::error(
                    codes::AUDIT,
                    at(".audit.blocking"),
                    "audit blocking is on but there is no audit threshold, so nothing could block",
                )
                .in_block(id.clone())
                .with_help("set `audit.threshold` (0–10), or remove `blocking`"),
            );
        }
        if audit.retry && audit.threshold.is_none() {
            out.push(
                Diagnostic::warning(
                    codes::AUDIT,
                    at(".audit.retry"),
                    "audit retry is on but there is no audit threshold, so it never retries",
                )
                .in_block(id.clone())
                .with_help("set `audit.threshold` (0–10)"),
            );
        }
    }

    check_runtime_config(i, block, declared_params, out);
}

fn check_runtime_config(
    i: usize,
    block: &template::Block,
    declared_params: &BTreeSet<&str>,
    out: &mut Vec<Diagnostic>,
) {
    let id = block.id.clone();
    let config = &block.inputs.config;
    let config_path = |key: &str| format!("$.blocks[{i}].inputs.config.{key}");
    let mut error = |path: String, message: String, help: &str| {
        out.push(
            Diagnostic::error(codes::RUNTIME_CONFIG, path, message)
                .in_block(id.clone())
                .with_help(help),
        );
    };
    match block.runtime {
        Runtime::Command => match config.get("command") {
            Some(Value::Array(argv))
                if !argv.is_empty()
                    && argv
                        .iter()
                        .all(|a| a.as_str().is_some_and(|s| !s.is_empty())) => {}
            Some(_) => error(
                config_path("command"),
                "`command` must be a non-empty array of non-empty strings (an argv)".into(),
                "e.g. \"command\": [\"sh\", \"-c\", \"echo hi > $FACTORY_OUTPUT_DIR/out.txt\"]",
            ),
            None => error(
                format!("$.blocks[{i}].inputs.config"),
                "a `command` block needs `inputs.config.command`".into(),
                "add \"command\": [\"program\", \"arg\", …]",
            ),
        },
        Runtime::Builtin => match config.get("builtin").and_then(Value::as_str) {
            Some(name) if BUILTINS.contains(&name) => {
                if name == "sleep" && !config.get("ms").is_some_and(Value::is_u64) {
                    error(
                        config_path("ms"),
                        "builtin `sleep` needs `ms`, a non-negative integer".into(),
                        "e.g. \"ms\": 500",
                    );
                }
                if name == "corrections-router" {
                    if let Some(key) = config
                        .keys()
                        .find(|k| !["builtin", "sources"].contains(&k.as_str()))
                    {
                        error(
                            config_path(key),
                            format!("builtin `corrections-router` has no setting `{key}`"),
                            "its settings: `sources` (the review pages whose items it routes)",
                        );
                    }
                    if let Err(problem) = crate::feedback::router_sources(config) {
                        error(
                            config_path("sources"),
                            problem,
                            &format!(
                                "e.g. \"sources\": [\"extraction-review\"]; the pages: {}",
                                REVIEW_PAGES.join(", ")
                            ),
                        );
                    }
                }
                let page = config.get("page").and_then(Value::as_str);
                if name == "review-page" && !REVIEW_PAGES.contains(&page.unwrap_or_default()) {
                    error(
                        config_path("page"),
                        format!(
                            "builtin `review-page` needs `page`, one of {}",
                            REVIEW_PAGES.join(", ")
                        ),
                        "e.g. \"page\": \"extraction-review\"",
                    );
                }
            }
            Some(name) => error(
                config_path("builtin"),
                format!("unknown builtin `{name}`"),
                &format!("known builtins: {}", BUILTINS.join(", ")),
            ),
            None => error(
                format!("$.blocks[{i}].inputs.config"),
                "a `builtin` block needs `inputs.config.builtin` naming the built-in".into(),
                &format!("known builtins: {}", BUILTINS.join(", ")),
            ),
        },
        Runtime::Llm | Runtime::Http => {
            // A model's reply and an HTTP answer are read as text: media
            // declared here could only ever be text under a media name.
            for (n, artifact) in block.outputs.artifacts.iter().enumerate() {
                if artifact.format.is_media() {
                    error(
                        format!("$.blocks[{i}].outputs.artifacts[{n}].format"),
                        format!(
                            "an `{}` block's outputs are text; it cannot produce `{}` artifact `{}`",
                            block.runtime.as_str(),
                            artifact.format.as_str(),
                            artifact.key
                        ),
                        "make images with an `image` block, speech with a `speech` block, any other media with a `command` block (README, \"Media artifacts\"), or declare a text format",
                    );
                }
            }
            if block.runtime == Runtime::Http {
                if let Err(problems) = crate::http_call::parse(block, Some(declared_params)) {
                    for problem in problems {
                        error(
                            config_path(&problem.key),
                            problem.message,
                            "see README, \"HTTP blocks\"",
                        );
                    }
                }
            } else {
                if block.skill.as_deref().is_none_or(str::is_empty) {
                    error(
                        format!("$.blocks[{i}].skill"),
                        "an `llm` block needs a `skill` (its prompt comes from skills/<skill>/SKILL.md)".into(),
                        "set \"skill\": \"<name>\"",
                    );
                }
                if let Err(problems) = crate::llm_options::parse(config) {
                    for problem in problems {
                        error(
                            config_path(problem.key),
                            format!("`{}` must be {}", problem.key, problem.message),
                            "fix the value, or remove the key to use the default (README, \"LLM blocks\")",
                        );
                    }
                }
            }
        }
        Runtime::Image | Runtime::Speech => media::check(i, block, &mut error),
    }
    if block.execution.cache == Some(true)
        && block.runtime == Runtime::Http
        && config.get("optional") == Some(&Value::Bool(true))
    {
        out.push(
            Diagnostic::error(
                codes::CACHE,
                format!("$.blocks[{i}].execution.cache"),
                "an optional `http` call is never memoized: a note that it was left out (its URL unset) would stand in for a real call once the URL is set"
                    .to_string(),
            )
            .in_block(block.id.clone())
            .with_help("remove `execution.cache` or `optional`"),
        );
    }
    if block.execution.cache == Some(true) && block.runtime == Runtime::Builtin {
        out.push(
            Diagnostic::error(
                codes::CACHE,
                format!("$.blocks[{i}].execution.cache"),
                "a `builtin` block is never memoized: it reads the run's own state (reviews, \
                 items), which its inputs do not show"
                    .to_string(),
            )
            .in_block(block.id.clone())
            .with_help("remove `execution.cache`"),
        );
    }
}

fn check_convergence(template: &Template, out: &mut Vec<Diagnostic>) {
    let Some(spec) = &template.convergence else {
        return;
    };
    let Some(block_id) = &spec.score_block else {
        return;
    };
    match template.blocks.iter().find(|b| &b.id == block_id) {
        None => out.push(
            Diagnostic::error(
                codes::CONVERGENCE,
                "$.convergence.score_block",
                format!("convergence score block `{block_id}` is not a block of this template"),
            )
            .with_help("name the block whose metric scores each version, e.g. `clone-tester`"),
        ),
        Some(block)
            if !block
                .outputs
                .metrics
                .iter()
                .any(|m| m.key == spec.score_metric) =>
        {
            out.push(
                Diagnostic::error(
                    codes::CONVERGENCE,
                    "$.convergence.score_metric",
                    format!("`{block_id}` declares no metric `{}`", spec.score_metric),
                )
                .in_block(block_id.clone())
                .with_help("use one of its `outputs.metrics` keys"),
            )
        }
        Some(_) => {}
    }
}

fn check_parallel_groups(template: &Template, out: &mut Vec<Diagnostic>) {
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for block in &template.blocks {
        if let Some(group) = &block.execution.parallel_group {
            groups.entry(group).or_default().insert(&block.id);
        }
    }
    for (i, block) in template.blocks.iter().enumerate() {
        let Some(group) = &block.execution.parallel_group else {
            continue;
        };
        for (d, dep) in block.inputs.depends.iter().enumerate() {
            if dep.block != block.id && groups[group.as_str()].contains(dep.block.as_str()) {
                out.push(
                    Diagnostic::warning(
                        codes::PARALLEL_GROUP,
                        format!("$.blocks[{i}].inputs.depends[{d}]"),
                        format!(
                            "depends on `{}` of its own parallel group `{group}`, so the two cannot run concurrently",
                            dep.block
                        ),
                    )
                    .in_block(block.id.clone())
                    .with_help("move one block to another group or drop the dependency"),
                );
            }
        }
    }
}

fn check_profiles(template: &Template, ids: &BTreeMap<&str, usize>, out: &mut Vec<Diagnostic>) {
    for (name, profile) in &template.autonomy_profiles {
        for block_id in profile.blocks.keys() {
            if !ids.contains_key(block_id.as_str()) {
                let mut diagnostic = Diagnostic::error(
                    codes::AUTONOMY_PROFILE,
                    format!("$.autonomy_profiles.{name}.blocks.{block_id}"),
                    format!("autonomy profile `{name}` names unknown block `{block_id}`"),
                );
                if let Some(s) = closest(block_id, ids.keys().copied()) {
                    diagnostic = diagnostic.with_help(format!("did you mean `{s}`?"));
                }
                out.push(diagnostic);
            }
        }
    }
}

mod fan_out;
mod lens;
mod media;
pub(crate) mod stream_fields;
#[cfg(test)]
mod tests;
