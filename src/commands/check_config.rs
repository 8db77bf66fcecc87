//! `check-config`: load, validate, create/check the writable directories, print the effective
//! config. Used by the systemd unit's ExecStartPre, so a bad edit never replaces a good daemon.

use std::io::Write;
use std::process::ExitCode;

use crate::config::Config;

pub(super) fn check_config(config: Config) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    if let Some(clickhouse) = &config.sinks.clickhouse {
        // Readable now, so that the service does not start without its sink; never printed.
        clickhouse.password().map_err(|e| super::UsageError(e.to_string()))?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(config.to_toml_string().as_bytes())?;
    if let Some(clickhouse) = &config.sinks.clickhouse {
        // As comments, so the output still parses as the effective config.
        writeln!(
            out,
            "\n# [sinks.clickhouse] writes these tables, creating what `EXISTS TABLE` says is\n\
             # missing (an existing one, e.g. a Distributed table over a cluster, is used as it is).\n\
             # To create them by hand:"
        )?;
        for line in crate::clickhouse::ddl_script(&clickhouse.database).lines() {
            writeln!(out, "# {line}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
