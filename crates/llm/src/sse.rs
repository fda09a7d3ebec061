//! A minimal server-sent-events parser: both providers stream SSE, and the
//! format is small enough that owning it beats a dependency.

/// One event: its `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Feeds bytes in any chunking; yields complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
    pending_bytes: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        // A UTF-8 sequence may be split across chunks: keep the incomplete tail.
        self.pending_bytes.extend_from_slice(chunk);
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(text) => text.len(),
            Err(error) => error.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&self.pending_bytes[..valid]).into_owned();
        self.pending_bytes.drain(..valid);
        self.buffer.push_str(&text.replace("\r\n", "\n"));

        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            if let Some(event) = parse_block(&block) {
                events.push(event);
            }
        }
        events
    }

    /// Whatever is left when the stream ends (a final event without a blank line).
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.buffer);
        parse_block(&rest)
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_none() && data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event,
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking() {
        let stream = "event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: line1\ndata: line2\n\nevent: done\r\ndata: é\r\n\r\n";
        for split in 1..stream.len() {
            let bytes = stream.as_bytes();
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for chunk in bytes.chunks(split) {
                events.extend(parser.push(chunk));
            }
            events.extend(parser.finish());
            assert_eq!(events.len(), 3, "split {split}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[1].data, "line1\nline2");
            assert_eq!(events[2].data, "é");
        }
    }
}
