//! A per-source limit on failed authentications: after `limit` failures
//! within `window`, a source gets 429 with `Retry-After` before any
//! cryptography is done for it. IPv6 sources count per /64 (one host owns a
//! whole /64). The table is bounded: when it is full of live entries, new
//! sources are not tracked (they still pay the full cost of every request).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(u32),
    V6(u64),
}

pub(crate) fn source(ip: IpAddr) -> Source {
    match ip.to_canonical() {
        IpAddr::V4(v4) => Source::V4(u32::from(v4)),
        IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
    }
}

#[derive(Debug)]
pub(crate) struct FailureLimiter {
    entries: Mutex<HashMap<Source, (u32, i64)>>,
    /// Both change on a config reload ([`FailureLimiter::set_limits`]).
    limit: AtomicU32,
    window: AtomicI64,
    capacity: usize,
}

impl FailureLimiter {
    pub(crate) fn new(limit: u32, window_secs: u64, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            limit: AtomicU32::new(limit),
            window: AtomicI64::new(window_secs.max(1) as i64),
            capacity,
        }
    }

    /// Applies new limits (a config reload). Counts already kept stay: a
    /// source over the new limit is limited at once.
    pub(crate) fn set_limits(&self, limit: u32, window_secs: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.window
            .store(window_secs.max(1) as i64, Ordering::Relaxed);
    }

    fn limits(&self) -> (u32, i64) {
        (
            self.limit.load(Ordering::Relaxed),
            self.window.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, (u32, i64)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds to wait when `ip` is over its limit at time `now`.
    pub(crate) fn retry_after(&self, ip: IpAddr, now: i64) -> Option<u64> {
        let (limit, window) = self.limits();
        if limit == 0 {
            return None;
        }
        let entries = self.lock();
        match entries.get(&source(ip)) {
            Some(&(count, start)) if count >= limit && now < start + window => {
                Some((start + window - now).max(1) as u64)
            }
            _ => None,
        }
    }

    /// Counts one failed authentication from `ip`.
    pub(crate) fn failure(&self, ip: IpAddr, now: i64) {
        let (limit, window) = self.limits();
        if limit == 0 {
            return;
        }
        let mut entries = self.lock();
        let key = source(ip);
        if !entries.contains_key(&key) && entries.len() >= self.capacity {
            entries.retain(|_, (_, start)| now < *start + window);
            if entries.len() >= self.capacity {
                return;
            }
        }
        let entry = entries.entry(key).or_insert((0, now));
        if now >= entry.1 + window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_source_and_forgets_after_the_window() {
        let l = FailureLimiter::new(3, 60, 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.retry_after(a, 100), None);
            l.failure(a, 100);
        }
        assert_eq!(l.retry_after(a, 100), Some(60));
        assert_eq!(l.retry_after(a, 150), Some(10));
        assert_eq!(
            l.retry_after(b, 150),
            None,
            "other sources are not affected"
        );
        assert_eq!(l.retry_after(a, 160), None, "the window has passed");
        // A /64 counts as one source; IPv4-mapped counts as IPv4.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            l.failure(v6a, 200);
        }
        assert!(l.retry_after(v6b, 200).is_some());
        assert!(
            l.retry_after("::ffff:10.0.0.1".parse().unwrap(), 100)
                .is_some()
        );
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_bounded() {
        let l = FailureLimiter::new(3, 60, 1000);
        for i in 0..100_000u32 {
            l.failure(IpAddr::V4(i.into()), 100);
            assert!(l.tracked() <= 1000);
        }
        for i in 0..100_000u64 {
            l.failure(IpAddr::V6((u128::from(i) << 64).into()), 100);
        }
        assert!(l.tracked() <= 1000);
        // After the window, room for new sources again.
        l.failure("192.0.2.1".parse().unwrap(), 1000);
        assert_eq!(l.tracked(), 1);
    }
}
