//! Directory artifacts travel as one JSON bundle: UTF-8 text files as
//! text, `{"files": {"relative/path.md": "content", …}}`, and any other
//! file (an image, a recording) base64-encoded under `"binary"`, so nothing
//! is mangled and a bundle without binary files reads as before.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Bundle {
    files: BTreeMap<String, String>,
    /// Files that are not UTF-8 text, base64 (standard alphabet).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    binary: BTreeMap<String, String>,
}

/// Packs every file under `dir` (recursively) into a bundle.
pub fn pack_directory(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mut files = BTreeMap::new();
    let mut binary = BTreeMap::new();
    let mut total = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            let relative = path
                .strip_prefix(dir)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .replace('\\', "/");
            // Symlinks are followed only while they stay inside the directory
            // (a link to `/` would otherwise pack the whole machine).
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                crate::confine::within(dir, &relative)?;
                if path.is_dir() {
                    return Err(format!(
                        "{relative} is a symlink to a directory; directory artifacts hold files and real folders only"
                    ));
                }
            } else if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            total += bytes.len();
            if total > crate::MAX_ARTIFACT_BYTES {
                return Err(format!(
                    "the folder's files are over {} bytes (at {relative}); an artifact may be at most that",
                    crate::MAX_ARTIFACT_BYTES
                ));
            }
            match String::from_utf8(bytes) {
                Ok(text) => {
                    files.insert(relative, text);
                }
                Err(not_text) => {
                    binary.insert(relative, STANDARD.encode(not_text.into_bytes()));
                }
            }
        }
    }
    serde_json::to_vec(&Bundle { files, binary }).map_err(|e| e.to_string())
}

/// A bundle's text files, path → text, in path order (binary files are
/// in [`bundle_binary_files`]).
pub fn bundle_files(bundle: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let bundle: Bundle =
        serde_json::from_slice(bundle).map_err(|e| format!("not a directory bundle: {e}"))?;
    Ok(bundle.files)
}

/// The bundle as a reader of text should see it (the D1–D5 audit, a
/// prompt, gap checks): each binary file's content replaced by a line
/// saying what it is. A bundle without binary files (or not a bundle) is
/// returned as it is.
pub fn text_view(bundle: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Ok(mut parsed) = serde_json::from_slice::<Bundle>(bundle) else {
        return std::borrow::Cow::Borrowed(bundle);
    };
    if parsed.binary.is_empty() {
        return std::borrow::Cow::Borrowed(bundle);
    }
    for encoded in parsed.binary.values_mut() {
        let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count();
        let bytes = (encoded.len() / 4 * 3).saturating_sub(padding);
        *encoded = format!("[binary file, {bytes} bytes, not shown]");
    }
    serde_json::to_vec(&parsed).map_or(std::borrow::Cow::Borrowed(bundle), std::borrow::Cow::Owned)
}

/// A bundle's binary files, path → bytes, in path order.
pub fn bundle_binary_files(bundle: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let bundle: Bundle =
        serde_json::from_slice(bundle).map_err(|e| format!("not a directory bundle: {e}"))?;
    bundle
        .binary
        .into_iter()
        .map(|(path, encoded)| {
            STANDARD
                .decode(&encoded)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|e| format!("bundle file `{path}` is not base64: {e}"))
        })
        .collect()
}

/// Writes a bundle's files under `dir`, refusing paths that escape it.
pub fn unpack_directory(bundle: &[u8], dir: &Path) -> Result<(), String> {
    let files = bundle_files(bundle)?
        .into_iter()
        .map(|(path, text)| (path, text.into_bytes()))
        .chain(bundle_binary_files(bundle)?);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (relative, text) in files {
        let relative_path = Path::new(&relative);
        if relative_path.is_absolute()
            || relative_path
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!("bundle path `{relative}` escapes the directory"));
        }
        let path = dir.join(relative_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nested_files() {
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("a/b")).unwrap();
        std::fs::write(source.path().join("top.md"), "# top").unwrap();
        std::fs::write(source.path().join("a/b/deep.txt"), "deep").unwrap();
        let bundle = pack_directory(source.path()).unwrap();
        let target = tempfile::tempdir().unwrap();
        unpack_directory(&bundle, target.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.path().join("a/b/deep.txt")).unwrap(),
            "deep"
        );
        assert_eq!(
            std::fs::read_to_string(target.path().join("top.md")).unwrap(),
            "# top"
        );
    }

    #[test]
    fn refuses_escaping_paths() {
        let target = tempfile::tempdir().unwrap();
        let error = unpack_directory(br#"{"files": {"../evil": "x"}}"#, target.path()).unwrap_err();
        assert!(error.contains("escapes"), "{error}");
    }

    #[test]
    fn carries_binary_files_byte_for_byte() {
        let source = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        std::fs::create_dir_all(source.path().join("cards")).unwrap();
        std::fs::write(source.path().join("cards/card-1.png"), &image).unwrap();
        std::fs::write(source.path().join("index.md"), "# cards").unwrap();
        let bundle = pack_directory(source.path()).unwrap();
        assert_eq!(
            bundle_files(&bundle).unwrap().keys().collect::<Vec<_>>(),
            ["index.md"],
            "text stays text"
        );
        assert_eq!(
            bundle_binary_files(&bundle).unwrap()["cards/card-1.png"],
            image
        );
        let target = tempfile::tempdir().unwrap();
        unpack_directory(&bundle, target.path()).unwrap();
        assert_eq!(
            std::fs::read(target.path().join("cards/card-1.png")).unwrap(),
            image
        );
        // A binary path may not escape either, and bad base64 is named.
        let error = unpack_directory(
            br#"{"files": {}, "binary": {"../evil.png": "AAAA"}}"#,
            target.path(),
        )
        .unwrap_err();
        assert!(error.contains("escapes"), "{error}");
        let error =
            bundle_binary_files(br#"{"files": {}, "binary": {"a.png": "%%%"}}"#).unwrap_err();
        assert!(error.contains("`a.png` is not base64"), "{error}");
        // What text readers get: the text, and a line for each binary file.
        let view = String::from_utf8(text_view(&bundle).into_owned()).unwrap();
        assert!(view.contains("# cards"), "{view}");
        assert!(
            view.contains("[binary file, 4096 bytes, not shown]"),
            "{view}"
        );
        assert!(view.len() < 600, "no base64 left: {view}");
    }
}
