//! Finding source files: glob expansion (the source of truth for what is shipped), the
//! directories inotify watches, and the order files are shipped in.
//!
//! No reading happens here; callers open what this module names.

use std::path::{Path, PathBuf};

/// A path or glob given by the user that names nothing usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoverError {
    #[error("{0}: the glob matches no file")]
    NoMatch(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{pattern}: bad glob: {error}")]
    BadGlob { pattern: String, error: glob::PatternError },
}

/// The files to ship, oldest day first. Without arguments: the configured globs and their
/// `.gz` twins. Arguments may be files, directories (their `*.ndjson` and `*.ndjson.gz`) or
/// globs; one that matches nothing is a usage error.
pub(crate) fn backfill_files(
    patterns: &[String],
    args: &[String],
) -> Result<Vec<PathBuf>, DiscoverError> {
    let mut files = Vec::new();
    if args.is_empty() {
        for pattern in patterns {
            files.extend(glob_files(pattern)?);
            files.extend(glob_files(&format!("{pattern}.gz"))?);
        }
    } else {
        for arg in args {
            let path = Path::new(arg);
            if path.is_dir() {
                let dir = glob::Pattern::escape(arg);
                files.extend(glob_files(&format!("{dir}/*.ndjson"))?);
                files.extend(glob_files(&format!("{dir}/*.ndjson.gz"))?);
            } else if path.is_file() {
                files.push(path.to_path_buf());
            } else if arg.contains(['*', '?', '[']) {
                let matched = glob_files(arg)?;
                if matched.is_empty() {
                    return Err(DiscoverError::NoMatch(arg.clone()));
                }
                files.extend(matched);
            } else {
                return Err(DiscoverError::NotFound(arg.clone()));
            }
        }
    }
    let mut files = one_path_per_file(files);
    files.sort_by_cached_key(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (crate::parse::file_day(&name), p.clone())
    });
    Ok(files)
}

/// Keeps one path (absolute) per file, by identity (device + inode), not by path text: a file
/// given under two paths (a symlink, a hard link, `..`) is read once, by one reader. The first
/// path given is kept, unless it is a symlink and another is not. A path that cannot be
/// stat'ed (vanished) is kept as it is, once.
fn one_path_per_file(files: Vec<PathBuf>) -> Vec<PathBuf> {
    use std::collections::hash_map::Entry;
    let mut by_file: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in files {
        let path = std::path::absolute(&path).unwrap_or(path);
        let key = match std::fs::metadata(&path) {
            Ok(meta) => Ok(crate::identity::FileId::of(&meta)),
            Err(_) => Err(path.clone()),
        };
        match by_file.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(kept.len());
                kept.push(path);
            }
            Entry::Occupied(slot) => {
                let is_link = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_symlink());
                let first = &mut kept[*slot.get()];
                if is_link(first) && !is_link(&path) {
                    *first = path;
                }
            }
        }
    }
    kept
}

pub(crate) fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, DiscoverError> {
    let paths = glob::glob(pattern)
        .map_err(|error| DiscoverError::BadGlob { pattern: pattern.to_string(), error })?;
    Ok(paths.filter_map(Result::ok).filter(|p| p.is_file()).collect())
}

/// The directory part of a glob before its first wildcard: what inotify watches.
pub(crate) fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for part in Path::new(pattern).components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            break;
        }
        base.push(part);
    }
    if base.as_os_str() == pattern {
        base.pop();
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 #3: one file given as itself, a symlink, a hard link and through `..` is one
    /// source, under its own path (a symlink given first yields to a real name).
    #[test]
    fn a_file_under_several_paths_is_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["raw", "alias", "hard"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let file = root.join("raw/events_20240301.ndjson");
        std::fs::write(&file, b"{}\n").unwrap();
        std::os::unix::fs::symlink(&file, root.join("alias/events_20240301.ndjson")).unwrap();
        std::fs::hard_link(&file, root.join("hard/events_20240301.ndjson")).unwrap();
        let other = root.join("raw/events_20240302.ndjson");
        std::fs::write(&other, b"{}\n").unwrap();
        let arg = |rel: &str| root.join(rel).to_string_lossy().into_owned();
        let args = [
            arg("alias/events_20240301.ndjson"),
            arg("raw/events_20240301.ndjson"),
            arg("hard/events_20240301.ndjson"),
            arg("alias/../raw/events_20240301.ndjson"),
            arg("raw/events_20240302.ndjson"),
            arg("raw"),
        ];
        assert_eq!(backfill_files(&[], &args).unwrap(), vec![file, other]);
    }

    #[test]
    fn glob_base_is_the_literal_directory() {
        assert_eq!(glob_base("/d/raw/events_*.ndjson"), PathBuf::from("/d/raw"));
        assert_eq!(glob_base("/d/*/x.ndjson"), PathBuf::from("/d"));
        assert_eq!(glob_base("/d/raw/events.ndjson"), PathBuf::from("/d/raw"));
    }
}
