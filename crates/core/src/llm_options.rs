//! The runtime knobs of an `llm` block's `inputs.config` (sampling,
//! structured output, stream limits), parsed once so validation and the
//! runtime agree on what each key means. Every other config key goes to the
//! model as "Block configuration".

use std::collections::BTreeMap;

use serde_json::Value;

/// How the reply is constrained to JSON (`inputs.config.structured_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StructuredOutput {
    /// JSON mode where it helps: on an OpenAI-compatible provider, when the
    /// block's artifacts are one JSON artifact, or several (as one JSON object
    /// keyed by artifact); with a schema when `json_schema` gives one.
    #[default]
    Auto,
    /// No constraint; the prompt's output contract only.
    Off,
    JsonObject,
    JsonSchema,
}

/// How a finished attempt's output is checked against the open gaps that
/// concern it (`inputs.config.gap_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapCheckMode {
    /// The terms heuristic only ([`crate::gaps::reconcile`]).
    #[default]
    Terms,
    /// A model call judges each open gap; the heuristic decides the gaps
    /// it does not (or when the call fails).
    Llm,
}

/// The parsed knobs; absent keys are None (the runtime's defaults apply).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmOptions {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub stream: Option<bool>,
    pub structured_output: StructuredOutput,
    pub json_schema: Option<Value>,
    pub first_token_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub upstream_max_chars: Option<u64>,
    pub gap_check: GapCheckMode,
}

/// A knob with a value it cannot take: the key and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub key: &'static str,
    pub message: String,
}

/// The knobs a run may set for all its `llm` blocks (`factory run --llm`).
pub const RUN_KEYS: &[&str] = &["temperature", "top_p", "seed", "stop"];

/// A block's knobs over the run's: the block's own value wins, the run's
/// fills in what the block leaves unset.
pub fn with_run_defaults(
    config: &BTreeMap<String, Value>,
    run: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    let mut merged = config.clone();
    for (key, value) in run {
        merged.entry(key.clone()).or_insert_with(|| value.clone());
    }
    merged
}

/// Parses the knobs of `config`, reporting every bad one.
pub fn parse(config: &BTreeMap<String, Value>) -> Result<LlmOptions, Vec<OptionError>> {
    let mut errors = Vec::new();
    let mut bad = |key: &'static str, message: &str| {
        errors.push(OptionError {
            key,
            message: message.to_string(),
        })
    };
    let mut options = LlmOptions::default();
    let positive = |key: &str| config.get(key).map(|v| v.as_u64().filter(|n| *n > 0));
    match positive("max_tokens") {
        Some(Some(n)) if n <= u64::from(u32::MAX) => options.max_tokens = Some(n as u32),
        Some(_) => bad("max_tokens", "a positive integer of tokens, e.g. 4096"),
        None => {}
    }
    match config.get("temperature").map(Value::as_f64) {
        Some(Some(t)) if (0.0..=2.0).contains(&t) => options.temperature = Some(t),
        Some(_) => bad("temperature", "a number from 0 to 2, e.g. 0.2"),
        None => {}
    }
    match config.get("top_p").map(Value::as_f64) {
        Some(Some(p)) if p > 0.0 && p <= 1.0 => options.top_p = Some(p),
        Some(_) => bad("top_p", "a number above 0 and at most 1, e.g. 0.9"),
        None => {}
    }
    match config.get("seed").map(Value::as_i64) {
        Some(Some(seed)) => options.seed = Some(seed),
        Some(None) => bad("seed", "an integer, e.g. 42"),
        None => {}
    }
    match config.get("stop") {
        Some(Value::String(s)) if !s.is_empty() => options.stop = vec![s.clone()],
        Some(Value::Array(items))
            if (1..=4).contains(&items.len())
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            options.stop = items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
        }
        Some(_) => bad("stop", "a non-empty string or a list of up to 4 of them"),
        None => {}
    }
    match config.get("stream").map(Value::as_bool) {
        Some(Some(b)) => options.stream = Some(b),
        Some(None) => bad("stream", "true or false"),
        None => {}
    }
    match config.get("structured_output").map(Value::as_str) {
        Some(Some("auto")) | None => {}
        Some(Some("off")) => options.structured_output = StructuredOutput::Off,
        Some(Some("json_object")) => options.structured_output = StructuredOutput::JsonObject,
        Some(Some("json_schema")) => options.structured_output = StructuredOutput::JsonSchema,
        Some(_) => bad(
            "structured_output",
            "one of \"auto\", \"off\", \"json_object\", \"json_schema\"",
        ),
    }
    match config.get("gap_check").map(Value::as_str) {
        Some(Some("terms")) | None => {}
        Some(Some("llm")) => options.gap_check = GapCheckMode::Llm,
        Some(_) => bad("gap_check", "one of \"terms\" (the default) or \"llm\""),
    }
    match config.get("json_schema") {
        Some(schema @ Value::Object(_)) => options.json_schema = Some(schema.clone()),
        Some(_) => bad(
            "json_schema",
            "a JSON Schema object, e.g. {\"type\": \"object\"}",
        ),
        None => {}
    }
    if options.structured_output == StructuredOutput::JsonSchema && options.json_schema.is_none() {
        bad(
            "structured_output",
            "\"json_schema\" needs inputs.config.json_schema (the schema the reply must match)",
        );
    }
    for (key, slot) in [
        (
            "first_token_timeout_ms",
            &mut options.first_token_timeout_ms,
        ),
        ("idle_timeout_ms", &mut options.idle_timeout_ms),
        ("upstream_max_chars", &mut options.upstream_max_chars),
    ] {
        match positive(key) {
            Some(Some(n)) => *slot = Some(n),
            Some(None) => errors.push(OptionError {
                key,
                message: "a positive integer".to_string(),
            }),
            None => {}
        }
    }
    if errors.is_empty() {
        Ok(options)
    } else {
        Err(errors)
    }
}

/// A JSON Schema of the shape of `example` (a block's golden example), for
/// asking a provider for that shape: objects with their keys (all required,
/// others allowed), arrays of what their elements are, strings, numbers and
/// booleans. Nothing of the values themselves is kept. No length bounds:
/// llama-cpp-python turns `maxLength`/`maxItems` into nested grammar rules
/// and crashed on them (a segmentation fault on clone-factory's goldens), so
/// a small model may still write one string until `max_tokens` runs out.
pub fn schema_of(example: &Value) -> Value {
    match example {
        Value::Object(map) => {
            let properties: serde_json::Map<String, Value> = map
                .iter()
                .map(|(key, value)| (key.clone(), schema_of(value)))
                .collect();
            let required: Vec<&String> = map.keys().collect();
            serde_json::json!({"type": "object", "properties": properties, "required": required})
        }
        Value::Array(items) => match items.iter().take(8).map(schema_of).reduce(merge) {
            Some(item) => serde_json::json!({"type": "array", "items": item}),
            None => serde_json::json!({"type": "array"}),
        },
        Value::String(_) => serde_json::json!({"type": "string"}),
        Value::Number(_) => serde_json::json!({"type": "number"}),
        Value::Bool(_) => serde_json::json!({"type": "boolean"}),
        Value::Null => serde_json::json!({}),
    }
}

/// Two element schemas of one array as one: objects keep every property and
/// require only the keys both require; different kinds allow anything.
fn merge(a: Value, b: Value) -> Value {
    if a == b {
        return a;
    }
    if a["type"] == "object" && b["type"] == "object" {
        let mut properties = a["properties"].as_object().cloned().unwrap_or_default();
        for (key, schema) in b["properties"].as_object().into_iter().flatten() {
            let merged = match properties.remove(key) {
                Some(existing) => merge(existing, schema.clone()),
                None => schema.clone(),
            };
            properties.insert(key.clone(), merged);
        }
        let required: Vec<&Value> = a["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|key| b["required"].as_array().is_some_and(|r| r.contains(key)))
            .collect();
        return serde_json::json!({"type": "object", "properties": properties, "required": required});
    }
    if a["type"] == "array" && b["type"] == "array" {
        return match (a.get("items").cloned(), b.get("items").cloned()) {
            (Some(x), Some(y)) => serde_json::json!({"type": "array", "items": merge(x, y)}),
            (Some(x), None) | (None, Some(x)) => serde_json::json!({"type": "array", "items": x}),
            (None, None) => serde_json::json!({"type": "array"}),
        };
    }
    serde_json::json!({})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_golden_example_gives_its_shape_not_its_values() {
        let golden = serde_json::json!({
            "expert": "Marisol Vega",
            "values": [
                {"name": "Candour", "rank": 1, "quote": "Say it."},
                {"name": "Patience", "rank": 2}
            ],
            "verified": true,
            "notes": null
        });
        let schema = schema_of(&golden);
        assert_eq!(
            schema["required"],
            serde_json::json!(["expert", "values", "verified", "notes"]),
            "in the example's order"
        );
        assert_eq!(
            schema["properties"]["expert"],
            serde_json::json!({"type": "string"})
        );
        let item = &schema["properties"]["values"]["items"];
        assert_eq!(
            item["required"],
            serde_json::json!(["name", "rank"]),
            "only keys every element has"
        );
        assert_eq!(
            item["properties"]["quote"],
            serde_json::json!({"type": "string"})
        );
        assert_eq!(schema["properties"]["notes"], serde_json::json!({}));
        assert!(!schema.to_string().contains("Marisol"));
        assert_eq!(
            schema_of(&serde_json::json!([1, "a"])),
            serde_json::json!({"type": "array", "items": {}})
        );
    }

    fn config(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn knobs_parse_and_others_are_left_to_the_prompt() {
        let options = parse(&config(serde_json::json!({
            "max_tokens": 4000, "temperature": 0.2, "top_p": 0.9, "seed": 7,
            "stop": ["</answer>"], "structured_output": "off", "focus": "values"
        })))
        .unwrap();
        assert_eq!(options.max_tokens, Some(4000));
        assert_eq!(options.temperature, Some(0.2));
        assert_eq!(options.seed, Some(7));
        assert_eq!(options.stop, vec!["</answer>".to_string()]);
        assert_eq!(options.structured_output, StructuredOutput::Off);
    }

    #[test]
    fn every_bad_knob_is_named() {
        let errors = parse(&config(serde_json::json!({
            "max_tokens": 0, "temperature": "hot", "structured_output": "json_schema",
            "stop": [], "idle_timeout_ms": -1
        })))
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            vec![
                "max_tokens",
                "temperature",
                "stop",
                "structured_output",
                "idle_timeout_ms"
            ]
        );
    }
}
