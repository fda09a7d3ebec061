//! A model's JSON answer to one of the engine's own questions (audit-analyze,
//! the gap check): the one JSON object in it, prose or a code fence around it
//! tolerated, with a reason that says what was wrong when there is none.

use serde_json::Value;

/// The JSON object in `answer` and its array under `key`.
pub fn array_in(answer: &str, key: &str) -> Result<Vec<Value>, String> {
    let text = answer.trim();
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(from), Some(to)) if from < to => &text[from..=to],
        _ if text.is_empty() => return Err("the model's answer was empty".to_string()),
        _ => return Err("the model's answer held no JSON object".to_string()),
    };
    let value: Value = serde_json::from_str(json)
        .map_err(|e| format!("the model's answer was not valid JSON: {e}"))?;
    match value.get(key) {
        Some(Value::Array(list)) => Ok(list.clone()),
        _ => Err(format!("the model's answer had no `{key}` array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_found_in_prose_and_fences_and_bad_answers_say_why() {
        let list = array_in("Sure:\n```json\n{\"gaps\": [1, 2]}\n```\nDone.", "gaps").unwrap();
        assert_eq!(list.len(), 2);
        for (answer, says) in [
            ("  ", "empty"),
            ("no", "no JSON object"),
            ("{\"gaps\": [", "no JSON object"),
            ("{\"gaps\": {}}", "no `gaps` array"),
            ("{\"a\": 1} and {\"b\": 2}", "not valid JSON"),
        ] {
            assert!(
                array_in(answer, "gaps").unwrap_err().contains(says),
                "{answer}"
            );
        }
    }
}
