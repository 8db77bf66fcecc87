//! `check-config`: load, validate, create/check the writable directories, print the effective
//! config. Used by the systemd unit's ExecStartPre, so a bad edit never replaces a good daemon.

use std::io::Write;
use std::process::ExitCode;

use crate::config::Config;

pub(super) fn check_config(config: Config) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    let mut out = std::io::stdout().lock();
    out.write_all(config.to_toml_string().as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
