//! Directory artifacts travel as one JSON bundle of UTF-8 text files:
//! `{"files": {"relative/path.md": "content", …}}`. Binary files are refused
//! with a clear error rather than silently mangled.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Bundle {
    files: BTreeMap<String, String>,
}

/// Packs every file under `dir` (recursively) into a bundle.
pub fn pack_directory(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mut files = BTreeMap::new();
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
            let text = String::from_utf8(bytes).map_err(|_| {
                format!("{relative} is binary; directory artifacts hold UTF-8 text files only")
            })?;
            files.insert(relative, text);
        }
    }
    serde_json::to_vec(&Bundle { files }).map_err(|e| e.to_string())
}

/// A bundle's files, path → text, in path order.
pub fn bundle_files(bundle: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let bundle: Bundle =
        serde_json::from_slice(bundle).map_err(|e| format!("not a directory bundle: {e}"))?;
    Ok(bundle.files)
}

/// Writes a bundle's files under `dir`, refusing paths that escape it.
pub fn unpack_directory(bundle: &[u8], dir: &Path) -> Result<(), String> {
    let files = bundle_files(bundle)?;
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
    fn refuses_binary_files() {
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("blob.bin"), [0xff, 0xfe, 0x00]).unwrap();
        assert!(
            pack_directory(source.path())
                .unwrap_err()
                .contains("binary")
        );
    }
}
