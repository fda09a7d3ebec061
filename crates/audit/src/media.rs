//! Media artifacts (images, audio, PDF): what can be checked without a
//! model — the bytes are the format they claim (its signature and header
//! parse, the file is not cut short), not empty, and their dimensions,
//! duration or page count. The D1–D5 text audit does not read them.

use serde::{Deserialize, Serialize};

/// A binary format an artifact may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Png,
    Jpeg,
    Webp,
    Mp3,
    Wav,
    Ogg,
    Pdf,
}

impl MediaKind {
    pub fn media_type(self) -> &'static str {
        match self {
            MediaKind::Png => "image/png",
            MediaKind::Jpeg => "image/jpeg",
            MediaKind::Webp => "image/webp",
            MediaKind::Mp3 => "audio/mpeg",
            MediaKind::Wav => "audio/wav",
            MediaKind::Ogg => "audio/ogg",
            MediaKind::Pdf => "application/pdf",
        }
    }

    pub fn is_image(self) -> bool {
        matches!(self, MediaKind::Png | MediaKind::Jpeg | MediaKind::Webp)
    }

    pub fn is_audio(self) -> bool {
        matches!(self, MediaKind::Mp3 | MediaKind::Wav | MediaKind::Ogg)
    }
}

/// What the checks found in one media artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFacts {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
}

impl MediaFacts {
    /// `1024×768`, `12.4 s`, `3 pages`: what a person reads beside it.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.media_type.clone()];
        if let (Some(w), Some(h)) = (self.width, self.height) {
            parts.push(format!("{w}×{h}"));
        }
        if let Some(ms) = self.duration_ms {
            parts.push(format!("{:.1} s", ms as f64 / 1000.0));
        }
        if let Some(pages) = self.pages {
            parts.push(format!("{pages} page{}", if pages == 1 { "" } else { "s" }));
        }
        parts.join(", ")
    }
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

/// Checks `bytes` as `kind`; the error says what is wrong, in words.
pub fn inspect(kind: MediaKind, bytes: &[u8]) -> Result<MediaFacts, String> {
    if bytes.is_empty() {
        return Err("is empty".into());
    }
    let mut facts = MediaFacts {
        media_type: kind.media_type().to_string(),
        width: None,
        height: None,
        duration_ms: None,
        pages: None,
    };
    match kind {
        MediaKind::Png => {
            if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.get(12..16) != Some(b"IHDR") {
                return Err("is not a PNG (no PNG signature and IHDR header)".into());
            }
            facts.width = be32(bytes, 16);
            facts.height = be32(bytes, 20);
            let tail = &bytes[bytes.len().saturating_sub(12)..];
            if !tail.windows(4).any(|w| w == b"IEND") {
                return Err("is a PNG cut short (no IEND chunk at its end)".into());
            }
        }
        MediaKind::Jpeg => {
            if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
                return Err("is not a JPEG (no SOI marker)".into());
            }
            let mut at = 2;
            while at + 4 <= bytes.len() {
                if bytes[at] != 0xFF {
                    return Err(format!("is a damaged JPEG (no marker at byte {at})"));
                }
                let marker = bytes[at + 1];
                if marker == 0xFF {
                    at += 1;
                    continue;
                }
                let length = be16(bytes, at + 2).unwrap_or(0) as usize;
                let sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
                if sof {
                    facts.height = be16(bytes, at + 5);
                    facts.width = be16(bytes, at + 7);
                    break;
                }
                if length < 2 {
                    return Err(format!("is a damaged JPEG (a segment of length {length})"));
                }
                at += 2 + length;
            }
            if facts.width.is_none() {
                return Err("is a JPEG without a frame header (no dimensions)".into());
            }
            let tail = &bytes[bytes.len().saturating_sub(64)..];
            if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
                return Err("is a JPEG cut short (no EOI marker at its end)".into());
            }
        }
        MediaKind::Webp => {
            if !bytes.starts_with(b"RIFF") || bytes.get(8..12) != Some(b"WEBP") {
                return Err("is not a WebP (no RIFF/WEBP header)".into());
            }
            let declared = le32(bytes, 4).unwrap_or(0) as usize + 8;
            if declared > bytes.len() {
                return Err(format!(
                    "is a WebP cut short ({} of {declared} bytes)",
                    bytes.len()
                ));
            }
            match bytes.get(12..16) {
                Some(b"VP8 ") => {
                    facts.width = le16(bytes, 26).map(|w| w & 0x3FFF);
                    facts.height = le16(bytes, 28).map(|h| h & 0x3FFF);
                }
                Some(b"VP8L") => {
                    let bits = le32(bytes, 21).unwrap_or(0);
                    facts.width = Some((bits & 0x3FFF) + 1);
                    facts.height = Some(((bits >> 14) & 0x3FFF) + 1);
                }
                Some(b"VP8X") => {
                    facts.width = le24(bytes, 24).map(|w| w + 1);
                    facts.height = le24(bytes, 27).map(|h| h + 1);
                }
                _ => return Err("is a WebP with an unknown first chunk".into()),
            }
        }
        MediaKind::Wav => {
            if !bytes.starts_with(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
                return Err("is not a WAV (no RIFF/WAVE header)".into());
            }
            let (mut at, mut byte_rate, mut data) = (12usize, None, None);
            while at + 8 <= bytes.len() {
                let id = &bytes[at..at + 4];
                let size = le32(bytes, at + 4).unwrap_or(0) as usize;
                if id == b"fmt " {
                    byte_rate = le32(bytes, at + 16);
                } else if id == b"data" {
                    let there = bytes.len().saturating_sub(at + 8);
                    // Written to a pipe (ffmpeg, a TTS stream), the size is
                    // left as 0 or 0xFFFFFFFF: the data runs to the end.
                    let size = if size == 0 || size == 0xFFFF_FFFF {
                        there
                    } else {
                        size
                    };
                    data = Some(size.min(there));
                    if at + 8 + size > bytes.len() {
                        return Err(format!(
                            "is a WAV cut short (its data chunk says {size} bytes, {} are there)",
                            bytes.len() - at - 8
                        ));
                    }
                    break;
                }
                at += 8 + size + (size & 1);
            }
            let (Some(rate), Some(data)) = (byte_rate.filter(|r| *r > 0), data) else {
                return Err("is a WAV without its fmt and data chunks".into());
            };
            if data == 0 {
                return Err("is a WAV with no samples".into());
            }
            facts.duration_ms = Some(data as u64 * 1000 / u64::from(rate));
        }
        MediaKind::Mp3 => {
            let mut at = 0;
            if bytes.starts_with(b"ID3") && bytes.len() >= 10 {
                let size = bytes[6..10]
                    .iter()
                    .fold(0usize, |n, b| (n << 7) | usize::from(b & 0x7F));
                at = 10 + size;
            }
            let frame = bytes
                .get(at..)
                .unwrap_or_default()
                .windows(4)
                .take(64 * 1024)
                .position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0 && mp3_bitrate(w).is_some())
                .map(|p| at + p);
            let Some(frame) = frame else {
                return Err("is not an MP3 (no MPEG audio frame)".into());
            };
            let kbps = mp3_bitrate(&bytes[frame..frame + 4]).unwrap_or(128);
            // One 4-byte pattern turns up by chance in any binary file; a
            // second header where the first frame ends does not.
            let next = frame + mp3_frame_len(&bytes[frame..frame + 4]);
            if next + 4 <= bytes.len()
                && !(bytes[next] == 0xFF
                    && bytes[next + 1] & 0xE0 == 0xE0
                    && mp3_bitrate(&bytes[next..next + 4]).is_some())
            {
                return Err("is not an MP3 (its first frame is not followed by another)".into());
            }
            facts.duration_ms = Some(((bytes.len() - frame) as u64 * 8) / u64::from(kbps.max(1)));
        }
        MediaKind::Ogg => {
            if !bytes.starts_with(b"OggS") {
                return Err("is not an Ogg stream (no OggS page)".into());
            }
            // The rate from the first packet (Vorbis or Opus), the length
            // from the last page's granule position.
            let rate = if let Some(p) = find(bytes, b"\x01vorbis") {
                le32(bytes, p + 12)
            } else if find(bytes, b"OpusHead").is_some() {
                Some(48_000)
            } else {
                None
            };
            let last = bytes.len().saturating_sub(65_536);
            let granule = rfind(&bytes[last..], b"OggS").and_then(|p| {
                let at = last + p + 6;
                bytes
                    .get(at..at + 8)
                    .and_then(|g| g.try_into().ok())
                    .map(u64::from_le_bytes)
            });
            if let (Some(rate), Some(granule)) = (rate.filter(|r| *r > 0), granule)
                && granule != u64::MAX
            {
                facts.duration_ms = granule.checked_mul(1000).map(|ms| ms / u64::from(rate));
            }
        }
        MediaKind::Pdf => {
            if !bytes.starts_with(b"%PDF-") {
                return Err("is not a PDF (no %PDF- header)".into());
            }
            let tail = &bytes[bytes.len().saturating_sub(1024)..];
            if find(tail, b"%%EOF").is_none() {
                return Err("is a PDF cut short (no %%EOF at its end)".into());
            }
            let pages = count_pages(bytes);
            facts.pages = (pages > 0).then_some(pages);
        }
    }
    if facts.width == Some(0) || facts.height == Some(0) {
        return Err("has a width or height of 0".into());
    }
    Ok(facts)
}

/// The bitrate in kbit/s of an MPEG-1/2 layer III frame header, if it is one.
fn mp3_bitrate(header: &[u8]) -> Option<u32> {
    const V1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let version = (header[1] >> 3) & 0x3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let layer = (header[1] >> 1) & 0x3; // 1: layer III
    let index = usize::from(header[2] >> 4);
    let rate_index = (header[2] >> 2) & 0x3;
    if version == 1 || layer != 1 || index == 0 || index == 15 || rate_index == 3 {
        return None;
    }
    Some(if version == 3 { V1[index] } else { V2[index] })
}

/// A layer III frame's length in bytes (at least 4).
fn mp3_frame_len(header: &[u8]) -> usize {
    let version = (header[1] >> 3) & 0x3;
    let rates: [u32; 3] = match version {
        3 => [44_100, 48_000, 32_000],
        2 => [22_050, 24_000, 16_000],
        _ => [11_025, 12_000, 8_000],
    };
    let rate = rates[usize::from((header[2] >> 2) & 0x3).min(2)];
    let padding = u32::from((header[2] >> 1) & 1);
    let per_frame = if version == 3 { 144 } else { 72 };
    let kbps = mp3_bitrate(header).unwrap_or(0);
    (per_frame * kbps * 1000 / rate + padding).max(4) as usize
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// `/Type /Page` objects (not `/Pages`), with or without the space.
fn count_pages(bytes: &[u8]) -> u32 {
    let mut count = 0;
    for needle in [&b"/Type /Page"[..], &b"/Type/Page"[..]] {
        let mut at = 0;
        while let Some(p) = find(&bytes[at..], needle) {
            let after = at + p + needle.len();
            if bytes.get(after) != Some(&b's') {
                count += 1;
            }
            at = after;
        }
    }
    count
}

/// A small file of `kind` that passes [`inspect`] (the `noop` builtin's
/// output for a media artifact, and the tests' samples).
pub fn placeholder(kind: MediaKind) -> Vec<u8> {
    match kind {
        MediaKind::Png => samples::png(1, 1),
        MediaKind::Wav => samples::wav(100),
        MediaKind::Jpeg => {
            let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
            jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x01, 0x00, 0x01]);
            jpeg.extend_from_slice(&[0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
            jpeg
        }
        MediaKind::Webp => {
            let mut webp = b"RIFF".to_vec();
            webp.extend_from_slice(&22u32.to_le_bytes());
            webp.extend_from_slice(b"WEBPVP8L");
            webp.extend_from_slice(&10u32.to_le_bytes());
            webp.push(0x2F);
            webp.extend_from_slice(&0u32.to_le_bytes());
            webp.resize(30, 0);
            webp
        }
        MediaKind::Mp3 => {
            let mut mp3 = vec![0xFF, 0xFB, 0x90, 0x64];
            mp3.resize(418, 0);
            mp3
        }
        MediaKind::Ogg => {
            let mut ogg = b"OggS".to_vec();
            ogg.resize(27, 0);
            ogg
        }
        MediaKind::Pdf => b"%PDF-1.4\n1 0 obj <</Type /Page>> endobj\ntrailer\n%%EOF\n".to_vec(),
    }
}

pub mod samples {
    //! Small well-formed files of some kinds, made here (no fixtures).

    /// A PNG of `w`×`h` (its IDAT need not decode for the checks).
    pub fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(b"IEND");
        b.extend_from_slice(&[0xAE, 0x42, 0x60, 0x82]);
        b
    }

    /// A PNG of `w`×`h` that any decoder shows: one colour, 8-bit RGB,
    /// its pixels in stored (uncompressed) deflate blocks.
    pub fn png_rgb(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        }
        // Each row: filter byte 0 (none), then its pixels.
        let row: Vec<u8> = std::iter::once(0)
            .chain(std::iter::repeat_n(rgb, w as usize).flatten())
            .collect();
        let raw = row.repeat(h as usize);
        let mut zlib = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
        for (i, block) in blocks.iter().enumerate() {
            zlib.push(u8::from(i + 1 == blocks.len()));
            let len = block.len() as u16;
            zlib.extend_from_slice(&len.to_le_bytes());
            zlib.extend_from_slice(&(!len).to_le_bytes());
            zlib.extend_from_slice(block);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &raw {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&w.to_be_bytes());
        header.extend_from_slice(&h.to_be_bytes());
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &header);
        chunk(&mut out, b"IDAT", &zlib);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// A mono 16-bit WAV of `ms` milliseconds at 8 kHz.
    pub fn wav(ms: u32) -> Vec<u8> {
        let rate = 8_000u32;
        let data = rate * 2 * ms / 1000;
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&(36 + data).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data.to_le_bytes());
        b.resize(b.len() + data as usize, 0);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_say_their_size_and_junk_is_named() {
        let png = samples::png(1200, 630);
        let facts = inspect(MediaKind::Png, &png).unwrap();
        assert_eq!((facts.width, facts.height), (Some(1200), Some(630)));
        assert_eq!(facts.summary(), "image/png, 1200×630");
        assert!(
            inspect(MediaKind::Png, &png[..png.len() - 12])
                .unwrap_err()
                .contains("cut short")
        );
        assert!(
            inspect(MediaKind::Png, b"<html>not an image</html>")
                .unwrap_err()
                .contains("not a PNG")
        );
        assert_eq!(inspect(MediaKind::Jpeg, b"").unwrap_err(), "is empty");
        assert!(
            inspect(MediaKind::Png, &samples::png(0, 5))
                .unwrap_err()
                .contains("width or height of 0")
        );
        // A baseline JPEG: SOI, APP0, SOF0 (height 480, width 640), EOI.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x01, 0xE0, 0x02, 0x80]);
        jpeg.extend_from_slice(&[0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
        let facts = inspect(MediaKind::Jpeg, &jpeg).unwrap();
        assert_eq!((facts.width, facts.height), (Some(640), Some(480)));
        // A lossless WebP of 64×32.
        let mut webp = b"RIFF".to_vec();
        webp.extend_from_slice(&22u32.to_le_bytes());
        webp.extend_from_slice(b"WEBPVP8L");
        webp.extend_from_slice(&10u32.to_le_bytes());
        webp.push(0x2F);
        webp.extend_from_slice(&(63u32 | (31 << 14)).to_le_bytes());
        webp.resize(30, 0);
        let facts = inspect(MediaKind::Webp, &webp).unwrap();
        assert_eq!((facts.width, facts.height), (Some(64), Some(32)));
    }

    #[test]
    fn audio_says_its_length() {
        let wav = samples::wav(1500);
        assert_eq!(
            inspect(MediaKind::Wav, &wav).unwrap().duration_ms,
            Some(1500)
        );
        assert!(
            inspect(MediaKind::Wav, &wav[..wav.len() / 2])
                .unwrap_err()
                .contains("cut short")
        );
        assert!(
            inspect(MediaKind::Wav, &samples::wav(0))
                .unwrap_err()
                .contains("no samples")
        );
        // ID3 tag, then MPEG-1 layer III frames at 128 kbit/s: 16 KB ≈ 1 s.
        let mut mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x0A".to_vec();
        mp3.extend_from_slice(&[0; 10]);
        for _ in 0..(16_000 / 417) {
            mp3.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
            mp3.resize(mp3.len() + 413, 0);
        }
        let ms = inspect(MediaKind::Mp3, &mp3).unwrap().duration_ms.unwrap();
        assert!((900..=1100).contains(&ms), "{ms}");
        assert!(
            inspect(MediaKind::Mp3, &[0u8; 4096])
                .unwrap_err()
                .contains("no MPEG audio frame")
        );
        assert!(inspect(MediaKind::Ogg, b"RIFF....").is_err());
        // One frame-like pattern in other bytes is not an MP3.
        let mut fake = vec![0x01; 64];
        fake.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        fake.resize(2_000, 0x01);
        assert!(
            inspect(MediaKind::Mp3, &fake)
                .unwrap_err()
                .contains("not followed by another")
        );
        // A WAV written to a pipe leaves its data size unset: it runs to the end.
        let mut streamed = samples::wav(1000);
        streamed[40..44].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(
            inspect(MediaKind::Wav, &streamed).unwrap().duration_ms,
            Some(1000)
        );
        // A hostile Ogg granule does not overflow.
        let mut ogg = b"OggS".to_vec();
        ogg.resize(40, 0);
        ogg.extend_from_slice(b"\x01vorbis");
        ogg.extend_from_slice(&[0, 0, 0, 0, 1, 0x44, 0xAC, 0, 0]);
        ogg.extend_from_slice(b"OggS\x00\x04");
        ogg.extend_from_slice(&0x7FFF_FFFF_FFFF_FFF0u64.to_le_bytes());
        ogg.resize(ogg.len() + 20, 0);
        assert_eq!(inspect(MediaKind::Ogg, &ogg).unwrap().duration_ms, None);
    }

    #[test]
    fn every_placeholder_passes_its_checks() {
        for kind in [
            MediaKind::Png,
            MediaKind::Jpeg,
            MediaKind::Webp,
            MediaKind::Mp3,
            MediaKind::Wav,
            MediaKind::Ogg,
            MediaKind::Pdf,
        ] {
            let facts = inspect(kind, &placeholder(kind));
            assert!(facts.is_ok(), "{kind:?}: {facts:?}");
            assert_eq!(facts.unwrap().media_type, kind.media_type());
        }
    }

    #[test]
    fn pdfs_count_their_pages() {
        let pdf = b"%PDF-1.4\n1 0 obj <</Type /Pages /Count 2>> endobj\n2 0 obj <</Type /Page>> endobj\n3 0 obj <</Type/Page>> endobj\ntrailer\n%%EOF\n";
        assert_eq!(inspect(MediaKind::Pdf, pdf).unwrap().pages, Some(2));
        assert!(
            inspect(MediaKind::Pdf, &pdf[..40])
                .unwrap_err()
                .contains("cut short")
        );
    }
}
