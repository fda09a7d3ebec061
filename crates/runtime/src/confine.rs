//! Files a template or a block names must stay where they are named from:
//! a golden example or a skill inside the template's folder, an artifact
//! inside the attempt's output directory. A `..` in the name is refused by
//! validation; a symlink (one the template's author made, or one a command
//! block wrote into its output directory) is followed here and refused when
//! it leads outside.

use std::path::{Component, Path, PathBuf};

/// `dir/relative`, when it is a relative path without `..` and, with every
/// symlink followed, still inside `dir`. A path that does not exist yet is
/// returned as is (reading it then fails with "not found").
pub fn within(dir: &Path, relative: &str) -> Result<PathBuf, String> {
    let relative_path = Path::new(relative);
    if relative.trim().is_empty()
        || relative_path.is_absolute()
        || relative_path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(format!("`{relative}` must be a relative path without `..`"));
    }
    let joined = dir.join(relative_path);
    let Ok(target) = joined.canonicalize() else {
        return Ok(joined);
    };
    let root = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if target.starts_with(&root) {
        Ok(joined)
    } else {
        Err(format!(
            "`{relative}` leads outside {} (to {}) through a symlink",
            dir.display(),
            target.display()
        ))
    }
}

/// Reads `dir/relative` if it stays inside `dir` (see [`within`]).
pub fn read(dir: &Path, relative: &str) -> Result<Vec<u8>, String> {
    let path = within(dir, relative)?;
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.md"), "fine").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("ok.md"), dir.path().join("sub/inside.md"))
            .unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("leak.md"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("skills")).unwrap();

        assert_eq!(read(dir.path(), "ok.md").unwrap(), b"fine");
        assert_eq!(read(dir.path(), "sub/inside.md").unwrap(), b"fine");
        for escaping in ["leak.md", "skills/secret.txt"] {
            let error = read(dir.path(), escaping).unwrap_err();
            assert!(error.contains("through a symlink"), "{escaping}: {error}");
        }
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert!(within(dir.path(), bad).is_err(), "{bad}");
        }
        assert!(
            read(dir.path(), "missing.md")
                .unwrap_err()
                .contains("No such file")
        );
    }
}
