//! Joining spoken pieces into one file: WAV by its samples under one
//! header, MP3 by its frames (each piece's tags and info frame dropped, so
//! no player takes the first piece's length for the whole).

/// One WAV of all pieces' samples; every piece must have the same sample
/// format (what one voice model sends).
pub fn join_wav(pieces: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let mut format: Option<&[u8]> = None;
    let mut samples = Vec::new();
    for (n, piece) in pieces.iter().enumerate() {
        let (fmt, data) =
            wav_parts(piece).map_err(|problem| format!("piece {}: {problem}", n + 1))?;
        match format {
            None => format = Some(fmt),
            Some(first) if first == fmt => {}
            Some(_) => {
                return Err(format!(
                    "piece {} has another sample format than piece 1 (rate, channels or bits)",
                    n + 1
                ));
            }
        }
        samples.extend_from_slice(data);
    }
    let fmt = format.ok_or("no pieces")?;
    let too_long = "more than 4 GiB of samples";
    let data_len = u32::try_from(samples.len()).map_err(|_| too_long)?;
    let fmt_len = u32::try_from(fmt.len()).map_err(|_| too_long)?;
    let pad = fmt_len & 1;
    let riff_len = [8 + fmt_len + pad, 8, data_len, data_len & 1]
        .into_iter()
        .try_fold(4u32, u32::checked_add)
        .ok_or(too_long)?;
    let mut out = Vec::with_capacity(samples.len() + 64);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(fmt);
    if pad == 1 {
        out.push(0);
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&samples);
    // Chunks are padded to an even length.
    if data_len & 1 == 1 {
        out.push(0);
    }
    Ok(out)
}

/// A WAV's `fmt ` chunk body and its samples. A streamed WAV's data size
/// (0 or 0xFFFFFFFF) means "to the end".
fn wav_parts(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("is not a WAV".to_string());
    }
    let mut at = 12;
    let mut fmt = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = at + 8;
        if id == b"data" {
            let end = if size == 0 || size == 0xFFFF_FFFF {
                bytes.len()
            } else {
                body.saturating_add(size).min(bytes.len())
            };
            let fmt = fmt.ok_or("has its data before its fmt chunk")?;
            return Ok((fmt, &bytes[body..end]));
        }
        let end = body
            .checked_add(size)
            .filter(|end| *end <= bytes.len())
            .ok_or("is cut short")?;
        if id == b"fmt " {
            fmt = Some(&bytes[body..end]);
        }
        // Chunks are padded to an even length.
        at = end + (size & 1);
    }
    Err("has no data chunk".to_string())
}

/// All pieces' MPEG frames in order.
pub fn join_mp3(pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(mp3_frames(piece));
    }
    out
}

/// The piece without its ID3v2 tag, a Xing/Info/VBRI frame (it gives the
/// length of this piece alone) and an ID3v1 trailer.
fn mp3_frames(bytes: &[u8]) -> &[u8] {
    let mut start = 0;
    if bytes.starts_with(b"ID3") && bytes.len() >= 10 {
        let size = bytes[6..10]
            .iter()
            .fold(0usize, |n, b| (n << 7) | usize::from(b & 0x7F));
        let footer = if bytes[5] & 0x10 != 0 { 10 } else { 0 };
        start = (10 + size + footer).min(bytes.len());
    }
    let mut end = bytes.len();
    if end >= start + 128 && &bytes[end - 128..end - 125] == b"TAG" {
        end -= 128;
    }
    let frames = &bytes[start..end];
    if let Some(len) = frame_len(frames) {
        let first = &frames[..len.min(frames.len())];
        let info = [b"Xing".as_slice(), b"Info", b"VBRI"]
            .iter()
            .any(|tag| first.windows(4).take(64).any(|w| w == *tag));
        if info && len < frames.len() {
            return &frames[len..];
        }
    }
    frames
}

/// The length of the MPEG-1/2 layer III frame at the start, if one is there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    // Frame sync, and layer III (the layer bits 01).
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] & 0xE0 != 0xE0 || bytes[1] & 0x06 != 0x02 {
        return None;
    }
    // Version bits: 11 MPEG-1, 10 MPEG-2, 00 MPEG-2.5, 01 reserved.
    let version = (bytes[1] >> 3) & 0x03;
    if version == 0x01 {
        return None;
    }
    let mpeg1 = version == 0x03;
    let bitrate_index = usize::from(bytes[2] >> 4);
    let rate_index = usize::from((bytes[2] >> 2) & 0x03);
    const V1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    const RATES: [u32; 3] = [44_100, 48_000, 32_000];
    let kbps = *if mpeg1 { &V1 } else { &V2 }.get(bitrate_index)?;
    let rate = *RATES.get(rate_index)?
        / match version {
            0x03 => 1,
            0x02 => 2,
            _ => 4,
        };
    if kbps == 0 {
        return None;
    }
    let padding = usize::from((bytes[2] >> 1) & 1);
    let samples = if mpeg1 { 144 } else { 72 };
    Some((samples * kbps * 1000 / rate) as usize + padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use factory_audit::media::{MediaKind, inspect};

    fn wav(ms: u32, streamed: bool) -> Vec<u8> {
        let mut bytes = factory_audit::media::samples::wav(ms);
        if streamed {
            // What a server streaming WAV writes: sizes it cannot know yet.
            bytes[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
            let data = bytes.windows(4).position(|w| w == b"data").unwrap();
            bytes[data + 4..data + 8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn wav_pieces_join_into_one_file_as_long_as_all_of_them() {
        let joined = join_wav(&[wav(1000, false), wav(500, true), wav(250, false)]).unwrap();
        let facts = inspect(MediaKind::Wav, &joined).unwrap();
        assert_eq!(facts.duration_ms, Some(1750));
        assert!(
            join_wav(&[wav(100, false), b"RIFF....WAVEjunk".to_vec()])
                .unwrap_err()
                .contains("piece 2")
        );
        let mut other = wav(100, false);
        let fmt = other.windows(4).position(|w| w == b"fmt ").unwrap();
        other[fmt + 12] ^= 0x01; // another sample rate
        assert!(
            join_wav(&[wav(100, false), other])
                .unwrap_err()
                .contains("another sample format")
        );
    }

    /// A CBR MPEG-1 layer III stream: `frames` frames of 128 kbit/s at 44.1 kHz.
    fn mp3(frames: usize, tagged: bool, info: bool) -> Vec<u8> {
        let header = [0xFF, 0xFB, 0x90, 0x00];
        let len = frame_len(&header).unwrap();
        let mut out = Vec::new();
        if tagged {
            out.extend_from_slice(b"ID3\x04\x00\x00\x00\x00\x00\x05hello");
        }
        let frame = |marker: Option<&[u8]>| {
            let mut f = header.to_vec();
            f.resize(len, 0);
            if let Some(marker) = marker {
                f[36..40].copy_from_slice(marker);
            }
            f
        };
        if info {
            out.extend(frame(Some(b"Info")));
        }
        for _ in 0..frames {
            out.extend(frame(None));
        }
        out
    }

    #[test]
    fn frame_lengths_follow_the_mpeg_version_and_other_layers_are_not_frames() {
        // MPEG-1 128 kbit/s 44.1 kHz; MPEG-2 64 kbit/s 24 kHz; MPEG-2.5 32 kbit/s 8 kHz.
        assert_eq!(frame_len(&[0xFF, 0xFB, 0x90, 0x00]), Some(417));
        assert_eq!(
            frame_len(&[0xFF, 0xF3, 0x84, 0x00]),
            Some(72 * 64_000 / 24_000)
        );
        assert_eq!(
            frame_len(&[0xFF, 0xE3, 0x48, 0x00]),
            Some(72 * 32_000 / 8_000)
        );
        assert_eq!(frame_len(&[0xFF, 0xFD, 0x90, 0x00]), None, "layer II");
        assert_eq!(
            frame_len(&[0xFF, 0xEB, 0x90, 0x00]),
            None,
            "reserved version"
        );
    }

    #[test]
    fn an_odd_number_of_sample_bytes_is_padded_and_the_file_still_reads() {
        let mut odd = wav(10, false);
        odd.push(7); // one more sample byte than the header says
        let data = odd.windows(4).position(|w| w == b"data").unwrap();
        let len = u32::from_le_bytes(odd[data + 4..data + 8].try_into().unwrap()) + 1;
        odd[data + 4..data + 8].copy_from_slice(&len.to_le_bytes());
        let joined = join_wav(&[odd]).unwrap();
        assert_eq!(joined.len() % 2, 0);
        let riff = u32::from_le_bytes(joined[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff + 8, joined.len());
        inspect(MediaKind::Wav, &joined).unwrap();
    }

    #[test]
    fn mp3_pieces_join_frame_by_frame_without_tags_or_info_frames() {
        let frame = frame_len(&[0xFF, 0xFB, 0x90, 0x00]).unwrap();
        assert_eq!(frame, 417);
        let joined = join_mp3(&[
            mp3(10, true, true),
            mp3(5, true, true),
            mp3(3, false, false),
        ]);
        assert_eq!(joined.len(), 18 * frame);
        assert!(joined.windows(3).all(|w| w != b"ID3"));
        assert!(joined.windows(4).all(|w| w != b"Info"));
        inspect(MediaKind::Mp3, &joined).unwrap();
    }
}
