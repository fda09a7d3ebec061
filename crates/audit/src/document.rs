//! One artifact read once: decoded, parsed in its format and measured, so the
//! five dimensions share the work instead of each re-parsing megabytes.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::Value;

use crate::Format;
use crate::content::{self, ContentSignals};
use crate::html::{self, HtmlStats};
use crate::json_shape::JsonProse;
use crate::markdown::{self, MarkdownStats};
use crate::patterns::{DictionaryHits, scan_dictionary};
use crate::text::{LineIndex, count_words, lossy};

/// An artifact (or upstream input) as the dimensions see it.
pub struct Document<'a> {
    pub key: &'a str,
    /// Shown in suggestions: the artifact path, or `block.key` for upstream inputs.
    pub path: &'a str,
    pub format: Format,
    /// `None` when the artifact was declared but not produced.
    pub body: Option<Body<'a>>,
}

/// The content of a produced artifact.
pub struct Body<'a> {
    pub byte_len: usize,
    pub valid_utf8: bool,
    /// The content as text, invalid UTF-8 replaced.
    pub raw: Cow<'a, str>,
    /// Built on first use: only suggestions need line numbers.
    lines: OnceCell<LineIndex>,
    /// Built on first use: D2 and D4 share one dictionary scan of the prose.
    dictionary: OnceCell<DictionaryHits>,
    /// Built on first use: the content signals D1–D4 and the caps share.
    signals: OnceCell<ContentSignals>,
    /// For JSON artifacts: the parsed value, or why it does not parse.
    pub json: Option<Result<Value, serde_json::Error>>,
    /// For JSON artifacts that parse: their string values.
    pub json_prose: Option<JsonProse>,
    /// For Markdown and text artifacts.
    pub markdown: Option<MarkdownStats>,
    /// For HTML artifacts.
    pub html: Option<HtmlStats>,
    /// Words in [`Body::prose`].
    pub words: usize,
}

impl<'a> Document<'a> {
    pub fn new(
        key: &'a str,
        path: &'a str,
        format: Format,
        content: Option<&'a [u8]>,
    ) -> Document<'a> {
        Document {
            key,
            path,
            format,
            body: content.map(|bytes| Body::new(format, bytes)),
        }
    }
}

impl<'a> Body<'a> {
    fn new(format: Format, bytes: &'a [u8]) -> Body<'a> {
        let raw = lossy(bytes);
        let valid_utf8 = matches!(raw, Cow::Borrowed(_));
        let mut body = Body {
            byte_len: bytes.len(),
            valid_utf8,
            raw,
            lines: OnceCell::new(),
            dictionary: OnceCell::new(),
            signals: OnceCell::new(),
            json: None,
            json_prose: None,
            markdown: None,
            html: None,
            words: 0,
        };
        match format {
            Format::Json => {
                let parsed = serde_json::from_slice::<Value>(bytes);
                body.json_prose = parsed.as_ref().ok().map(JsonProse::of);
                body.json = Some(parsed);
            }
            Format::Markdown | Format::Text => body.markdown = Some(markdown::scan(&body.raw)),
            Format::Html => body.html = Some(html::scan(&body.raw)),
        }
        // Reuse the counts the format scans made; only HTML needs its own pass.
        body.words = match (&body.json_prose, &body.markdown) {
            (Some(prose), _) => prose.string_word_counts.iter().sum(),
            (None, Some(stats)) => stats.words,
            (None, None) => count_words(body.prose()),
        };
        body
    }

    /// The words to judge: string values for JSON that parses, visible text
    /// for HTML, the whole text otherwise.
    pub fn prose(&self) -> &str {
        if let Some(prose) = &self.json_prose {
            &prose.text
        } else if let Some(html) = &self.html {
            &html.visible_text
        } else {
            &self.raw
        }
    }

    /// Where byte `offset` of [`Body::prose`] is: a JSON path, or `line N` of the source.
    pub fn location(&self, offset: usize) -> String {
        match &self.json_prose {
            Some(prose) => prose.path_at(offset).to_string(),
            None => self.line_at(offset),
        }
    }

    /// `line N` for byte `offset` of the source (HTML's visible text has the same offsets).
    pub fn line_at(&self, offset: usize) -> String {
        format!(
            "line {}",
            self.lines
                .get_or_init(|| LineIndex::new(&self.raw))
                .line_of(offset)
        )
    }

    /// Generic phrases and placeholders in [`Body::prose`].
    pub fn dictionary(&self) -> &DictionaryHits {
        self.dictionary
            .get_or_init(|| scan_dictionary(self.prose()))
    }

    /// Language-likeness, repetition, filler and the no-op marker of [`Body::prose`].
    pub fn signals(&self) -> &ContentSignals {
        self.signals.get_or_init(|| {
            let json = self.json_value().zip(self.json_prose.as_ref());
            let format = if self.json_prose.is_some() {
                Format::Json
            } else if self.html.is_some() {
                Format::Html
            } else {
                Format::Markdown
            };
            content::measure(format, &self.raw, self.prose(), json)
        })
    }

    /// True when there is nothing but whitespace.
    pub fn is_blank(&self) -> bool {
        self.raw.trim().is_empty()
    }

    /// The parsed JSON value, when the artifact is JSON and parses.
    pub fn json_value(&self) -> Option<&Value> {
        self.json.as_ref().and_then(|parsed| parsed.as_ref().ok())
    }

    /// The parse error, when the artifact is JSON and does not parse.
    pub fn json_error(&self) -> Option<&serde_json::Error> {
        self.json.as_ref().and_then(|parsed| parsed.as_ref().err())
    }
}
