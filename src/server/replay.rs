//! The replay cache: nonces seen recently, bounded in memory.
//!
//! A nonce only needs remembering while its timestamp could still pass the
//! clock check, i.e. until `timestamp + clock_skew`. When the cache is full
//! of live nonces the server refuses new requests (503) rather than forget
//! one: forgetting would let a captured request be replayed.

use std::collections::HashMap;

use crate::protocol::NONCE_LEN;

/// The outcome of remembering a nonce.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: accepted and remembered.
    New,
    /// Already seen within its window.
    Replay,
    /// The cache is full of live nonces.
    Full,
}

#[derive(Debug)]
pub struct ReplayCache {
    entries: HashMap<[u8; NONCE_LEN], i64>,
    capacity: usize,
    next_sweep: i64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            next_sweep: 0,
        }
    }

    /// Remembers `nonce` until `expires` (unix seconds), given the time `now`.
    pub fn check_and_insert(&mut self, nonce: [u8; NONCE_LEN], expires: i64, now: i64) -> Seen {
        if now >= self.next_sweep || self.entries.len() >= self.capacity {
            self.entries.retain(|_, exp| *exp >= now);
            self.next_sweep = now + 10;
        }
        match self.entries.get(&nonce) {
            Some(exp) if *exp >= now => return Seen::Replay,
            _ => {}
        }
        if self.entries.len() >= self.capacity {
            return Seen::Full;
        }
        self.entries.insert(nonce, expires);
        Seen::New
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_caught_and_memory_is_bounded() {
        let mut c = ReplayCache::new(1000);
        assert_eq!(c.check_and_insert([1; 16], 130, 100), Seen::New);
        assert_eq!(c.check_and_insert([1; 16], 130, 101), Seen::Replay);
        // After expiry the nonce is forgotten (its timestamp can no longer pass).
        assert_eq!(c.check_and_insert([1; 16], 170, 140), Seen::New);
        // A flood of distinct nonces never grows the cache past capacity.
        let mut full = 0;
        for i in 0..5000u32 {
            let mut n = [0u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            n[15] = 9;
            if c.check_and_insert(n, 200, 141) == Seen::Full {
                full += 1;
            }
            assert!(c.len() <= 1000);
        }
        assert_eq!(full, 5000 - 999);
        // Once those expire, room returns.
        assert_eq!(c.check_and_insert([2; 16], 300, 201), Seen::New);
        assert_eq!(c.len(), 1);
    }
}
