//! `dlq list` and `dlq replay`.

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

pub(super) fn replay(_config: Config, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    let _ = super::parse_reason(reason)?;
    Err(super::UsageError("dlq replay is not implemented yet".into()).into())
}
