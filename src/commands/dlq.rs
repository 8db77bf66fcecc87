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
                "{} {}:{} (line {}) {}: {}",
                letter.at,
                letter.source,
                letter.offset,
                letter.line_no,
                letter.reason,
                letter.error
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
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
