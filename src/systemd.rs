//! Telling systemd what the process is doing (`sd_notify`): ready,
//! reloading, stopping, the watchdog, a status line. One place, used by the
//! server and the client's watcher alike, so that no module that refreshes
//! or serves has to reach into start-up to say "ready".
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing. A
//! failure to notify is logged, never fatal: the service works, systemd is
//! just not told.

use std::time::Duration;

pub(crate) use sd_notify::NotifyState;

/// Tells systemd `state`.
pub(crate) fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, "could not notify systemd ({state})");
    }
}

/// Tells systemd several things in one message (`RELOADING=1` must
/// arrive together with its `MONOTONIC_USEC=`).
pub(crate) fn notify_all(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Pings systemd's watchdog at half the interval it asks for
/// (`WatchdogSec=`); nothing when the unit has no watchdog.
pub(crate) fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            notify(NotifyState::Watchdog);
            tokio::time::sleep(period).await;
        }
    });
}
