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
    let mut files: Vec<PathBuf> =
        files.into_iter().map(|p| std::path::absolute(&p).unwrap_or(p)).collect();
    files.sort_by_cached_key(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (crate::parse::file_day(&name), p.clone())
    });
    files.dedup();
    Ok(files)
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

    #[test]
    fn glob_base_is_the_literal_directory() {
        assert_eq!(glob_base("/d/raw/events_*.ndjson"), PathBuf::from("/d/raw"));
        assert_eq!(glob_base("/d/*/x.ndjson"), PathBuf::from("/d"));
        assert_eq!(glob_base("/d/raw/events.ndjson"), PathBuf::from("/d/raw"));
    }
}
