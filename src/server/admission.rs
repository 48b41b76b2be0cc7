//! Who holds the server's connection slots, and who gives way when they
//! are full.
//!
//! Slots are limited in all (`max_connections`) and per source
//! (`max_connections_per_source`, an IPv4 address or an IPv6 /64). A full
//! table that simply refused newcomers would let anyone who shares a
//! client's address (a local user on the client's host, a neighbour behind
//! the same NAT) lock that client out with idle sockets, and no
//! authentication is needed to open a socket. So a full table does not
//! refuse a newcomer while it holds a connection that has proven nothing:
//! the connection that has waited longest without a request in progress
//! (or has sat in one request longer than [`GRACE`]) is closed to make
//! room. At the source's share, that is the source's own oldest. At the
//! whole table's cap, it comes from the source holding the most, and only
//! while that source holds more than the newcomer's would: a fleet
//! restarting, one connection per host, never pushes itself out (those
//! wait in the listen queue, as they always did), while a few hosts
//! holding many slots each give them up one by one. A genuine client's
//! request arrives in one burst and is answered in milliseconds, so its
//! connection is the newest when it needs the slot; to push it out, a flood
//! would have to open a whole source's share of connections within those
//! milliseconds, and every one of them is pushed out just as fast.
//!
//! A connection on which a `POST` was answered with success has carried a
//! request a registered client signed (every `POST` route is a secrets
//! route, and only a valid signature gets a 2xx there). It never gives way;
//! its own idle timeout closes it. When every slot is held by such
//! connections, or by requests younger than [`GRACE`], a newcomer waits in
//! the kernel's listen queue (at `max_connections`) or is closed (at its
//! source's share), as before.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ratelimit::{Source, source};

/// How long a request in progress is protected from giving way. A request
/// still unfinished after this is a slow sender, not a genuine client.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// The connection table: every open connection and its standing.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    table: Mutex<Table>,
    /// Signalled when a connection closes or may now give way.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

#[derive(Debug)]
struct Entry {
    source: Source,
    standing: Standing,
    /// Told when this connection must close to make room.
    shed: Arc<Notify>,
}

#[derive(Debug, Clone, Copy)]
enum Standing {
    /// No request in progress since this instant (opened, or answered).
    Waiting(Instant),
    /// A request head arrived at this instant and is not answered yet.
    InRequest(Instant),
    /// A registered client's request was served on it.
    Verified,
}

impl Standing {
    /// When the connection can give way at `now`, the instant that ranks
    /// it (oldest first); `None` when it cannot.
    fn yields_since(self, now: Instant) -> Option<Instant> {
        match self {
            Standing::Waiting(since) => Some(since),
            Standing::InRequest(since) if now.duration_since(since) >= GRACE => Some(since),
            Standing::InRequest(_) | Standing::Verified => None,
        }
    }
}

/// One admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    id: u64,
    shed: Arc<Notify>,
}

/// What [`Admission::admit`] did.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// The connection has a slot; `shed` connections were closed for it.
    Yes { slot: Slot, shed: usize },
    /// Its source has its whole share in connections that cannot give way.
    SourceFull,
    /// Every slot is held by connections that cannot give way.
    Full,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once a new connection could be admitted under `limit`
    /// connections in all: there is a free slot, or a connection that can
    /// give way. Until then, new connections wait in the listen queue.
    pub(crate) async fn room(&self, limit: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let table = self.lock();
                // A newcomer from a source holding none can take a slot
                // from a source holding two or more.
                if table.conns.len() < limit || table.victim(None, 1, Instant::now()).is_some() {
                    return;
                }
            }
            // A request in progress may pass GRACE without any signal.
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(GRACE / 4) => {}
            }
        }
    }

    /// Returns when a connection closed or may now give way, or after a
    /// while (a request in progress passes GRACE without a signal).
    pub(crate) async fn changed(&self) {
        tokio::select! {
            () = self.changed.notified() => {}
            () = tokio::time::sleep(GRACE / 4) => {}
        }
    }

    /// Admits a connection from `ip`, closing connections that can give way
    /// when its source's share (`per_source`) or the whole table (`limit`)
    /// is full.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limit: usize,
        per_source: usize,
        now: Instant,
    ) -> Admitted {
        let source = source(ip);
        let mut table = self.lock();
        let mut shed = 0;
        while table.per_source.get(&source).copied().unwrap_or(0) >= per_source {
            let Some(victim) = table.victim(Some(source), 0, now) else {
                return Admitted::SourceFull;
            };
            table.shed(victim);
            shed += 1;
        }
        // The whole table is full: a newcomer takes a slot only from a
        // source that, after the swap, still holds more than the
        // newcomer's. Connections from many addresses at once (a fleet
        // restarting, each host one connection) therefore never push each
        // other out: they wait in the listen queue, as they always did;
        // only a source holding more than its share gives way.
        if table.conns.len() >= limit {
            let mine = table.per_source.get(&source).copied().unwrap_or(0);
            let Some(victim) = table.victim(None, mine + 1, now) else {
                return Admitted::Full;
            };
            table.shed(victim);
            shed += 1;
        }
        let id = table.next_id;
        table.next_id += 1;
        let notify = Arc::new(Notify::new());
        table.conns.insert(
            id,
            Entry {
                source,
                standing: Standing::Waiting(now),
                shed: Arc::clone(&notify),
            },
        );
        *table.per_source.entry(source).or_insert(0) += 1;
        Admitted::Yes {
            slot: Slot {
                admission: Arc::clone(self),
                id,
                shed: notify,
            },
            shed,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().conns.len()
    }
}

impl Table {
    /// The connection that gives way next: within `source` when given,
    /// otherwise within the source holding the most connections (so a
    /// flood pushes out its own first), and only from a source holding more
    /// than `more_than`. The oldest one that can give way.
    fn victim(&self, source: Option<Source>, more_than: usize, now: Instant) -> Option<u64> {
        let count = |s: &Source| self.per_source.get(s).copied().unwrap_or(0);
        self.conns
            .iter()
            .filter_map(|(id, e)| Some((*id, e.source, e.standing.yields_since(now)?)))
            .filter(|(_, s, _)| source.is_none_or(|want| *s == want) && count(s) > more_than)
            .max_by(|a, b| {
                count(&a.1)
                    .cmp(&count(&b.1))
                    // Older first: the earlier instant ranks higher.
                    .then(b.2.cmp(&a.2))
                    .then(b.0.cmp(&a.0))
            })
            .map(|(id, _, _)| id)
    }

    /// Removes a connection from the table.
    fn take(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&entry.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// Removes a connection to make room, and tells its task to close it.
    fn shed(&mut self, id: u64) {
        if let Some(entry) = self.take(id) {
            // notify_one keeps the permit if the task is not waiting yet.
            entry.shed.notify_one();
        }
    }
}

impl Slot {
    fn set(&self, standing: Standing) {
        let mut table = self.admission.lock();
        if let Some(entry) = table.conns.get_mut(&self.id)
            && !matches!(entry.standing, Standing::Verified)
        {
            entry.standing = standing;
        }
    }

    /// A request head arrived on this connection. (No one is woken: a
    /// connection in a request can give way only later, after GRACE, which
    /// `room` waits for by itself.)
    pub(crate) fn request_started(&self) {
        self.set(Standing::InRequest(Instant::now()));
    }

    /// The request was answered; `verified` when a registered client's
    /// request was served (a `POST` answered with a 2xx).
    pub(crate) fn request_ended(&self, verified: bool) {
        self.set(if verified {
            Standing::Verified
        } else {
            Standing::Waiting(Instant::now())
        });
        // It may now give way to a newcomer waiting at the cap.
        self.admission.changed.notify_waiters();
    }

    /// Completes when this connection must close to make room for another.
    pub(crate) async fn shed(&self) {
        self.shed.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().take(self.id);
        self.admission.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn slot(a: Admitted) -> Slot {
        match a {
            Admitted::Yes { slot, .. } => slot,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn a_full_source_sheds_its_oldest_idle_connection() {
        let table = Arc::new(Admission::default());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let first = slot(table.admit(a, 100, 2, t0));
        let _second = slot(table.admit(a, 100, 2, t0 + Duration::from_millis(1)));
        let third = table.admit(a, 100, 2, t0 + Duration::from_millis(2));
        assert!(matches!(third, Admitted::Yes { shed: 1, .. }), "{third:?}");
        assert_eq!(table.open(), 2);
        // The first was the one told to close, and it no longer counts.
        assert!(!table.lock().conns.contains_key(&first.id));
        // Another source is not touched.
        let _other = slot(table.admit(ip("10.0.0.2"), 100, 2, t0));
        assert_eq!(table.open(), 3);
    }

    #[test]
    fn verified_connections_and_young_requests_never_give_way() {
        let table = Arc::new(Admission::default());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let verified = slot(table.admit(a, 100, 2, t0));
        verified.request_started();
        verified.request_ended(true);
        let busy = slot(table.admit(a, 100, 2, t0));
        busy.request_started();
        let now = Instant::now();
        assert!(matches!(table.admit(a, 100, 2, now), Admitted::SourceFull));
        // A request still unfinished after GRACE is a slow sender.
        let later = now + GRACE + Duration::from_millis(1);
        assert!(matches!(
            table.admit(a, 100, 2, later),
            Admitted::Yes { shed: 1, .. }
        ));
        assert!(table.lock().conns.contains_key(&verified.id));
        assert!(!table.lock().conns.contains_key(&busy.id));
    }

    #[test]
    fn at_the_cap_the_largest_source_gives_way_first() {
        let table = Arc::new(Admission::default());
        let t0 = Instant::now();
        let small = slot(table.admit(ip("10.0.0.1"), 3, 10, t0));
        let _big1 = slot(table.admit(ip("10.0.0.9"), 3, 10, t0 + Duration::from_millis(1)));
        let _big2 = slot(table.admit(ip("10.0.0.9"), 3, 10, t0 + Duration::from_millis(2)));
        let _new = slot(table.admit(ip("10.0.0.2"), 3, 10, t0 + Duration::from_millis(3)));
        assert!(
            table.lock().conns.contains_key(&small.id),
            "the flood's own connection goes first"
        );
        assert_eq!(table.open(), 3);
        // Now every source holds one: a newcomer from a fourth pushes out
        // nobody (a fleet restarting, one connection per host, waits in
        // the listen queue as it always did).
        assert!(matches!(
            table.admit(ip("10.0.0.3"), 3, 10, t0 + Duration::from_millis(4)),
            Admitted::Full
        ));
        // Nor does one from a source already holding one.
        assert!(matches!(
            table.admit(ip("10.0.0.9"), 3, 10, t0 + Duration::from_millis(4)),
            Admitted::Full
        ));
    }

    #[test]
    fn a_source_gives_way_only_while_it_holds_more_than_the_newcomers() {
        let table = Arc::new(Admission::default());
        let t0 = Instant::now();
        let flood: Vec<Slot> = (0..4)
            .map(|i| slot(table.admit(ip("10.0.0.9"), 4, 10, t0 + Duration::from_millis(i))))
            .collect();
        // 4 against 0, then 3 against 1: each newcomer takes one.
        let _a = slot(table.admit(ip("10.0.0.1"), 4, 10, t0 + Duration::from_millis(10)));
        let _b = slot(table.admit(ip("10.0.0.1"), 4, 10, t0 + Duration::from_millis(11)));
        // 2 against 2: no more.
        assert!(matches!(
            table.admit(ip("10.0.0.1"), 4, 10, t0 + Duration::from_millis(12)),
            Admitted::Full
        ));
        // The flood's two oldest went.
        let left: Vec<bool> = flood
            .iter()
            .map(|f| table.lock().conns.contains_key(&f.id))
            .collect();
        assert_eq!(left, [false, false, true, true]);
        // Verified connections never give way, whatever their source holds.
        for f in flood[2..].iter().chain([&_a, &_b]) {
            f.request_ended(true);
        }
        assert!(matches!(
            table.admit(ip("10.0.0.2"), 4, 10, t0 + Duration::from_millis(13)),
            Admitted::Full
        ));
    }

    #[test]
    fn a_lower_limit_takes_hold_as_connections_end() {
        let table = Arc::new(Admission::default());
        let t0 = Instant::now();
        let mut held: Vec<Slot> = (0..5)
            .map(|i| slot(table.admit(ip(&format!("10.0.0.{i}")), 10, 10, t0)))
            .collect();
        // Lowered to 2 with 5 open, one per source: newcomers wait.
        assert!(matches!(
            table.admit(ip("10.0.1.1"), 2, 10, t0),
            Admitted::Full
        ));
        held.truncate(1);
        assert_eq!(table.open(), 1);
        let _new = slot(table.admit(ip("10.0.1.1"), 2, 10, t0));
        assert_eq!(table.open(), 2);
    }
}
