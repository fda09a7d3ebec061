//! The knobs of `image` and `speech` blocks' `inputs.config`, parsed once so
//! validation and the runtimes agree on what each key means.
//!
//! An image block's other config keys reach its prompt as "Block
//! configuration" (as an `llm` block's do: `"style": "flat, two colours"`).
//! A speech block has no prompt, so a key it does not know is refused.

use std::collections::BTreeMap;

use serde_json::Value;

/// Keys of an image block's config that steer the call, not the picture.
pub const IMAGE_KEYS: &[&str] = &[
    "size",
    "quality",
    "aspect_ratio",
    "upstream_max_chars",
    "max_prompt_chars",
    "optional",
];

/// Every key a speech block's config may have.
pub const SPEECH_KEYS: &[&str] = &[
    "voice",
    "voices",
    "speed",
    "instructions",
    "script",
    "max_chars_per_request",
    "max_script_chars",
    "optional",
];

/// The longest prompt sent by default: OpenAI's `gpt-image-1` takes 32,000
/// characters (`dall-e-3` 4,000: set `max_prompt_chars`).
pub const DEFAULT_MAX_PROMPT_CHARS: usize = 32_000;
/// OpenAI's `/audio/speech` takes at most 4,096 characters per request;
/// longer scripts are spoken in pieces and joined.
pub const DEFAULT_MAX_CHARS_PER_REQUEST: usize = 4_096;
/// A script longer than this is refused before anything is sent (speech is
/// billed per character; a runaway upstream should not spend the budget).
pub const DEFAULT_MAX_SCRIPT_CHARS: usize = 100_000;
/// The voice used when the block names none.
pub const DEFAULT_VOICE: &str = "alloy";

/// Aspect ratios Gemini's image models accept.
pub const ASPECT_RATIOS: &[&str] = &[
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

/// OpenAI's image sizes by aspect ratio (what gpt-image-1 makes).
const OPENAI_SIZES: &[(&str, &str)] = &[
    ("1:1", "1024x1024"),
    ("3:2", "1536x1024"),
    ("2:3", "1024x1536"),
];

/// The `(size, aspect_ratio)` to send: an OpenAI-compatible provider takes
/// a size (an aspect ratio becomes its size), Gemini an aspect ratio (a
/// size becomes its ratio). The error says what cannot be turned into what.
pub fn shape_for(
    size: Option<&str>,
    aspect_ratio: Option<&str>,
    gemini: bool,
) -> Result<(Option<String>, Option<String>), String> {
    if gemini {
        let ratio = match (aspect_ratio, size) {
            (Some(ratio), _) => Some(ratio.to_string()),
            (None, None | Some("auto")) => None,
            (None, Some(size)) => {
                let (w, h) = size
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                    .ok_or_else(|| format!("inputs.config.size `{size}` is not WIDTHxHEIGHT"))?;
                let gcd = |mut a: u32, mut b: u32| {
                    while b != 0 {
                        (a, b) = (b, a % b);
                    }
                    a.max(1)
                };
                let g = gcd(w, h);
                let ratio = format!("{}:{}", w / g, h / g);
                if !ASPECT_RATIOS.contains(&ratio.as_str()) {
                    return Err(format!(
                        "inputs.config.size `{size}` is {ratio}, which Gemini's image models do not make; set aspect_ratio to one of {}",
                        ASPECT_RATIOS.join(", ")
                    ));
                }
                Some(ratio)
            }
        };
        return Ok((None, ratio));
    }
    match (size, aspect_ratio) {
        (Some(size), _) => Ok((Some(size.to_string()), None)),
        (None, None) => Ok((None, None)),
        (None, Some(ratio)) => OPENAI_SIZES
            .iter()
            .find(|(r, _)| *r == ratio)
            .map(|(_, size)| (Some(size.to_string()), None))
            .ok_or_else(|| {
                format!(
                    "inputs.config.aspect_ratio `{ratio}` has no OpenAI image size (1:1 is 1024x1024, 3:2 1536x1024, 2:3 1024x1536); set size instead"
                )
            }),
    }
}

/// A knob with a value it cannot take: the key and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOptionError {
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageOptions {
    /// `WIDTHxHEIGHT` or `auto` (OpenAI-compatible providers).
    pub size: Option<String>,
    /// `low`, `medium`, `high`, `auto`, `standard`, `hd` (OpenAI-compatible).
    pub quality: Option<String>,
    /// One of [`ASPECT_RATIOS`] (Gemini).
    pub aspect_ratio: Option<String>,
    pub max_prompt_chars: usize,
    /// Left out (done without its artifact) when no provider for its model
    /// is configured, instead of stopping the run from starting.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechOptions {
    /// The voice for text no speaker claims.
    pub voice: String,
    /// Voices by speaker name (`HOST: …` lines, or `speaker` fields).
    pub voices: BTreeMap<String, String>,
    pub speed: Option<f64>,
    /// How to speak (tone, pace), for models that take it; corrections are
    /// added to it.
    pub instructions: Option<String>,
    /// Which upstream artifact is the script, as `(block, key)`; None: the
    /// block's only dependency.
    pub script: Option<(String, String)>,
    pub max_chars_per_request: usize,
    pub max_script_chars: usize,
    /// As [`ImageOptions::optional`].
    pub optional: bool,
}

fn text(
    config: &BTreeMap<String, Value>,
    key: &str,
    errors: &mut Vec<MediaOptionError>,
) -> Option<String> {
    match config.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => {
            errors.push(MediaOptionError {
                key: key.to_string(),
                message: "a non-empty string".to_string(),
            });
            None
        }
    }
}

fn flag(config: &BTreeMap<String, Value>, errors: &mut Vec<MediaOptionError>) -> bool {
    match config.get("optional") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(MediaOptionError {
                key: "optional".to_string(),
                message: "true or false".to_string(),
            });
            false
        }
    }
}

/// Whether a media block's config says it may be left out.
pub fn is_optional(config: &BTreeMap<String, Value>) -> bool {
    config.get("optional") == Some(&Value::Bool(true))
}

fn count(
    config: &BTreeMap<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    errors: &mut Vec<MediaOptionError>,
) -> Option<usize> {
    let value = config.get(key)?;
    match value.as_u64() {
        Some(n) if range.contains(&n) => Some(n as usize),
        _ => {
            errors.push(MediaOptionError {
                key: key.to_string(),
                message: format!("a whole number from {} to {}", range.start(), range.end()),
            });
            None
        }
    }
}

/// Parses an image block's knobs, reporting every bad one.
pub fn parse_image(
    config: &BTreeMap<String, Value>,
) -> Result<ImageOptions, Vec<MediaOptionError>> {
    let mut errors = Vec::new();
    let size = text(config, "size", &mut errors);
    if let Some(size) = &size
        && size != "auto"
        && !size.split_once('x').is_some_and(|(w, h)| {
            w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0)
        })
    {
        errors.push(MediaOptionError {
            key: "size".into(),
            message: format!("`WIDTHxHEIGHT` (e.g. `1024x1024`) or `auto`, not `{size}`"),
        });
    }
    let quality = text(config, "quality", &mut errors);
    const QUALITIES: &[&str] = &["low", "medium", "high", "auto", "standard", "hd"];
    if let Some(quality) = &quality
        && !QUALITIES.contains(&quality.as_str())
    {
        errors.push(MediaOptionError {
            key: "quality".into(),
            message: format!("one of {}, not `{quality}`", QUALITIES.join(", ")),
        });
    }
    let aspect_ratio = text(config, "aspect_ratio", &mut errors);
    if let Some(ratio) = &aspect_ratio
        && !ASPECT_RATIOS.contains(&ratio.as_str())
    {
        errors.push(MediaOptionError {
            key: "aspect_ratio".into(),
            message: format!("one of {}, not `{ratio}`", ASPECT_RATIOS.join(", ")),
        });
    }
    if size.is_some() && aspect_ratio.is_some() {
        errors.push(MediaOptionError {
            key: "aspect_ratio".into(),
            message: "left out when `size` is set: say the shape once, as a size or as an aspect ratio (each is turned into what the provider takes)".to_string(),
        });
    }
    count(config, "upstream_max_chars", 1..=10_000_000, &mut errors);
    let max_prompt_chars = count(config, "max_prompt_chars", 1..=1_000_000, &mut errors)
        .unwrap_or(DEFAULT_MAX_PROMPT_CHARS);
    let optional = flag(config, &mut errors);
    if errors.is_empty() {
        Ok(ImageOptions {
            size,
            quality,
            aspect_ratio,
            max_prompt_chars,
            optional,
        })
    } else {
        Err(errors)
    }
}

/// Parses a speech block's knobs, reporting every bad one (unknown keys too).
pub fn parse_speech(
    config: &BTreeMap<String, Value>,
) -> Result<SpeechOptions, Vec<MediaOptionError>> {
    let mut errors = Vec::new();
    for key in config.keys().filter(|k| !SPEECH_KEYS.contains(&k.as_str())) {
        errors.push(MediaOptionError {
            key: key.clone(),
            message: format!(
                "one of a speech block's settings ({}); `{key}` is not",
                SPEECH_KEYS.join(", ")
            ),
        });
    }
    let voice = text(config, "voice", &mut errors).unwrap_or_else(|| DEFAULT_VOICE.to_string());
    let mut voices = BTreeMap::new();
    match config.get("voices") {
        None => {}
        Some(Value::Object(map)) if !map.is_empty() => {
            for (speaker, voice) in map {
                match voice.as_str().map(str::trim) {
                    Some(voice) if !voice.is_empty() && !speaker.trim().is_empty() => {
                        voices.insert(speaker.trim().to_string(), voice.to_string());
                    }
                    _ => errors.push(MediaOptionError {
                        key: format!("voices.{speaker}"),
                        message: "a voice name (a non-empty string) under a non-empty speaker name"
                            .to_string(),
                    }),
                }
            }
        }
        Some(_) => errors.push(MediaOptionError {
            key: "voices".into(),
            message: "an object of speaker name to voice, e.g. {\"HOST\": \"alloy\", \"GUEST\": \"onyx\"}"
                .to_string(),
        }),
    }
    let speed = match config.get("speed") {
        None => None,
        Some(value) => match value.as_f64() {
            Some(speed) if (0.25..=4.0).contains(&speed) => Some(speed),
            _ => {
                errors.push(MediaOptionError {
                    key: "speed".into(),
                    message: "a number from 0.25 to 4.0".to_string(),
                });
                None
            }
        },
    };
    let instructions = text(config, "instructions", &mut errors);
    let script =
        text(config, "script", &mut errors).and_then(|script| match script.split_once('.') {
            Some((block, key)) if !block.is_empty() && !key.is_empty() => {
                Some((block.to_string(), key.to_string()))
            }
            _ => {
                errors.push(MediaOptionError {
                    key: "script".into(),
                    message: format!(
                        "`BLOCK.KEY` naming the upstream artifact to speak, not `{script}`"
                    ),
                });
                None
            }
        });
    let max_chars_per_request = count(
        config,
        "max_chars_per_request",
        100..=1_000_000,
        &mut errors,
    )
    .unwrap_or(DEFAULT_MAX_CHARS_PER_REQUEST);
    let max_script_chars = count(config, "max_script_chars", 1..=10_000_000, &mut errors)
        .unwrap_or(DEFAULT_MAX_SCRIPT_CHARS);
    let optional = flag(config, &mut errors);
    if errors.is_empty() {
        Ok(SpeechOptions {
            voice,
            voices,
            speed,
            instructions,
            script,
            max_chars_per_request,
            max_script_chars,
            optional,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn image_knobs_are_checked_and_defaulted() {
        let options = parse_image(&config(
            json!({"size": "1536x1024", "quality": "low", "style": "flat"}),
        ))
        .unwrap();
        assert_eq!(options.size.as_deref(), Some("1536x1024"));
        assert_eq!(options.max_prompt_chars, DEFAULT_MAX_PROMPT_CHARS);
        let errors = parse_image(&config(json!({"size": "big", "quality": "ultra", "aspect_ratio": "7:3", "max_prompt_chars": 0}))).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "size",
                "quality",
                "aspect_ratio",
                "aspect_ratio",
                "max_prompt_chars"
            ]
        );
        assert!(errors[0].message.contains("not `big`"), "{errors:?}");
    }

    #[test]
    fn a_shape_is_said_once_and_sent_as_each_provider_takes_it() {
        assert_eq!(
            shape_for(None, Some("3:2"), false).unwrap(),
            (Some("1536x1024".into()), None)
        );
        assert_eq!(
            shape_for(Some("1536x1024"), None, true).unwrap(),
            (None, Some("3:2".into()))
        );
        assert_eq!(
            shape_for(Some("1024x1024"), Some("16:9"), true).unwrap(),
            (None, Some("16:9".into()))
        );
        assert_eq!(shape_for(None, None, true).unwrap(), (None, None));
        assert!(
            shape_for(None, Some("16:9"), false)
                .unwrap_err()
                .contains("set size instead")
        );
        assert!(
            shape_for(Some("1000x300"), None, true)
                .unwrap_err()
                .contains("10:3")
        );
    }

    #[test]
    fn speech_knobs_refuse_what_they_do_not_know() {
        let options = parse_speech(&config(json!({
            "voices": {"HOST": "alloy", "GUEST": "onyx"}, "speed": 1.1, "script": "podcast-script.script"
        })))
        .unwrap();
        assert_eq!(options.voice, DEFAULT_VOICE);
        assert_eq!(options.voices["GUEST"], "onyx");
        assert_eq!(
            options.script,
            Some(("podcast-script".into(), "script".into()))
        );
        assert_eq!(options.max_chars_per_request, DEFAULT_MAX_CHARS_PER_REQUEST);
        let errors = parse_speech(&config(json!({
            "voise": "x", "voices": {"HOST": 3}, "speed": 9, "script": "nodot", "max_chars_per_request": 5
        })))
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "voise",
                "voices.HOST",
                "speed",
                "script",
                "max_chars_per_request"
            ]
        );
        assert!(errors[0].message.contains("voice, voices"), "{errors:?}");
    }
}
