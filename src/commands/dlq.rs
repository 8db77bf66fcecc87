//! `dlq list` and `dlq replay` (the replay itself is `maintain::replay`).

use std::process::ExitCode;

use crate::config::Config;

pub(super) fn list(config: &Config, reason: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let reason = super::parse_reason(reason)?;
    let letters = crate::dlq::read_all(&config.dlq.dir)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for letter in letters.iter().filter(|l| reason.is_none_or(|r| l.reason == r.as_str())) {
        if json {
            serde_json::to_writer(&mut out, letter)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{} {}:{} (line {}) {}: {} | {}",
                letter.at,
                letter.source,
                letter.offset,
                letter.line_no,
                letter.reason,
                letter.error,
                shown_raw(&letter.raw, letter.raw_len)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How many characters of a bad line the text listing shows.
const RAW_SHOWN_CHARS: usize = 100;

/// A bad line as the text listing shows it: its first [`RAW_SHOWN_CHARS`] characters, control
/// and bidi-override characters escaped (a raw line must not drive the terminal), then `…` and
/// the line's length in bytes when anything was cut (here or by `dlq.max_raw_bytes`).
fn shown_raw(raw: &str, raw_len: u64) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    for c in chars.by_ref().take(RAW_SHOWN_CHARS) {
        let hidden = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if hidden {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() || raw_len > raw.len() as u64 {
        out.push_str(&format!("… ({raw_len} bytes)"));
    }
    out
}

pub(super) fn replay(config: Config, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    let reason = super::parse_reason(reason)?;
    super::prepare_dirs(&config)?;
    let r = crate::maintain::replay::replay(&config, reason)?;
    // The summary goes to stdout: it is the command's result, for scripts.
    println!(
        "dlq replay: {} considered, {} shipped and removed, {} still rejected by the mapping, {} rejected by SQLite, {} kept (raw cut or lossy)",
        r.considered, r.shipped, r.still_dead, r.write_failed, r.not_replayable
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_raw_cuts_and_escapes() {
        let long = "é".repeat(150);
        #[rustfmt::skip]
        let cases: [(&str, u64, String); 6] = [
            ("{bad", 4, "{bad".into()),
            ("", 0, "".into()),
            ("a\tb\u{1b}[31m\r\0", 9, r"a\tb\u{1b}[31m\r\u{0}".into()),
            ("x\u{202e}y", 5, r"x\u{202e}y".into()),
            // Cut by the listing: 100 characters (not bytes), then the length.
            (&long, 300, format!("{}… (300 bytes)", "é".repeat(100))),
            // Cut by dlq.max_raw_bytes already: said even though the text fits.
            ("{\"a\":", 70000, "{\"a\":… (70000 bytes)".into()),
        ];
        for (raw, len, want) in cases {
            assert_eq!(shown_raw(raw, len), want, "{raw:?}");
        }
    }
}
