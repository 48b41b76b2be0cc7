//! Time as both protocols see it: whole seconds since the Unix epoch, and
//! the one rule for whether a request's timestamp is close enough to now.
//! Its own module because the client stamps requests and the server checks
//! them; neither should reach into the other for it.

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a request stamped `timestamp` passes the clock check at `now`:
/// at most `skew` seconds away, in either direction. Checked arithmetic: a
/// timestamp near `i64::MIN` or `i64::MAX` must not wrap into the window.
pub fn clock_ok(now: i64, timestamp: i64, skew: i64) -> bool {
    now.checked_sub(timestamp)
        .and_then(i64::checked_abs)
        .is_some_and(|d| d <= skew)
}

/// How far in the future a sealed copy's time may be (clocks that
/// disagree a little) before the copy is refused: the client's boot cache
/// and the server's last-good set follow the same rule.
pub const FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(30);

/// A time as RFC 3339, to the second.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as a human reads it, to the second.
pub fn human(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}
