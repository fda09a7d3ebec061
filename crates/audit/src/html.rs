//! A forgiving HTML scan: blank out tags (and script/style bodies) to get the
//! visible text, count the tags that matter for structure, and notice the
//! signs of a cut-off document.
//!
//! Tags are replaced by spaces byte for byte (newlines kept), so offsets and
//! line numbers in the visible text are the same as in the source, and
//! suggestions can point at source lines.

/// What the scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlStats {
    /// The source with every tag blanked; same length and lines as the source.
    pub visible_text: String,
    pub tags: usize,
    pub headings: usize,
    pub list_items: usize,
    /// `html` / `body` elements opened and never closed.
    pub unclosed: Vec<&'static str>,
    /// The document ends inside a tag (`<p class="x`).
    pub ends_inside_tag: bool,
}

/// Scans `source`.
pub fn scan(source: &str) -> HtmlStats {
    let bytes = source.as_bytes();
    let mut visible = bytes.to_vec();
    let mut stats = HtmlStats::default();
    let (mut opened_html, mut closed_html, mut opened_body, mut closed_body) =
        (false, false, false, false);
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'<' || !bytes.get(index + 1).is_some_and(|&next| starts_tag(next)) {
            index += 1;
            continue;
        }
        let tag_start = index;
        let Some(length) = bytes[tag_start..].iter().position(|&byte| byte == b'>') else {
            stats.ends_inside_tag = true;
            blank(&mut visible, tag_start, bytes.len());
            break;
        };
        let tag_end = tag_start + length + 1;
        stats.tags += 1;
        let closing = bytes[tag_start + 1] == b'/';
        let name_start = tag_start + 1 + usize::from(closing);
        let name: Vec<u8> = bytes[name_start..tag_end]
            .iter()
            .take_while(|byte| byte.is_ascii_alphanumeric())
            .take(12)
            .map(u8::to_ascii_lowercase)
            .collect();
        match (name.as_slice(), closing) {
            (b"html", false) => opened_html = true,
            (b"html", true) => closed_html = true,
            (b"body", false) => opened_body = true,
            (b"body", true) => closed_body = true,
            (b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6", false) => stats.headings += 1,
            (b"li", false) => stats.list_items += 1,
            _ => {}
        }
        let mut end = tag_end;
        if !closing && matches!(name.as_slice(), b"script" | b"style") {
            // Hide the body up to and including the closing tag; unclosed means "to the end".
            end = find_closing_tag(bytes, tag_end, &name).unwrap_or(bytes.len());
        }
        blank(&mut visible, tag_start, end);
        index = end;
    }
    if opened_html && !closed_html {
        stats.unclosed.push("html");
    }
    if opened_body && !closed_body {
        stats.unclosed.push("body");
    }
    // Blanking replaces whole tags (complete characters) by ASCII, so this stays valid UTF-8.
    stats.visible_text = String::from_utf8(visible)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
    stats
}

fn starts_tag(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || matches!(byte, b'/' | b'!' | b'?')
}

fn blank(visible: &mut [u8], start: usize, end: usize) {
    for byte in &mut visible[start..end] {
        if *byte != b'\n' {
            *byte = b' ';
        }
    }
}

/// The end of `</name…>` at or after `from`, ASCII case-insensitive.
fn find_closing_tag(bytes: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let mut index = from;
    while index + 2 + name.len() <= bytes.len() {
        if bytes[index] == b'<'
            && bytes[index + 1] == b'/'
            && bytes[index + 2..index + 2 + name.len()].eq_ignore_ascii_case(name)
        {
            let close = bytes[index..].iter().position(|&byte| byte == b'>')?;
            return Some(index + close + 1);
        }
        index += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_tags_and_keeps_offsets() {
        let source = "<html><body>\n<h1>Anchor</h1>\n<ul><li>one</li></ul><script>var x = '<b>';</script>\n</body></html>";
        let stats = scan(source);
        assert_eq!(stats.visible_text.len(), source.len());
        assert_eq!(
            stats
                .visible_text
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>(),
            vec!["", "Anchor", "one", ""]
        );
        assert_eq!((stats.headings, stats.list_items), (1, 1));
        assert!(stats.unclosed.is_empty());
        assert!(!stats.ends_inside_tag);
    }

    #[test]
    fn notices_cut_documents() {
        let stats = scan("<html><body><p class=\"intro");
        assert_eq!(stats.unclosed, vec!["html", "body"]);
        assert!(stats.ends_inside_tag);
        assert_eq!(scan("a < b and c<d").tags, 0);
    }
}
