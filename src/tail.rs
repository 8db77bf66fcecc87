//! Reading lines out of one file: complete `\n`-terminated lines only, in bounded memory.
//!
//! [`LineReader`] owns a byte buffer and an [`io::Read`] source (a plain file positioned at its
//! checkpoint, or a gzip decoder). It never yields bytes that are not followed by a newline,
//! except through [`LineReader::finish`], which callers use only for files that are known to be
//! complete (the contract's "finished file"). A line longer than `max_line_bytes` is never held
//! whole: the reader switches to skipping, keeps a prefix for the dead letter and hashes the rest
//! as it streams past, so the line still gets a stable identity.
//!
//! This module does no parsing and knows nothing of checkpoints or SQLite.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::metrics::Counter;

/// The most the reader asks the OS for at once. Large reads keep syscalls off the profile.
const READ_CHUNK: usize = 256 * 1024;

/// The first read of a reader, and what it keeps between reads: a daemon follows up to
/// `max_open_files` mostly idle files, which must not hold `READ_CHUNK` each (1,024 × 256 KiB
/// = 256 MiB resident). Reads double up to `READ_CHUNK` while they fill the buffer.
const MIN_CHUNK: usize = 4 * 1024;

/// One unit the reader hands out.
#[derive(Debug, PartialEq)]
pub(crate) enum Line<'a> {
    /// A complete line, without its `\n` (a trailing `\r` is kept: it is JSON whitespace).
    Complete(LineMeta, &'a [u8]),
    /// A line longer than `max_line_bytes`: only `prefix` was kept; `digest` covers all of it.
    TooLong(LineMeta, TooLong),
}

/// Where a line sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineMeta {
    /// 0-based byte offset of the line start (in the decompressed stream for `.gz`).
    pub offset: u64,
    /// 1-based line number.
    pub line_no: u64,
    /// Offset just past the line's `\n`: where a checkpoint covering this line points.
    pub end_offset: u64,
}

/// What is left of an over-long line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLong {
    pub prefix: Vec<u8>,
    /// Length of the whole line without its newline.
    pub len: u64,
    /// SHA-256 of the whole line without its newline, so re-reads dedupe like normal lines.
    pub digest: [u8; 32],
}

/// State of an over-long line being skipped (possibly across several reads of a live file).
struct Skipping {
    meta_offset: u64,
    prefix: Vec<u8>,
    len: u64,
    hasher: Sha256,
}

/// Splits a byte stream into lines. See the module docs for the guarantees.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`; `buf[start]` is at stream offset `offset`.
    start: usize,
    end: usize,
    offset: u64,
    /// Lines consumed so far (the next line gets `line_no + 1`).
    line_no: u64,
    /// Where to resume the newline search inside `buf[start..end]` (avoids rescans).
    scanned: usize,
    max_line: usize,
    max_prefix: usize,
    skipping: Option<Skipping>,
    eof: bool,
    /// Bytes asked for by the next read (MIN_CHUNK..=READ_CHUNK).
    chunk: usize,
}

impl<R: Read> LineReader<R> {
    /// A reader whose stream starts at `offset` with `line_no` lines already before it.
    pub(crate) fn new(
        inner: R,
        offset: u64,
        line_no: u64,
        max_line: usize,
        max_prefix: usize,
    ) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            offset,
            line_no,
            scanned: 0,
            max_line,
            max_prefix: max_prefix.min(max_line),
            skipping: None,
            eof: false,
            chunk: MIN_CHUNK,
        }
    }

    /// Offset just past the last line handed out.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of lines handed out so far, including those before the start offset.
    pub(crate) fn line_no(&self) -> u64 {
        self.line_no
    }

    /// True once the source returned end-of-file on the last read attempt.
    pub(crate) fn at_eof(&self) -> bool {
        self.eof
    }

    /// Bytes read from the source but not yet handed out as a line (a partial line).
    pub(crate) fn pending_bytes(&self) -> u64 {
        (self.end - self.start) as u64 + self.skipping.as_ref().map_or(0, |s| s.len)
    }

    /// The next complete line, or `None` when the source has no complete line right now.
    /// A later call may return more (a live file grew); the partial tail stays buffered.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            let unscanned = &self.buf[self.start + self.scanned..self.end];
            if let Some(pos) = memchr::memchr(b'\n', unscanned) {
                let line_end = self.start + self.scanned + pos;
                self.scanned = 0;
                return Ok(Some(self.take(line_end, true)));
            }
            self.scanned = self.end - self.start;
            self.bound_partial_line();
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Hands out the unterminated bytes at the end of a finished stream, if any. Reads the
    /// source to its end first. Only for files known to be complete.
    pub(crate) fn finish(&mut self) -> io::Result<Option<Line<'_>>> {
        while self.fill()? {
            if memchr::memchr(b'\n', &self.buf[self.start..self.end]).is_some() {
                // More complete lines arrived; the caller should call next_line again.
                self.scanned = 0;
                return Ok(None);
            }
            self.bound_partial_line();
        }
        if self.start == self.end && self.skipping.is_none() {
            return Ok(None);
        }
        let line_end = self.end;
        Ok(Some(self.take(line_end, false)))
    }

    /// Gives back the line just handed out (`meta` of the `Line::Complete` that `next_line`
    /// or `finish` returned last; its bytes are still buffered), so that the next call hands
    /// it out again: for a caller that must not read past an offset.
    pub(crate) fn unread(&mut self, meta: LineMeta) {
        let len = (meta.end_offset - meta.offset) as usize;
        assert!(
            self.offset == meta.end_offset && self.line_no == meta.line_no && self.start >= len,
            "unread: not the line just handed out"
        );
        self.start -= len;
        self.offset = meta.offset;
        self.line_no -= 1;
        self.scanned = 0;
    }

    /// The stream cannot be read past here (a corrupt `.gz`): hands out the bytes buffered
    /// after the last complete line, maybe none, as its last line.
    pub(crate) fn give_up(&mut self) -> Line<'_> {
        self.eof = true;
        let line_end = self.end;
        self.take(line_end, false)
    }

    /// Keeps memory bounded while no newline is buffered: past `max_line` the line becomes a
    /// skip, and a skip's buffered bytes go into its hash and are dropped.
    fn bound_partial_line(&mut self) {
        if self.skipping.is_none() && self.end - self.start > self.max_line {
            self.start_skipping();
        }
        if let Some(skip) = &mut self.skipping {
            let data = &self.buf[self.start..self.end];
            skip.hasher.update(data);
            skip.len += data.len() as u64;
            self.start = self.end;
            self.scanned = 0;
        }
    }

    fn start_skipping(&mut self) {
        let data = &self.buf[self.start..self.end];
        let prefix = data[..self.max_prefix.min(data.len())].to_vec();
        let mut hasher = Sha256::new();
        hasher.update(data);
        self.skipping =
            Some(Skipping { meta_offset: self.offset, prefix, len: data.len() as u64, hasher });
        self.start = self.end;
        self.scanned = 0;
    }

    /// Consumes `buf[start..line_end]` as one line, plus the newline at `line_end` when
    /// `newline` (an unterminated last line of a finished stream has none).
    fn take(&mut self, line_end: usize, newline: bool) -> Line<'_> {
        let newline_len = u64::from(newline);
        self.line_no += 1;
        let line_start = self.start;
        self.start = line_end + newline_len as usize;
        if let Some(mut skip) = self.skipping.take() {
            let tail = &self.buf[line_start..line_end];
            skip.hasher.update(tail);
            skip.len += tail.len() as u64;
            let end_offset = skip.meta_offset + skip.len + newline_len;
            self.offset = end_offset;
            let meta = LineMeta { offset: skip.meta_offset, line_no: self.line_no, end_offset };
            return Line::TooLong(meta, finish_skip(skip));
        }
        let line = &self.buf[line_start..line_end];
        let meta = LineMeta {
            offset: self.offset,
            line_no: self.line_no,
            end_offset: self.offset + line.len() as u64 + newline_len,
        };
        self.offset = meta.end_offset;
        if line.len() > self.max_line {
            // Arrived in one read: same treatment as a streamed one.
            let mut hasher = Sha256::new();
            hasher.update(line);
            let too_long = TooLong {
                prefix: line[..self.max_prefix].to_vec(),
                len: line.len() as u64,
                digest: hasher.finalize().into(),
            };
            return Line::TooLong(meta, too_long);
        }
        Line::Complete(meta, line)
    }

    /// Reads more bytes; false at end of stream (for now: a live file may grow later).
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && (self.start == self.end || self.end + self.chunk > self.buf.len()) {
            // Compact: move the partial line to the front before growing the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // The buffer holds at most one partial line (≤ max_line + 1 bytes) plus one chunk.
        let want = self.end + self.chunk;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    if self.start == self.end && self.buf.len() > MIN_CHUNK {
                        // Caught up: keep only a small buffer until the file grows again.
                        (self.start, self.end, self.chunk) = (0, 0, MIN_CHUNK);
                        self.buf.truncate(MIN_CHUNK);
                        self.buf.shrink_to_fit();
                    }
                    return Ok(false);
                }
                Ok(n) => {
                    if self.end + n == self.buf.len() {
                        // More may be waiting: ask for more next time.
                        self.chunk = (self.chunk * 2).min(READ_CHUNK);
                    }
                    self.end += n;
                    self.eof = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn finish_skip(skip: Skipping) -> TooLong {
    TooLong { prefix: skip.prefix, len: skip.len, digest: skip.hasher.finalize().into() }
}

/// A source: a plain file or a gzip stream, chosen by content (the magic bytes), not by name.
pub(crate) enum Source {
    Plain(Counted),
    Gzip(Box<MultiGzDecoder<BufReader<Counted>>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gzip(d) => d.read(buf),
        }
    }
}

/// A file that counts the bytes read from disk (compressed bytes for `.gz`), for progress.
/// Shares its descriptor with the caller's handle, so a followed file costs one descriptor.
pub(crate) struct Counted {
    file: Arc<File>,
    disk_bytes: Option<Arc<Counter>>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&*self.file).read(buf)?;
        if let Some(counter) = &self.disk_bytes {
            counter.add(n as u64);
        }
        Ok(n)
    }
}

impl Source {
    /// Opens `path` and positions it at decompressed `offset` (tests; the pipeline opens
    /// through [`Source::from_file`]).
    #[cfg(test)]
    pub(crate) fn open(
        path: &std::path::Path,
        offset: u64,
        disk_bytes: Option<Arc<Counter>>,
    ) -> io::Result<(Source, Arc<File>)> {
        Source::from_file(File::open(path)?, offset, disk_bytes)
    }

    /// Positions a file the caller already opened (and identified) at decompressed `offset`:
    /// reading through the same descriptor means a path replaced in between cannot be read
    /// instead. Gzip offsets are reached by decompressing and discarding, so resuming a `.gz`
    /// costs a re-read of its prefix.
    pub(crate) fn from_file(
        file: File,
        offset: u64,
        disk_bytes: Option<Arc<Counter>>,
    ) -> io::Result<(Source, Arc<File>)> {
        let gzip = is_gzip(&file)?;
        let file = Arc::new(file);
        let handle = file.clone();
        if gzip {
            (&*file).seek(SeekFrom::Start(0))?;
            let counted = Counted { file, disk_bytes };
            let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(READ_CHUNK, counted));
            let skipped = io::copy(&mut (&mut decoder).take(offset), &mut io::sink())?;
            if skipped < offset {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("gzip stream ends at {skipped}, before the checkpoint {offset}"),
                ));
            }
            Ok((Source::Gzip(Box::new(decoder)), handle))
        } else {
            (&*file).seek(SeekFrom::Start(offset))?;
            Ok((Source::Plain(Counted { file, disk_bytes }), handle))
        }
    }

    #[cfg(test)]
    pub(crate) fn is_gzip(&self) -> bool {
        matches!(self, Source::Gzip(_))
    }
}

/// Whether `file` starts with the gzip magic bytes (read at 0, the file position is left alone).
pub(crate) fn is_gzip(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match file.read_at(&mut magic[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that returns its data in the given pieces, one per read call, then EOF; an
    /// empty piece is an EOF in between.
    struct Pieces(Vec<Vec<u8>>);
    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            if self.0[0].is_empty() {
                // An empty piece is one end-of-file: data after it "was appended later".
                self.0.remove(0);
                return Ok(0);
            }
            let piece = &mut self.0[0];
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    fn collect(reader: &mut LineReader<impl Read>) -> Vec<(u64, u64, String)> {
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            match line {
                Line::Complete(m, b) => {
                    out.push((m.offset, m.line_no, String::from_utf8_lossy(b).into()))
                }
                Line::TooLong(m, t) => out.push((
                    m.offset,
                    m.line_no,
                    format!("TOOLONG {} {}", t.len, String::from_utf8_lossy(&t.prefix)),
                )),
            }
        }
        out
    }

    #[test]
    fn yields_only_complete_lines() {
        let src = Pieces(vec![b"a\nbb".to_vec(), b"b\n\nccc".to_vec()]);
        let mut r = LineReader::new(src, 0, 0, 100, 10);
        let lines = collect(&mut r);
        assert_eq!(lines, vec![(0, 1, "a".into()), (2, 2, "bbb".into()), (6, 3, "".into())]);
        assert_eq!(r.offset(), 7);
        assert_eq!(r.pending_bytes(), 3);
        let last = r.finish().unwrap().unwrap();
        assert_eq!(
            last,
            Line::Complete(LineMeta { offset: 7, line_no: 4, end_offset: 10 }, b"ccc")
        );
        assert!(r.finish().unwrap().is_none());
    }

    #[test]
    fn an_unread_line_is_handed_out_again() {
        let src = Pieces(vec![b"a\nbb\nc".to_vec()]);
        let mut r = LineReader::new(src, 10, 5, 100, 10);
        assert!(matches!(r.next_line().unwrap(), Some(Line::Complete(_, b"a"))));
        let Some(Line::Complete(meta, b"bb")) = r.next_line().unwrap() else { panic!("bb") };
        r.unread(meta);
        assert_eq!((r.offset(), r.line_no(), r.pending_bytes()), (12, 6, 4));
        assert_eq!(collect(&mut r), vec![(12, 7, "bb".into())]);
        let Some(Line::Complete(meta, b"c")) = r.finish().unwrap() else { panic!("c") };
        r.unread(meta);
        assert_eq!((r.offset(), r.line_no()), (15, 7));
        assert!(matches!(r.finish().unwrap(), Some(Line::Complete(_, b"c"))));
    }

    #[test]
    fn resumes_with_offset_and_line_numbers() {
        let src = Pieces(vec![b"x\ny\n".to_vec()]);
        let mut r = LineReader::new(src, 100, 41, 100, 10);
        assert_eq!(collect(&mut r), vec![(100, 42, "x".into()), (102, 43, "y".into())]);
    }

    #[test]
    fn buffer_grows_for_a_burst_and_shrinks_once_caught_up() {
        // 1 MiB of 100-byte lines, then end-of-file, then one more line "appended later".
        let line = format!("{}\n", "l".repeat(99));
        let burst = line.repeat(10 * 1024).into_bytes();
        let mut r =
            LineReader::new(Pieces(vec![burst, Vec::new(), b"late\n".to_vec()]), 0, 0, 200, 10);
        let mut n = 0;
        while r.next_line().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 10 * 1024);
        assert!(r.chunk == MIN_CHUNK && r.buf.len() <= MIN_CHUNK, "idle buffer {}", r.buf.len());
        assert!(
            matches!(r.next_line().unwrap(), Some(Line::Complete(m, b"late")) if m.line_no == n + 1)
        );
        assert!(r.next_line().unwrap().is_none());
        // An idle reader (nothing new) never holds more than the small buffer.
        assert!(r.buf.len() <= MIN_CHUNK);
    }

    #[test]
    fn over_long_line_is_skipped_in_bounded_memory() {
        let long: Vec<u8> = std::iter::repeat_n(b'z', 5000).collect();
        let mut pieces: Vec<Vec<u8>> = long.chunks(7).map(|c| c.to_vec()).collect();
        pieces.insert(0, b"ok\n".to_vec());
        pieces.push(b"\nafter\n".to_vec());
        let mut r = LineReader::new(Pieces(pieces), 0, 0, 64, 8);
        let lines = collect(&mut r);
        assert_eq!(
            lines,
            vec![
                (0, 1, "ok".into()),
                (3, 2, "TOOLONG 5000 zzzzzzzz".into()),
                (5004, 3, "after".into())
            ]
        );
        assert!(r.buf.len() <= 64 + 2 * READ_CHUNK, "buffer grew to {}", r.buf.len());
    }

    #[test]
    fn too_long_digest_is_independent_of_read_sizes() {
        let long: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 | 1).collect();
        let mut data = long.clone();
        data.push(b'\n');
        let digest_of = |pieces: Vec<Vec<u8>>| {
            let mut r = LineReader::new(Pieces(pieces), 0, 0, 100, 10);
            match r.next_line().unwrap().unwrap() {
                Line::TooLong(_, t) => t.digest,
                other => panic!("{other:?}"),
            }
        };
        let whole = digest_of(vec![data.clone()]);
        let split = digest_of(data.chunks(13).map(|c| c.to_vec()).collect());
        assert_eq!(whole, split);
        assert_eq!(whole, <[u8; 32]>::from(Sha256::digest(&long)));
    }

    #[test]
    fn unterminated_too_long_tail_is_finished_as_too_long() {
        let long: Vec<u8> = vec![b'q'; 500];
        let mut r = LineReader::new(Pieces(vec![long]), 0, 0, 100, 4);
        assert!(r.next_line().unwrap().is_none());
        match r.finish().unwrap().unwrap() {
            Line::TooLong(m, t) => {
                assert_eq!((m.offset, m.line_no, m.end_offset), (0, 1, 500));
                assert_eq!((t.len, t.prefix.as_slice()), (500, &b"qqqq"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gzip_is_detected_by_content_and_multi_member() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-gz-suffix");
        let mut out = Vec::new();
        for part in [&b"one\ntwo\n"[..], b"three\n"] {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(part).unwrap();
            out.extend(enc.finish().unwrap());
        }
        std::fs::write(&path, out).unwrap();
        let (src, _) = Source::open(&path, 4, None).unwrap();
        assert!(src.is_gzip());
        let mut r = LineReader::new(src, 4, 1, 100, 10);
        assert_eq!(collect(&mut r), vec![(4, 2, "two".into()), (8, 3, "three".into())]);
    }

    #[test]
    fn finish_stops_at_a_newline_that_ends_a_skipped_line() {
        let pieces = vec![vec![b'x'; 50], vec![], b"yy\nz".to_vec()];
        let mut r = LineReader::new(Pieces(pieces), 0, 0, 10, 4);
        assert!(r.next_line().unwrap().is_none());
        // The file grew: finish must hand the newline back to next_line, not hash past it.
        assert!(r.finish().unwrap().is_none());
        match r.next_line().unwrap().unwrap() {
            Line::TooLong(m, t) => assert_eq!((m.offset, m.end_offset, t.len), (0, 53, 52)),
            other => panic!("{other:?}"),
        }
        assert!(r.next_line().unwrap().is_none());
        assert_eq!(
            r.finish().unwrap().unwrap(),
            Line::Complete(LineMeta { offset: 53, line_no: 2, end_offset: 54 }, b"z")
        );
    }
}
