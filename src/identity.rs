//! File identity: which file a position belongs to. A file is its [`FileId`] (device and
//! inode, which a rename keeps) plus a [`Fingerprint`] of its content: a hash of the first
//! bytes and a hash of the bytes just before a position. A position is trusted only while
//! both still match, so inode reuse, a replaced file or a truncate-and-regrow is read from 0
//! instead of from a stale offset (re-reading is safe: event keys make it a no-op; resuming
//! wrongly would lose data).

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};

use sha2::{Digest, Sha256};

/// Bytes hashed at the head and before the offset. Enough to tell files apart in practice,
/// small enough to read for 10,000 files at startup.
pub(crate) const FINGERPRINT_BYTES: u64 = 1024;

/// A file's device and inode: what a rename keeps and a new file gets anew (or reuses, which
/// the [`Fingerprint`] catches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

/// Hashes that tie a position to the content it was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint {
    pub head_len: u64,
    pub head_hash: Option<Vec<u8>>,
    pub tail_hash: Option<Vec<u8>>,
}

/// Why a position does not describe a file any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// The file is shorter than the saved offset.
    Truncated,
    /// The first bytes differ: another file got this inode.
    HeadChanged,
    /// The bytes before the offset differ: rewritten in place (e.g. truncated and regrown).
    TailChanged,
}

impl Fingerprint {
    /// Fingerprints `file` as of `offset`. For gzip files `offset` is in the decompressed
    /// stream, so only the compressed head is hashed: a `.gz` is immutable once written.
    pub(crate) fn compute(file: &File, gzip: bool, offset: u64) -> std::io::Result<Fingerprint> {
        if gzip {
            let len = file.metadata()?.len().min(FINGERPRINT_BYTES);
            return Ok(Fingerprint {
                head_len: len,
                head_hash: hash_range(file, 0, len)?,
                tail_hash: None,
            });
        }
        let head_len = offset.min(FINGERPRINT_BYTES);
        let tail_len = offset.min(FINGERPRINT_BYTES);
        Ok(Fingerprint {
            head_len,
            head_hash: hash_range(file, 0, head_len)?,
            tail_hash: hash_range(file, offset - tail_len, tail_len)?,
        })
    }

    /// Whether `file` still holds, up to `offset`, the content this was taken on.
    pub(crate) fn verify(
        &self,
        file: &File,
        gzip: bool,
        offset: u64,
    ) -> std::io::Result<Result<(), Mismatch>> {
        let len = file.metadata()?.len();
        if !gzip && len < offset {
            return Ok(Err(Mismatch::Truncated));
        }
        if self.head_hash.is_some() && hash_range(file, 0, self.head_len)? != self.head_hash {
            return Ok(Err(Mismatch::HeadChanged));
        }
        if !gzip && self.tail_hash.is_some() {
            let tail_len = offset.min(FINGERPRINT_BYTES);
            if hash_range(file, offset - tail_len, tail_len)? != self.tail_hash {
                return Ok(Err(Mismatch::TailChanged));
            }
        }
        Ok(Ok(()))
    }
}

/// SHA-256 of `len` bytes at `start`, or None if the file is shorter.
fn hash_range(file: &File, start: u64, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Sha256::digest(&buf).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_detects_replacement_and_regrowth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"line one\nline two\n").unwrap();
        let file = File::open(&path).unwrap();
        let fp = Fingerprint::compute(&file, false, 9).unwrap();
        assert_eq!(fp.verify(&file, false, 9).unwrap(), Ok(()));
        // Appends keep it valid.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"3\n").unwrap();
        assert_eq!(fp.verify(&file, false, 9).unwrap(), Ok(()));
        std::fs::write(&path, b"line").unwrap();
        assert_eq!(fp.verify(&file, false, 9).unwrap(), Err(Mismatch::Truncated));
        std::fs::write(&path, b"LINE one\nline two\n").unwrap();
        assert_eq!(fp.verify(&file, false, 9).unwrap(), Err(Mismatch::HeadChanged));
    }

    #[test]
    fn tail_hash_catches_regrowth_past_a_long_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let head = "h".repeat(2000);
        std::fs::write(&path, format!("{head}\nAAAA\n")).unwrap();
        let file = File::open(&path).unwrap();
        let offset = 2006;
        let fp = Fingerprint::compute(&file, false, offset).unwrap();
        std::fs::write(&path, format!("{head}\nBBBB\nmore\n")).unwrap();
        assert_eq!(fp.verify(&file, false, offset).unwrap(), Err(Mismatch::TailChanged));
    }
}
