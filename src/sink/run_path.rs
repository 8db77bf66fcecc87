//! Maps a `run_id` to the file name of its run database, `<escaped run_id>.sqlite`.
//!
//! The contract requires the mapping to be injective and to never name a file outside
//! `output.dir`, whatever the run_id contains (`../`, `/`, NUL, 500 bytes). The escaping:
//!
//! - bytes `[A-Za-z0-9_-]` are kept; every other byte of the UTF-8 run_id (`.`, `%`, `~`, `/`,
//!   NUL, each byte of a multi-byte char, ...) becomes `%XX`, uppercase hex. Because `%` itself
//!   is escaped, decoding is unambiguous, so the escaping is injective. Because `.` and `/` are
//!   escaped, the name is a single path component that never starts with `.` (no hidden file,
//!   never `.`/`..`).
//! - a stem longer than [`MAX_SHORT_STEM`] bytes (file names are limited to 255 bytes) becomes
//!   `<first ≤160 bytes of the escaped stem>~<SHA-256 of the run_id, 64 hex chars>`. `~` is
//!   always escaped in short forms, so a hashed name never equals a short one; two hashed names
//!   are equal only on a SHA-256 collision. The prefix keeps the name recognisable to humans.
//! - the empty run_id (callers reject it; it must still not panic) maps to the stem `%`, which
//!   no non-empty run_id produces (every `%` it emits is followed by two hex digits).
//!
//! The name depends only on the bytes: on a case-insensitive file system `A` and `a` would
//! share a file; the output directory is expected on a case-sensitive one.

use sha2::{Digest, Sha256};

/// Longest escaped stem kept as-is; longer stems use the hashed form.
const MAX_SHORT_STEM: usize = 200;
/// Bytes of the escaped stem kept in front of the hash in the hashed form.
const HASHED_PREFIX: usize = 160;
const EXT: &str = ".sqlite";
/// Stem of the empty run_id: `%` never appears without two hex digits otherwise.
const EMPTY_STEM: &str = "%";

fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn escape(run_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(run_id.len());
    for &b in run_id.as_bytes() {
        if is_kept(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out
}

/// The file name (no directory) of the run DB for `run_id`: an injective escaping + ".sqlite".
///
/// At most `160 + 1 + 64 + 7 = 232` bytes, matching `^[A-Za-z0-9_%~-]+\.sqlite$`.
pub(crate) fn db_file_name(run_id: &str) -> String {
    if run_id.is_empty() {
        return format!("{EMPTY_STEM}{EXT}");
    }
    let mut stem = escape(run_id);
    if stem.len() > MAX_SHORT_STEM {
        // The stem is ASCII and every '%' starts a 3-byte escape: back off to the last '%'
        // if it falls in the final two bytes so no `%XX` is split.
        let mut cut = HASHED_PREFIX;
        if let Some(i) = stem[cut - 2..cut].rfind('%') {
            cut = cut - 2 + i;
        }
        stem.truncate(cut);
        stem.push('~');
        for b in Sha256::digest(run_id.as_bytes()) {
            stem.push_str(&format!("{b:02x}"));
        }
    }
    stem.push_str(EXT);
    stem
}

/// Inverse for names produced without the long-name hash form; None for hashed or foreign names.
///
/// Only the exact canonical form is accepted (`%41.sqlite` or `%2e.sqlite` are foreign: no
/// run_id produces them), so `Some(id)` implies `db_file_name(&id) == name`.
#[cfg(test)]
pub(crate) fn run_id_from_file_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(EXT)?;
    if stem == EMPTY_STEM {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(stem.len());
    let mut it = stem.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let run_id = String::from_utf8(bytes).ok()?;
    // Re-encoding rejects every non-canonical spelling (lowercase hex, escaped kept bytes,
    // unescaped '.', '~', stems that would have been hashed, ...) in one check.
    (db_file_name(&run_id) == name).then_some(run_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// Checks the name, its shape, and that a short form round-trips.
    #[track_caller]
    fn check(run_id: &str, expected: &str) {
        let name = db_file_name(run_id);
        assert_eq!(name, expected, "run_id {run_id:?}");
        assert_shape(&name);
        let back = run_id_from_file_name(&name);
        if name.contains('~') {
            assert_eq!(back, None);
        } else {
            assert_eq!(back.as_deref(), Some(run_id));
        }
    }

    /// `^[A-Za-z0-9_%~-]+\.sqlite$`, at most 255 bytes.
    #[track_caller]
    fn assert_shape(name: &str) {
        assert!(name.len() <= 255, "{} bytes: {name}", name.len());
        let stem = name.strip_suffix(".sqlite").expect("ends with .sqlite");
        assert!(!stem.is_empty(), "empty stem: {name}");
        assert!(stem.bytes().all(|b| is_kept(b) || b == b'%' || b == b'~'), "bad byte in {name}");
    }

    #[test]
    fn table() {
        let a500 = "a".repeat(500);
        let h500 = "69206a472a1f384259f2c387211f123d3cb308ec3c29c9892333814c3ebeba22";
        let slash1000 = "/".repeat(1000);
        let h1000 = "e1ad99d1f202b13a7fabe523bd53b32bf7fe9f39706a0f3b9beef12f5f462c47";
        let cases: &[(&str, String)] = &[
            ("abc", "abc.sqlite".into()),
            ("run-1_A", "run-1_A.sqlite".into()),
            ("../x", "%2E%2E%2Fx.sqlite".into()),
            ("a/b", "a%2Fb.sqlite".into()),
            ("a\u{0}b", "a%00b.sqlite".into()),
            ("é", "%C3%A9.sqlite".into()),
            ("%41", "%2541.sqlite".into()),
            ("A", "A.sqlite".into()),
            ("~", "%7E.sqlite".into()),
            (".", "%2E.sqlite".into()),
            ("..", "%2E%2E.sqlite".into()),
            (" 1", "%201.sqlite".into()),
            ("", "%.sqlite".into()),
            // 200-byte stem is the longest short form; 201 is hashed.
            (&"a".repeat(200), format!("{}.sqlite", "a".repeat(200))),
            (&"a".repeat(197), format!("{}.sqlite", "a".repeat(197))),
            (&a500, format!("{}~{h500}.sqlite", "a".repeat(160))),
            // 1000 escaped '/' = 3000 bytes: the 160-byte cut would split the 54th `%2F`.
            (&slash1000, format!("{}~{h1000}.sqlite", "%2F".repeat(53))),
        ];
        for (run_id, expected) in cases {
            check(run_id, expected);
        }
        assert_ne!(db_file_name("%41"), db_file_name("A"));
        assert!(db_file_name(&"a".repeat(201)).contains('~'));
        assert!(db_file_name(&format!("{}.", "a".repeat(198))).contains('~'));
        assert!(!db_file_name(&format!("{}.", "a".repeat(197))).contains('~'));
    }

    #[test]
    fn foreign_names_do_not_decode() {
        let hashed = db_file_name(&"x".repeat(300));
        for name in [
            hashed.as_str(),
            "abc",
            "abc.db",
            ".sqlite",
            "a.b.sqlite",
            "%41.sqlite",
            "%2e.sqlite",
            "%2.sqlite",
            "a%.sqlite",
            "%FF.sqlite",
            "%zz.sqlite",
            "a~b.sqlite",
            "%E9.sqlite",
        ] {
            assert_eq!(run_id_from_file_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn hostile_ids_stay_in_dir() {
        let long = "../".repeat(400);
        let hostile = ["..", ".", "../x", "/etc/passwd", "a/../../b", "\u{0}", "~root", &long];
        for id in hostile {
            let name = db_file_name(id);
            let path = Path::new("/out").join(&name);
            assert_eq!(path.parent(), Some(Path::new("/out")), "{id:?}");
            assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(name.as_str()));
            assert!(!name.starts_with('.'));
        }
    }

    /// Arbitrary strings, plus strings over an alphabet of troublemakers long enough to hit the
    /// hashed form, so near-collisions (`%41` vs `A`, cut points) are actually exercised.
    fn run_ids() -> impl Strategy<Value = String> {
        let tricky = prop::sample::select(vec!['a', 'A', '%', '~', '.', '/', '\0', 'é', '4', '1']);
        prop_oneof![
            any::<String>(),
            prop::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
            prop::collection::vec(tricky, 0..120).prop_map(String::from_iter),
        ]
    }

    proptest! {
        #[test]
        fn injective_and_well_formed(a in run_ids(), b in run_ids()) {
            prop_assume!(a != b);
            let (na, nb) = (db_file_name(&a), db_file_name(&b));
            prop_assert_ne!(&na, &nb);
            for (id, name) in [(&a, &na), (&b, &nb)] {
                assert_shape(name);
                if !name.contains('~') {
                    prop_assert_eq!(run_id_from_file_name(name), Some(id.clone()));
                }
            }
        }
    }
}
