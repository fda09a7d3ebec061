//! A speech block's script, split into what one text-to-speech request may
//! speak: turns by speaker (each with its voice), long turns cut at sentence
//! ends, neighbouring turns of one voice joined.
//!
//! A script is text — `HOST: …` lines start a speaker's turn when `HOST` is
//! one of the block's `voices` — or JSON: a list of turns (`{"speaker",
//! "text"}` objects or strings), alone or under `turns`, `segments`, `lines`
//! or `dialogue`.

use serde_json::Value;

use crate::media_options::SpeechOptions;

/// What one request speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub speaker: Option<String>,
    pub voice: String,
    pub text: String,
}

/// The script as segments of at most `options.max_chars_per_request`
/// characters, in order. The error says what is wrong with the script and
/// how to fix it.
pub fn segments(script: &str, json: bool, options: &SpeechOptions) -> Result<Vec<Segment>, String> {
    let turns = if json {
        json_turns(script)?
    } else {
        text_turns(script, options)
    };
    let total: usize = turns.iter().map(|(_, text)| text.chars().count()).sum();
    if total > options.max_script_chars {
        return Err(format!(
            "the script is {total} characters, more than inputs.config.max_script_chars ({}); nothing was sent. Shorten the script or raise max_script_chars",
            options.max_script_chars
        ));
    }
    let mut out: Vec<Segment> = Vec::new();
    for (speaker, text) in turns {
        let voice = match &speaker {
            Some(name) => match voice_of(options, name) {
                Some(voice) => voice.to_string(),
                None if options.voices.is_empty() => options.voice.clone(),
                None => {
                    return Err(format!(
                        "speaker `{name}` has no voice; the block's voices are for {}: add `{name}` to inputs.config.voices",
                        options
                            .voices
                            .keys()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            },
            None => options.voice.clone(),
        };
        for piece in split(&text, options.max_chars_per_request) {
            match out.last_mut() {
                Some(last)
                    if last.voice == voice
                        && last.speaker == speaker
                        && last.text.chars().count() + 1 + piece.chars().count()
                            <= options.max_chars_per_request =>
                {
                    last.text.push('\n');
                    last.text.push_str(&piece);
                }
                _ => out.push(Segment {
                    speaker: speaker.clone(),
                    voice: voice.clone(),
                    text: piece,
                }),
            }
        }
    }
    if out.is_empty() {
        return Err("the script has nothing to speak (it is empty or only markup)".to_string());
    }
    Ok(out)
}

fn voice_of<'a>(options: &'a SpeechOptions, speaker: &str) -> Option<&'a str> {
    options
        .voices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(speaker))
        .map(|(_, voice)| voice.as_str())
}

fn json_turns(script: &str) -> Result<Vec<(Option<String>, String)>, String> {
    let value: Value = serde_json::from_str(script)
        .map_err(|error| format!("the script is not valid JSON: {error}"))?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(object) => ["turns", "segments", "lines", "dialogue"]
            .iter()
            .find_map(|key| object.get(*key)?.as_array())
            .ok_or_else(|| {
                "the JSON script has no list of turns: give a list, or an object with `turns` (each {\"speaker\": …, \"text\": …})".to_string()
            })?,
        _ => return Err("the JSON script is neither a list of turns nor an object with `turns`".to_string()),
    };
    let mut turns = Vec::new();
    for (i, turn) in list.iter().enumerate() {
        let (speaker, text) = match turn {
            Value::String(text) => (None, text.as_str()),
            Value::Object(object) => {
                let text = ["text", "line", "content"]
                    .iter()
                    .find_map(|key| object.get(*key)?.as_str())
                    .ok_or_else(|| format!("turn {i} of the script has no `text`"))?;
                let speaker = object
                    .get("speaker")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                (speaker, text)
            }
            _ => {
                return Err(format!(
                    "turn {i} of the script is neither text nor an object with `text`"
                ));
            }
        };
        let text = clean(text);
        if !text.is_empty() {
            turns.push((speaker, text));
        }
    }
    Ok(turns)
}

fn text_turns(script: &str, options: &SpeechOptions) -> Vec<(Option<String>, String)> {
    let mut turns: Vec<(Option<String>, String)> = Vec::new();
    for line in script.lines() {
        let line = clean(line);
        if line.is_empty() {
            continue;
        }
        let claimed = line.split_once(':').and_then(|(name, rest)| {
            let name = name.trim();
            voice_of(options, name).map(|_| (name.to_string(), rest.trim().to_string()))
        });
        match claimed {
            Some((speaker, rest)) => turns.push((Some(speaker), rest)),
            None => match turns.last_mut() {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(&line);
                }
                None => turns.push((None, line)),
            },
        }
    }
    turns.retain(|(_, text)| !text.trim().is_empty());
    turns
}

/// A line without the markdown a voice would read out: heading marks, list
/// bullets, emphasis and code marks, rules.
fn clean(line: &str) -> String {
    let mut text = line.trim();
    if text.chars().all(|c| matches!(c, '-' | '*' | '_' | '=')) {
        return String::new();
    }
    text = text.trim_start_matches('#').trim_start();
    for bullet in ["- ", "* ", "> "] {
        if let Some(rest) = text.strip_prefix(bullet) {
            text = rest;
        }
    }
    text.replace("**", "")
        .replace("__", "")
        .replace('`', "")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// `text` in pieces of at most `limit` characters, cut after a sentence end
/// where there is one, else at a space, else anywhere.
fn split(text: &str, limit: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > limit {
        let end = rest
            .char_indices()
            .nth(limit)
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..end];
        let cut = window
            .rmatch_indices(['.', '!', '?', '\n'])
            .map(|(i, m)| i + m.len())
            .find(|&i| i > end / 3)
            .or_else(|| window.rfind(' ').filter(|&i| i > 0))
            .unwrap_or(end);
        pieces.push(rest[..cut].trim().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_options::parse_speech;
    use serde_json::json;

    fn options(config: Value) -> SpeechOptions {
        parse_speech(&serde_json::from_value(config).unwrap()).unwrap()
    }

    #[test]
    fn speaker_lines_take_their_voices_and_markup_is_not_read() {
        let options = options(json!({"voices": {"HOST": "alloy", "Guest": "onyx"}}));
        let script = "# Episode 1\n\n**HOST:** Welcome to the show.\nToday: frameworks.\n\nguest: Thanks! It's `great`.\n---\nHOST: Bye.";
        let segments = segments(script, false, &options).unwrap();
        let got: Vec<(Option<&str>, &str, &str)> = segments
            .iter()
            .map(|s| (s.speaker.as_deref(), s.voice.as_str(), s.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (None, "alloy", "Episode 1"),
                (
                    Some("HOST"),
                    "alloy",
                    "Welcome to the show.\nToday: frameworks."
                ),
                (Some("guest"), "onyx", "Thanks! It's great."),
                (Some("HOST"), "alloy", "Bye."),
            ]
        );
    }

    #[test]
    fn json_turns_need_a_voice_for_each_speaker() {
        let options = options(json!({"voices": {"HOST": "alloy"}}));
        let script = json!({"title": "x", "turns": [{"speaker": "HOST", "text": "Hi."}, {"speaker": "ANA", "text": "Hello."}]});
        let error = segments(&script.to_string(), true, &options).unwrap_err();
        assert!(
            error.contains("speaker `ANA` has no voice") && error.contains("`HOST`"),
            "{error}"
        );
        let error = segments("{\"x\": 1}", true, &options).unwrap_err();
        assert!(error.contains("no list of turns"), "{error}");
        let error = segments("[{\"speaker\": \"HOST\"}]", true, &options).unwrap_err();
        assert!(
            error.contains("turn 0 of the script has no `text`"),
            "{error}"
        );
    }

    #[test]
    fn long_turns_are_cut_at_sentence_ends_within_the_limit() {
        let options = options(json!({"max_chars_per_request": 100}));
        let sentence = "This sentence is about forty characters. ";
        let text = sentence.repeat(10);
        let segments = segments(&text, false, &options).unwrap();
        assert!(segments.len() >= 4, "{segments:?}");
        for segment in &segments {
            assert!(segment.text.chars().count() <= 100, "{segment:?}");
            assert!(segment.text.ends_with('.'), "cut mid-sentence: {segment:?}");
        }
        let joined: String = segments
            .iter()
            .map(|s| s.text.replace('\n', " "))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(joined, text.trim());
        // No sentence end and no space: cut anyway, never lose a character.
        let word = "é".repeat(250);
        let pieces = split(&word, 100);
        assert_eq!(
            pieces.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
    }

    #[test]
    fn a_script_over_the_budget_or_empty_is_refused() {
        let options = options(json!({"max_script_chars": 10}));
        let error = segments("far more than ten characters", false, &options).unwrap_err();
        assert!(
            error.contains("max_script_chars (10)") && error.contains("nothing was sent"),
            "{error}"
        );
        let options = self::options(json!({}));
        assert!(
            segments("# \n---\n", false, &options)
                .unwrap_err()
                .contains("nothing to speak")
        );
    }
}
