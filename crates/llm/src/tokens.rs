//! Token counts without a tokenizer: an estimate for the context-window check
//! and for accounting when a server reports no usage (llama.cpp's streams
//! never do).
//!
//! Why not a real tokenizer: each model family has its own vocabulary (and
//! local servers run hundreds of them); shipping them all is megabytes per
//! family, and a prompt check must not cost more than the call's set-up. The
//! estimate follows how byte-pair encoders split text: a short word and its
//! leading space are about one token, long words a little more, digits and
//! punctuation about one token each, a line break with the next line's
//! indentation one and a half, a non-ASCII character two or three (byte-level
//! vocabularies). Calibrated against SmolLM2's tokenizer (a GPT-2-style 49k
//! vocabulary) on the shipped skills, golden examples and docs;
//! `scripts/real-llm.sh` compares it with the server's own counts.
//! `cargo bench -p factory-llm --bench tokens` measures its speed.

/// The estimated number of tokens of `text`.
pub fn estimate(text: &str) -> u64 {
    let bytes = text.as_bytes();
    // Tenths of a token, so fractional costs add up without floats.
    let mut tenths: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            tenths += word_tenths(i - start);
        } else if b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            tenths += DIGIT_TENTHS * (i - start) as u64;
        } else if b == b' ' || b == b'\t' {
            let start = i;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            // One space joins the next word; a run of them is its own tokens.
            if i - start > 1 {
                tenths += SPACE_RUN_TENTHS;
            }
        } else if b == b'\n' || b == b'\r' {
            // Line breaks and the next line's indentation merge.
            while i < bytes.len() && matches!(bytes[i], b'\n' | b'\r' | b' ' | b'\t') {
                i += 1;
            }
            tenths += NEWLINE_TENTHS;
        } else if b.is_ascii() {
            i += 1;
            tenths += PUNCT_TENTHS;
        } else {
            // A multi-byte character: skip its continuation bytes.
            i += 1;
            while i < bytes.len() && (bytes[i] & 0xC0) == 0x80 {
                i += 1;
            }
            tenths += NON_ASCII_TENTHS;
        }
    }
    tenths.div_ceil(10)
}

// Fitted (least squares on the relative error) to SmolLM2's tokenizer over
// the shipped skills, golden examples, docs and example scripts: largest
// error 7.7 %, mean +1 %.
const DIGIT_TENTHS: u64 = 13;
const NEWLINE_TENTHS: u64 = 14;
const SPACE_RUN_TENTHS: u64 = 45;
const PUNCT_TENTHS: u64 = 8;
const NON_ASCII_TENTHS: u64 = 25;

/// A run of `n` ASCII letters (with its leading space): about a token, a
/// tenth more for each letter past the sixth.
fn word_tenths(n: usize) -> u64 {
    10 + (n as u64).saturating_sub(6)
}

/// Tokens a chat request costs besides its text: role markers and message
/// framing of the chat template, per message.
pub const MESSAGE_OVERHEAD: u64 = 8;

/// The estimate with a 10 % margin, for deciding whether a prompt fits: an
/// estimate that errs low would let the server refuse the call.
pub fn conservative(estimate: u64) -> u64 {
    estimate + estimate.div_ceil(10)
}

/// Whether a prompt of `prompt_tokens` (a conservative estimate) and a reply
/// of up to `max_tokens` fit a window of `window` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Not with the asked `max_tokens`, but with this smaller one, which
    /// still leaves at least `min_reply` tokens for the reply.
    Shrink {
        max_tokens: u32,
    },
    /// Not even `min_reply` tokens of reply fit.
    TooLong,
}

pub fn fit(prompt_tokens: u64, max_tokens: u32, window: u64, min_reply: u32) -> Fit {
    if prompt_tokens + u64::from(max_tokens) <= window {
        return Fit::Fits;
    }
    let room = window.saturating_sub(prompt_tokens);
    if room >= u64::from(min_reply.min(max_tokens)) && room > 0 {
        Fit::Shrink {
            max_tokens: room.min(u64::from(u32::MAX)) as u32,
        }
    } else {
        Fit::TooLong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_words_are_a_token_each() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("the cat sat on the mat"), 6);
        // Long words cost more than one token.
        assert!(estimate("internationalization") > estimate("nation"));
    }

    #[test]
    fn json_punctuation_and_lines_count() {
        let json = "{\n  \"name\": \"Marisol\",\n  \"values\": [1, 2, 3]\n}\n";
        let n = estimate(json);
        assert!((18..=32).contains(&n), "{n}");
    }

    #[test]
    fn non_ascii_costs_about_a_token_a_character() {
        assert!(estimate("日本語のテキスト") >= 16);
    }

    #[test]
    fn fit_shrinks_or_refuses() {
        assert_eq!(fit(1_000, 1_000, 8_192, 512), Fit::Fits);
        assert_eq!(
            fit(7_000, 4_096, 8_192, 512),
            Fit::Shrink { max_tokens: 1_192 }
        );
        assert_eq!(fit(7_900, 4_096, 8_192, 512), Fit::TooLong);
        assert_eq!(fit(9_000, 100, 8_192, 512), Fit::TooLong);
        // A small max_tokens needs all of itself.
        assert_eq!(fit(7_800, 300, 8_192, 512), Fit::Fits);
        assert_eq!(fit(7_850, 400, 8_192, 512), Fit::TooLong);
        assert_eq!(fit(8_000, 300, 8_192, 512), Fit::TooLong);
    }

    #[test]
    fn conservative_adds_a_tenth() {
        assert_eq!(conservative(1_000), 1_100);
        assert_eq!(conservative(1), 2);
    }
}
