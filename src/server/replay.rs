//! The replay cache: nonces seen recently, bounded in memory.
//!
//! A nonce only needs remembering while its timestamp could still pass the
//! clock check, i.e. until `timestamp + clock_skew`, as long as the clock
//! only moves forward. A clock can jump: one an hour ahead forgets every
//! nonce at its next sweep, and once it is set right the requests answered
//! just before are within the window again. So the cache also remembers
//! the latest expiry it ever forgot, and a request whose own expiry is not
//! later than that is `Unknowable` (refused, the client retries with a new
//! request) instead of new: no captured request is answered twice,
//! whichever way the clock went. With a clock that only moves forward such
//! a request fails the clock check anyway, so nothing else changes. When the cache is full
//! of live nonces the server refuses new requests (503) rather than forget
//! one: forgetting would let a captured request be replayed.
//!
//! Nonces are kept per client (a client that sees another's traffic cannot
//! spend that client's nonce first), and each registered client has a
//! guaranteed share: half the capacity is split evenly among the clients,
//! the other half goes to whoever needs it. A client that floods the cache
//! with signed junk fills its share and the common half, then gets 503
//! alone; every other client still has its guaranteed room.

use std::collections::HashMap;

use crate::protocol::NONCE_LEN;

/// The outcome of remembering a nonce.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: accepted and remembered.
    New,
    /// Already seen within its window.
    Replay,
    /// The cache is full of live nonces.
    Full,
    /// Stamped before this server could have remembered its nonce (before
    /// it started, or in a window a reload widened): refused, because a
    /// copy of it may already have been answered. Clients retry with a new
    /// request.
    Unknowable,
}

#[derive(Debug)]
pub(crate) struct ReplayCache {
    entries: HashMap<(Box<str>, [u8; NONCE_LEN]), i64>,
    /// Live entries per client.
    used: HashMap<Box<str>, usize>,
    capacity: usize,
    next_sweep: i64,
    /// The latest expiry of a nonce this cache forgot.
    forgotten: i64,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            used: HashMap::new(),
            capacity,
            next_sweep: 0,
            forgotten: i64::MIN,
        }
    }

    /// Keeps every remembered nonce `by` seconds longer (a reload widened
    /// the clock window by that much).
    pub(crate) fn extend(&mut self, by: i64) {
        for expires in self.entries.values_mut() {
            *expires = expires.saturating_add(by);
        }
        // A forgotten nonce would have been kept that much longer too.
        self.forgotten = self.forgotten.saturating_add(by);
    }

    /// Remembers `client`'s `nonce` until `expires` (unix seconds), given
    /// the time `now` and the number of registered `clients`.
    pub(crate) fn check_and_insert(
        &mut self,
        client: &str,
        nonce: [u8; NONCE_LEN],
        expires: i64,
        now: i64,
        clients: usize,
    ) -> Seen {
        if now >= self.next_sweep || self.entries.len() >= self.capacity {
            let forgotten = &mut self.forgotten;
            self.entries.retain(|_, exp| {
                let keep = *exp >= now;
                if !keep {
                    *forgotten = (*forgotten).max(*exp);
                }
                keep
            });
            self.used.clear();
            for (c, _) in self.entries.keys() {
                *self.used.entry(c.clone()).or_default() += 1;
            }
            self.next_sweep = now.saturating_add(10);
        }
        let key = (Box::<str>::from(client), nonce);
        match self.entries.get(&key) {
            Some(exp) if *exp >= now => return Seen::Replay,
            _ => {}
        }
        // Its nonce may be one this cache forgot (the clock jumped back).
        if expires <= self.forgotten {
            return Seen::Unknowable;
        }
        let clients = clients.max(1);
        let guarantee = self.capacity / (2 * clients);
        let used = self.used.get(client).copied().unwrap_or(0);
        let room = if used < guarantee {
            // Within its share: the room was kept for it.
            self.entries.len() < self.capacity
        } else {
            // Beyond it: only if every client's unused share stays free.
            let within: usize = self.used.values().map(|u| (*u).min(guarantee)).sum();
            let reserved = (clients * guarantee).saturating_sub(within);
            self.entries.len() + 1 + reserved <= self.capacity
        };
        if !room {
            return Seen::Full;
        }
        *self.used.entry(key.0.clone()).or_default() += 1;
        self.entries.insert(key, expires);
        Seen::New
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_caught_and_memory_is_bounded() {
        let mut c = ReplayCache::new(1000);
        assert_eq!(c.check_and_insert("a", [1; 16], 130, 100, 1), Seen::New);
        assert_eq!(c.check_and_insert("a", [1; 16], 130, 101, 1), Seen::Replay);
        // After expiry the nonce is forgotten (its timestamp can no longer pass).
        assert_eq!(c.check_and_insert("a", [1; 16], 170, 140, 1), Seen::New);
        // A flood of distinct nonces never grows the cache past capacity.
        let mut full = 0;
        for i in 0..5000u32 {
            let mut n = [0u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            n[15] = 9;
            if c.check_and_insert("a", n, 200, 141, 1) == Seen::Full {
                full += 1;
            }
            assert!(c.len() <= 1000);
        }
        assert_eq!(full, 5000 - 999);
        // Once those expire, room returns.
        assert_eq!(c.check_and_insert("a", [2; 16], 300, 201, 1), Seen::New);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_clock_that_jumps_either_way_never_lets_a_replay_through() {
        let mut c = ReplayCache::new(1000);
        // Answered at 100 (window 30 s), then the clock jumps an hour ahead:
        // the sweep there forgets the nonce.
        assert_eq!(c.check_and_insert("a", [1; 16], 130, 100, 1), Seen::New);
        assert_eq!(c.check_and_insert("a", [2; 16], 3730, 3700, 1), Seen::New);
        assert_eq!(c.len(), 1);
        // Set right again: the captured request is within the window, and
        // is not taken as new; a new request is.
        assert_eq!(
            c.check_and_insert("a", [1; 16], 130, 105, 1),
            Seen::Unknowable
        );
        assert_eq!(c.check_and_insert("a", [3; 16], 136, 106, 1), Seen::New);
        // The clock jumps back an hour from the right time: what was
        // answered an hour ago, and forgotten since, is not new either.
        let mut c = ReplayCache::new(1000);
        assert_eq!(c.check_and_insert("a", [4; 16], 130, 100, 1), Seen::New);
        assert_eq!(c.check_and_insert("a", [5; 16], 3730, 3700, 1), Seen::New);
        assert_eq!(
            c.check_and_insert("a", [4; 16], 130, 101, 1),
            Seen::Unknowable
        );
        // A reload that widens the window widens the forgotten line too.
        c.extend(60);
        assert_eq!(
            c.check_and_insert("a", [6; 16], 189, 150, 1),
            Seen::Unknowable
        );
        assert_eq!(c.check_and_insert("a", [6; 16], 191, 161, 1), Seen::New);
    }

    #[test]
    fn nonces_belong_to_their_client() {
        let mut c = ReplayCache::new(1000);
        // b spends a nonce it saw in a's traffic: a's request still passes.
        assert_eq!(c.check_and_insert("b", [7; 16], 130, 100, 2), Seen::New);
        assert_eq!(c.check_and_insert("a", [7; 16], 130, 100, 2), Seen::New);
        assert_eq!(c.check_and_insert("a", [7; 16], 130, 100, 2), Seen::Replay);
    }

    #[test]
    fn a_flooding_client_is_refused_alone() {
        // 1,000 entries and 4 clients: 125 guaranteed to each, 500 common.
        let mut c = ReplayCache::new(1000);
        let nonce = |i: u32| {
            let mut n = [0u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            n
        };
        let mut accepted = 0;
        for i in 0..1010 {
            if c.check_and_insert("flood", nonce(i), 200, 100, 4) == Seen::New {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 625, "its share and the common half, no more");
        for client in ["a", "b", "c"] {
            for i in 0..125 {
                assert_eq!(
                    c.check_and_insert(client, nonce(i), 200, 100, 4),
                    Seen::New,
                    "{client} {i}"
                );
            }
        }
        assert_eq!(c.len(), 1000);
    }
}
