//! systemd's notify protocol (`Type=notify`), through the `sd-notify` crate: READY=1 once
//! `run` has loaded its state and found its sources, RELOADING=1 … READY=1 around SIGHUP,
//! STOPPING=1 when the drain starts, STATUS= lines, and WATCHDOG=1 pings (sent by
//! [`crate::monitor`] only while the writers make progress).
//!
//! Every function is a no-op without `NOTIFY_SOCKET` (not under systemd), and a failed send is
//! logged at debug only: the protocol is advisory and must never stop the pipeline. The
//! environment is never unset, since the whole process lifetime keeps notifying.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, ?states, "sd_notify failed");
    }
}

/// State loaded, sources discovered: systemd may consider the unit started.
pub(crate) fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// SIGHUP received; [`ready`] follows once the reload is done.
pub(crate) fn reloading() {
    notify(&[NotifyState::Reloading, NotifyState::Status("reloading configuration")]);
}

/// The graceful drain has started.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining: committing buffered records")]);
}

pub(crate) fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is alive and making progress.
pub(crate) fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// `WatchdogSec=` of the unit, if set: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another
/// process. Parsed here rather than with `sd_notify::watchdog_enabled`, which also rejects an
/// absent `WATCHDOG_PID`; libsystemd's `sd_watchdog_enabled` accepts it, and so do we.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The one-line STATUS= text: what `systemctl status` shows under the unit. The lag comes
/// first (the contract: STATUS= carries it), so it survives a truncated display; the rate is
/// left out when there is none yet (READY=1, before the monitor has measured one).
pub(crate) fn status_line(
    files: u64,
    lag_bytes: u64,
    events_per_sec: Option<f64>,
    dead_letters: u64,
) -> String {
    let lag = bytesize::ByteSize(lag_bytes).display().iec();
    match events_per_sec {
        Some(rate) => {
            format!("lag {lag}, {files} files, {rate:.0} events/s, {dead_letters} dead letters")
        }
        None => format!("lag {lag}, {files} files, {dead_letters} dead letters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_short_and_human_and_leads_with_the_lag() {
        assert_eq!(
            status_line(3, 5 * 1024 * 1024, Some(1234.4), 2),
            "lag 5.0 MiB, 3 files, 1234 events/s, 2 dead letters"
        );
        assert_eq!(status_line(1, 15, None, 0), "lag 15 B, 1 files, 0 dead letters");
    }
}
