//! What a source remembers from one round to the next, for every source
//! type: the requests it made (counted the way the service it calls counts
//! them), its request budget, a rate limit the service announced, when it
//! is next due, and, for sources that can read only what changed, what it
//! last read (1Password: each item's version and values).
//!
//! A source asks [`SourceMemory::spend`] before every request. The answer
//! is no when the service said to wait (a rate limit) or when the request
//! would take the source past `reads_per_hour` or `reads_per_day`; the
//! source then stops and keeps serving its last good values. So a
//! rate-limited or over-budget source costs nothing however often the
//! refresh loop retries.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::secret::SecretValue;

/// One hour and one day, the two windows 1Password counts in.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// A source's request limits (`reads_per_hour`, `reads_per_day`); `None`
/// is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Requests allowed per rolling hour.
    pub per_hour: Option<u32>,
    /// Requests allowed per rolling day.
    pub per_day: Option<u32>,
}

/// Why a request was not made, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The service said to wait (until the time it named, or its window).
    RateLimited { until: SystemTime },
    /// The request would spend past the budget; room frees at `until`.
    OverBudget {
        until: SystemTime,
        window: &'static str,
        limit: u32,
    },
}

impl Hold {
    /// The error of a source that did not make its request: it waits, and
    /// serves its last good values meanwhile.
    pub(crate) fn into_error(self) -> super::LoadError {
        match self {
            Hold::RateLimited { until } => super::LoadError::RateLimited {
                until,
                detail: "the service rate-limited this source; no request is made until then"
                    .into(),
            },
            Hold::OverBudget {
                until,
                window,
                limit,
            } => super::LoadError::OverBudget {
                until,
                detail: format!(
                    "the next request would pass {window} = {limit}; the last good values are served until room frees (raise {window}, or set it to 0 for no limit)"
                ),
            },
        }
    }
}

/// One item as last read: its version, title and the fields with a value.
#[derive(Debug, Clone)]
pub(crate) struct CachedItem {
    /// The service's version of the item (1Password's `version`, with
    /// `updated_at` as a tie-breaker for services that do not bump it).
    pub version: (u64, String),
    pub title: String,
    pub fields: Vec<CachedField>,
}

/// One field of an item, with the section it is in.
#[derive(Debug, Clone)]
pub(crate) struct CachedField {
    pub id: String,
    pub label: String,
    /// The section's id and label (empty when the field is in none).
    pub section_id: String,
    pub section_label: String,
    pub value: SecretValue,
}

/// Everything a source remembers between rounds.
#[derive(Debug, Default)]
pub struct SourceMemory {
    /// (when, cost) of each request in the last day.
    log: VecDeque<(SystemTime, u32)>,
    /// Requests since this memory began (the metrics counter).
    pub(crate) requests_total: u64,
    /// The rate limit the service announced, if it is still running.
    pub(crate) rate_limited_until: Option<SystemTime>,
    /// The hold last logged, so that a wait is logged once, not per retry.
    announced: Option<SystemTime>,
    /// Not loaded again before this (pacing inside `reads_per_day`).
    pub(crate) next_due: Option<Instant>,
    /// How often the source is read, when pacing stretched it.
    pub(crate) paced_every: Option<Duration>,
    /// What the source last read, by item id.
    pub(crate) items: BTreeMap<String, CachedItem>,
    /// A vault name resolved to its id once, not every round.
    pub(crate) vault_id: Option<String>,
}

impl SourceMemory {
    /// Requests (as the service counts them) in the last `window`.
    pub fn spent(&self, now: SystemTime, window: Duration) -> u32 {
        self.log
            .iter()
            .filter(|(t, _)| now.duration_since(*t).unwrap_or_default() < window)
            .map(|(_, c)| *c)
            .sum()
    }

    /// How often the source is read at most, when its day's budget paces
    /// it (set after each good round).
    pub fn paced_every(&self) -> Option<Duration> {
        self.paced_every
    }

    /// Whether a request of `cost` may be made now under `budget`; records
    /// it when it may. Refuses while a rate limit runs.
    pub(crate) fn spend(&mut self, budget: Budget, cost: u32, now: SystemTime) -> Result<(), Hold> {
        if let Some(until) = self.rate_limited_until {
            if now < until {
                return Err(Hold::RateLimited { until });
            }
            self.rate_limited_until = None;
        }
        while self
            .log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() >= DAY)
        {
            self.log.pop_front();
        }
        for (window, limit, name) in [
            (HOUR, budget.per_hour, "reads_per_hour"),
            (DAY, budget.per_day, "reads_per_day"),
        ] {
            let Some(limit) = limit else { continue };
            let spent = self.spent(now, window);
            if spent + cost > limit {
                return Err(Hold::OverBudget {
                    until: self.frees(now, window, spent + cost - limit),
                    window: name,
                    limit,
                });
            }
        }
        self.log.push_back((now, cost));
        self.requests_total += u64::from(cost);
        Ok(())
    }

    /// When at least `needed` of the requests inside `window` will have left it.
    fn frees(&self, now: SystemTime, window: Duration, needed: u32) -> SystemTime {
        let mut freed = 0;
        for (t, c) in &self.log {
            if now.duration_since(*t).unwrap_or_default() >= window {
                continue;
            }
            freed += c;
            if freed >= needed {
                return *t + window;
            }
        }
        now + window
    }

    /// Whether `hold` is news (to be logged at warn) or the same wait as
    /// the one already logged.
    pub(crate) fn announce(&mut self, until: SystemTime) -> bool {
        let news = self.announced != Some(until);
        self.announced = Some(until);
        news
    }

    /// What `/readyz` shows of this memory, as of `now`.
    pub(crate) fn usage(&self, now: SystemTime) -> Usage {
        Usage {
            requests_total: self.requests_total,
            last_hour: self.spent(now, HOUR),
            last_day: self.spent(now, DAY),
            rate_limited_until: self.rate_limited_until.filter(|u| *u > now),
            paced_every: self.paced_every,
        }
    }
}

/// A source's requests and waits, as of the end of its last round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Requests made since start.
    pub requests_total: u64,
    /// Requests in the last hour.
    pub last_hour: u32,
    /// Requests in the last day.
    pub last_day: u32,
    /// When a rate limit the service announced ends.
    pub rate_limited_until: Option<SystemTime>,
    /// The spacing of requests while the budget is tight.
    pub paced_every: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_per_hour_and_per_day_and_says_when_room_frees() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = SourceMemory::default();
        let budget = Budget {
            per_hour: Some(5),
            per_day: Some(7),
        };
        m.spend(budget, 3, t0).unwrap();
        m.spend(budget, 2, t0 + Duration::from_secs(60)).unwrap();
        // The hour is full: room frees when the first request leaves it.
        assert_eq!(
            m.spend(budget, 1, t0 + Duration::from_secs(120)),
            Err(Hold::OverBudget {
                until: t0 + HOUR,
                window: "reads_per_hour",
                limit: 5
            })
        );
        // An hour later the hour has room, the day does not past 7.
        m.spend(budget, 2, t0 + HOUR + Duration::from_secs(61))
            .unwrap();
        assert!(matches!(
            m.spend(budget, 1, t0 + HOUR + Duration::from_secs(62)),
            Err(Hold::OverBudget {
                window: "reads_per_day",
                ..
            })
        ));
        assert_eq!(m.requests_total, 7);
        assert_eq!(m.spent(t0 + HOUR + Duration::from_secs(62), DAY), 7);
    }

    #[test]
    fn a_rate_limit_refuses_every_request_until_it_ends() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = SourceMemory {
            rate_limited_until: Some(t0 + Duration::from_secs(60)),
            ..Default::default()
        };
        let free = Budget::default();
        for s in 0..60 {
            assert!(matches!(
                m.spend(free, 1, t0 + Duration::from_secs(s)),
                Err(Hold::RateLimited { .. })
            ));
        }
        m.spend(free, 1, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(m.requests_total, 1);
    }
}
