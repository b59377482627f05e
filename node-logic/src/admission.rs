//! Who gets a management connection slot, and for how long.
//!
//! The node has a fixed number of TCP sockets on its management port. A
//! hostile client with only a TCP connection must not be able to keep the
//! landlord out, so this table decides, from the clock the caller supplies:
//!
//! - a connection that has not authenticated within [`Limits::handshake_ms`]
//!   is dropped, and pending (unauthenticated) connections are evicted,
//!   oldest first and from the source holding the most, whenever fewer than
//!   [`Limits::spare`] sockets are left listening — so a SYN always finds a
//!   listener and never meets a reset — but never in the round it was
//!   accepted ([`Admission::begin_round`]), so a burst of newcomers cannot
//!   push out a client before its first message could arrive;
//! - one source holds at most [`Limits::pending_per_source`] pending slots;
//! - authenticated sessions end after [`Limits::idle_ms`] without a request;
//!   at most [`Limits::max_sessions`] run at once, of which tenants may hold
//!   [`Limits::tenant_sessions`] (and one lease [`Limits::lease_sessions`]),
//!   so there is always room for the landlord;
//! - when no slot can be freed the newcomer is answered "busy" and closed
//!   after [`Limits::linger_ms`] at most.
//!
//! Pure logic: the hypervisor maps each decision onto smoltcp sockets.

use alloc::vec::Vec;

use mgmt_proto::msg::{LeaseId, Role};

/// The table's limits; [`Limits::NODE`] are the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sockets on the management port.
    pub slots: usize,
    /// Sockets kept listening (or answering busy) by evicting pending ones.
    pub spare: usize,
    /// Unauthenticated connections one source address may hold.
    pub pending_per_source: usize,
    /// Time from accept to an established session.
    pub handshake_ms: u64,
    /// Time an established session may go without a request.
    pub idle_ms: u64,
    /// Time a closing connection may take to go away before it is reset.
    pub linger_ms: u64,
    /// Established sessions at once (all roles).
    pub max_sessions: usize,
    /// Established tenant sessions at once (all leases).
    pub tenant_sessions: usize,
    /// Established sessions of one lease at once.
    pub lease_sessions: usize,
}

impl Limits {
    /// The node's limits.
    pub const NODE: Limits = Limits {
        slots: 48,
        spare: 16,
        pending_per_source: 16,
        handshake_ms: 3_000,
        idle_ms: 60_000,
        linger_ms: 2_000,
        max_sessions: 32,
        tenant_sessions: 20,
        lease_sessions: 8,
    };
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Listening for a connection.
    Listening,
    /// Connected, not yet authenticated.
    Pending {
        /// Peer address.
        source: [u8; 4],
        /// Accept time.
        since: u64,
        /// Accept order, for oldest-first eviction.
        order: u64,
        /// The serving round it was accepted in.
        round: u64,
    },
    /// An established session.
    Session {
        /// Peer address.
        source: [u8; 4],
        /// Its role.
        role: Role,
        /// Last request time.
        last: u64,
    },
    /// Closing (after a refusal, a busy answer or an expiry).
    Closing {
        /// When closing began.
        since: u64,
    },
}

/// The answer to a new connection or a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Serve,
    /// Answer busy and close it; the reason names the limit.
    Busy(&'static str),
}

/// Why the table ends a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Evicted to keep a listener free (or over the per-source limit).
    Evicted,
    /// No session within the handshake deadline.
    HandshakeTimeout,
    /// No request within the idle timeout.
    Idle,
    /// Closing took too long: reset it.
    Linger,
}

impl Drop {
    /// Whether the connection should be reset (it is pending or stuck)
    /// rather than closed gracefully.
    pub fn resets(self) -> bool {
        !matches!(self, Drop::Idle)
    }
}

/// The slot table.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    slots: Vec<Slot>,
    order: u64,
    round: u64,
}

impl Admission {
    /// A table with every slot listening.
    pub fn new(limits: Limits) -> Admission {
        Admission { limits, slots: alloc::vec![Slot::Listening; limits.slots], order: 0, round: 0 }
    }

    /// Starts a serving round: connections accepted before it may be
    /// evicted, the ones accepted during it may not.
    pub fn begin_round(&mut self) {
        self.round = self.round.wrapping_add(1);
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What slot `i` holds (`Listening` past the end).
    pub fn slot(&self, i: usize) -> Slot {
        self.slots.get(i).copied().unwrap_or(Slot::Listening)
    }

    /// Established sessions now.
    pub fn sessions(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Session { .. })).count()
    }

    /// Unauthenticated connections now.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Pending { .. })).count()
    }

    fn listening(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Listening)).count()
    }

    fn set(&mut self, i: usize, s: Slot) {
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = s;
        }
    }

    fn pending_of(&self, source: [u8; 4]) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Pending { source: a, .. } if *a == source)).count()
    }

    /// The oldest pending slot accepted before this round, of `source` if
    /// given, else of the source holding the most such slots; never `except`.
    fn victim(&self, source: Option<[u8; 4]>, except: usize) -> Option<usize> {
        let current = self.round;
        let evictable = |s: &Slot| matches!(s, Slot::Pending { round, .. } if *round != current);
        let source = source.or_else(|| {
            let mut best: Option<([u8; 4], usize)> = None;
            for (i, s) in self.slots.iter().enumerate() {
                if i == except {
                    continue;
                }
                if let Slot::Pending { source, .. } = s {
                    if !evictable(s) {
                        continue;
                    }
                    let n = self.pending_of(*source);
                    if best.is_none_or(|(_, m)| n > m) {
                        best = Some((*source, n));
                    }
                }
            }
            best.map(|(s, _)| s)
        })?;
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != except && evictable(s))
            .filter_map(|(i, s)| match s {
                Slot::Pending { source: a, order, .. } if *a == source => Some((i, *order)),
                _ => None,
            })
            .min_by_key(|(_, order)| *order)
            .map(|(i, _)| i)
    }

    /// A connection arrived on listening slot `i` from `source`. Returns the
    /// verdict for it and the slots to evict (reset) to make room; evicted
    /// slots are `Listening` again on return.
    pub fn connect(&mut self, i: usize, source: [u8; 4], now: u64) -> (Verdict, Vec<usize>) {
        let mut evict = Vec::new();
        if i >= self.slots.len() {
            return (Verdict::Busy("no such slot"), evict);
        }
        self.order = self.order.wrapping_add(1);
        if self.sessions() >= self.limits.max_sessions {
            self.set(i, Slot::Closing { since: now });
            return (Verdict::Busy("every session slot is in use"), evict);
        }
        if self.pending_of(source) >= self.limits.pending_per_source {
            match self.victim(Some(source), i) {
                Some(v) => {
                    self.set(v, Slot::Listening);
                    evict.push(v);
                }
                None => {
                    self.set(i, Slot::Closing { since: now });
                    return (Verdict::Busy("this address has too many connections still authenticating"), evict);
                }
            }
        }
        self.set(i, Slot::Pending { source, since: now, order: self.order, round: self.round });
        while self.listening() < self.limits.spare {
            let Some(v) = self.victim(None, i) else { break };
            self.set(v, Slot::Listening);
            evict.push(v);
        }
        (Verdict::Serve, evict)
    }

    /// Slot `i` authenticated as `role`: a session, unless a session limit
    /// is reached (then busy, and the slot is closing).
    pub fn establish(&mut self, i: usize, role: Role, now: u64) -> Verdict {
        let Some(Slot::Pending { source, .. }) = self.slots.get(i).copied() else {
            return Verdict::Busy("connection is not pending");
        };
        let tenants = |filter: &dyn Fn(LeaseId) -> bool| {
            self.slots.iter().filter(|s| matches!(s, Slot::Session { role: Role::Tenant(l), .. } if filter(*l))).count()
        };
        let verdict = if self.sessions() >= self.limits.max_sessions {
            Verdict::Busy("every session slot is in use")
        } else {
            match role {
                Role::Landlord => Verdict::Serve,
                Role::Tenant(lease) => {
                    if tenants(&|_| true) >= self.limits.tenant_sessions {
                        Verdict::Busy("tenant sessions are at their limit")
                    } else if tenants(&|l| l == lease) >= self.limits.lease_sessions {
                        Verdict::Busy("this lease's sessions are at their limit")
                    } else {
                        Verdict::Serve
                    }
                }
            }
        };
        match verdict {
            Verdict::Serve => self.set(i, Slot::Session { source, role, last: now }),
            Verdict::Busy(_) => self.set(i, Slot::Closing { since: now }),
        }
        verdict
    }

    /// A request arrived on slot `i`: its idle clock restarts.
    pub fn active(&mut self, i: usize, now: u64) {
        if let Some(Slot::Session { last, .. }) = self.slots.get_mut(i) {
            *last = now;
        }
    }

    /// Slot `i` is closing (the session ended or was refused).
    pub fn closing(&mut self, i: usize, now: u64) {
        if !matches!(self.slot(i), Slot::Listening | Slot::Closing { .. }) {
            self.set(i, Slot::Closing { since: now });
        }
    }

    /// Slot `i`'s connection is gone: it listens again.
    pub fn closed(&mut self, i: usize) {
        self.set(i, Slot::Listening);
    }

    /// Connections past a deadline at `now`. Expired pending slots and
    /// stuck closing slots are `Listening` on return (the caller resets
    /// them); idle sessions are `Closing` (the caller closes them).
    pub fn expire(&mut self, now: u64) -> Vec<(usize, Drop)> {
        let l = self.limits;
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let drop = match *s {
                Slot::Pending { since, .. } if now.saturating_sub(since) >= l.handshake_ms => Drop::HandshakeTimeout,
                Slot::Session { last, .. } if now.saturating_sub(last) >= l.idle_ms => Drop::Idle,
                Slot::Closing { since } if now.saturating_sub(since) >= l.linger_ms => Drop::Linger,
                _ => continue,
            };
            *s = if drop.resets() { Slot::Listening } else { Slot::Closing { since: now } };
            out.push((i, drop));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    const HOSTILE: [u8; 4] = [10, 0, 2, 2];
    const OTHER: [u8; 4] = [10, 0, 2, 3];

    fn small() -> Limits {
        Limits {
            slots: 8,
            spare: 2,
            pending_per_source: 4,
            handshake_ms: 100,
            idle_ms: 1000,
            linger_ms: 50,
            max_sessions: 6,
            tenant_sessions: 4,
            lease_sessions: 2,
        }
    }

    /// A connection in a round of its own (so older ones may be evicted).
    fn connect(a: &mut Admission, i: usize, source: [u8; 4], now: u64) -> (Verdict, Vec<usize>) {
        a.begin_round();
        a.connect(i, source, now)
    }

    fn first_listening(a: &Admission) -> usize {
        (0..a.limits().slots).find(|i| a.slot(*i) == Slot::Listening).unwrap()
    }

    #[test]
    fn a_flood_of_pending_connections_always_leaves_listeners() {
        let mut a = Admission::new(small());
        for t in 0..100 {
            let i = first_listening(&a);
            let (v, _) = connect(&mut a, i, HOSTILE, t);
            assert_eq!(v, Verdict::Serve);
            assert!(a.listening() >= 2, "at {t}: {:?}", a.slots);
            assert!(a.pending_of(HOSTILE) <= 4);
        }
    }

    #[test]
    fn the_newest_connection_is_evicted_last() {
        let mut a = Admission::new(small());
        let landlord = first_listening(&a);
        connect(&mut a, landlord, HOSTILE, 0);
        // Three more from the same source fit under the per-source limit.
        for t in 1..4 {
            let i = first_listening(&a);
            connect(&mut a, i, HOSTILE, t);
        }
        assert!(matches!(a.slot(landlord), Slot::Pending { .. }));
        // The fourth pushes out the oldest: the first one.
        let i = first_listening(&a);
        let (_, evicted) = connect(&mut a, i, HOSTILE, 5);
        assert_eq!(evicted, vec![landlord]);
    }

    #[test]
    fn a_connection_is_not_evicted_in_the_round_it_arrived() {
        let mut a = Admission::new(small());
        a.begin_round();
        let mut first = Vec::new();
        for _ in 0..4 {
            let i = first_listening(&a);
            assert_eq!(a.connect(i, HOSTILE, 0).0, Verdict::Serve);
            first.push(i);
        }
        // A fifth from the same source in the same round: busy, no eviction.
        let i = first_listening(&a);
        let (v, evicted) = a.connect(i, HOSTILE, 0);
        assert!(matches!(v, Verdict::Busy(_)), "{v:?}");
        assert!(evicted.is_empty());
        assert!(first.iter().all(|s| matches!(a.slot(*s), Slot::Pending { .. })));
        a.closed(i);
        // In the next round the oldest goes.
        a.begin_round();
        let (v, evicted) = a.connect(i, HOSTILE, 1);
        assert_eq!(v, Verdict::Serve);
        assert_eq!(evicted, vec![first[0]]);
    }

    #[test]
    fn per_source_limit_spares_other_sources() {
        let mut a = Admission::new(small());
        let other = first_listening(&a);
        connect(&mut a, other, OTHER, 0);
        for t in 1..50 {
            let i = first_listening(&a);
            let (_, evicted) = connect(&mut a, i, HOSTILE, t);
            assert!(!evicted.contains(&other), "the other source's connection was evicted at {t}");
        }
        assert!(matches!(a.slot(other), Slot::Pending { source: OTHER, .. }));
    }

    #[test]
    fn sessions_are_never_evicted_and_full_means_busy() {
        let mut a = Admission::new(small());
        for t in 0..6 {
            let i = first_listening(&a);
            assert_eq!(connect(&mut a, i, HOSTILE, t).0, Verdict::Serve);
            assert_eq!(a.establish(i, Role::Landlord, t), Verdict::Serve);
        }
        assert_eq!(a.sessions(), 6);
        let i = first_listening(&a);
        let (v, evicted) = connect(&mut a, i, HOSTILE, 7);
        assert!(matches!(v, Verdict::Busy(_)));
        assert!(evicted.is_empty());
        assert_eq!(a.sessions(), 6);
    }

    #[test]
    fn tenants_leave_room_for_the_landlord() {
        let mut a = Admission::new(small());
        let mut tenant_ok = 0;
        for n in 0..6u32 {
            let i = first_listening(&a);
            connect(&mut a, i, OTHER, u64::from(n));
            if a.establish(i, Role::Tenant(LeaseId(n / 2)), u64::from(n)) == Verdict::Serve {
                tenant_ok += 1;
            } else {
                a.closed(i);
            }
        }
        assert_eq!(tenant_ok, 4, "tenant_sessions caps all leases together");
        let i = first_listening(&a);
        connect(&mut a, i, OTHER, 10);
        assert_eq!(a.establish(i, Role::Landlord, 10), Verdict::Serve);
    }

    #[test]
    fn one_lease_is_capped() {
        let mut a = Admission::new(small());
        let mut ok = 0;
        for t in 0..3 {
            let i = first_listening(&a);
            connect(&mut a, i, OTHER, t);
            if a.establish(i, Role::Tenant(LeaseId(7)), t) == Verdict::Serve {
                ok += 1;
            }
        }
        assert_eq!(ok, 2);
    }

    #[test]
    fn deadlines_expire_at_their_edge() {
        let mut a = Admission::new(small());
        connect(&mut a, 0, HOSTILE, 0);
        connect(&mut a, 1, HOSTILE, 0);
        a.establish(1, Role::Landlord, 0);
        assert!(a.expire(99).is_empty());
        assert_eq!(a.expire(100), vec![(0, Drop::HandshakeTimeout)]);
        assert_eq!(a.slot(0), Slot::Listening);
        a.active(1, 500);
        assert!(a.expire(1499).is_empty());
        assert_eq!(a.expire(1500), vec![(1, Drop::Idle)]);
        assert_eq!(a.slot(1), Slot::Closing { since: 1500 });
        assert!(a.expire(1549).is_empty());
        assert_eq!(a.expire(1550), vec![(1, Drop::Linger)]);
        assert_eq!(a.slot(1), Slot::Listening);
    }

    #[test]
    fn establish_needs_a_pending_slot() {
        let mut a = Admission::new(small());
        assert!(matches!(a.establish(0, Role::Landlord, 0), Verdict::Busy(_)));
        assert!(matches!(connect(&mut a, 99, HOSTILE, 0).0, Verdict::Busy(_)));
    }

    proptest! {
        /// Whatever happens, sessions stay within their limits, and after a
        /// connect a source holds no more pending slots than allowed and
        /// `spare` slots listen unless nothing is left to evict.
        #[test]
        fn limits_hold(ops in proptest::collection::vec((0u8..5, 0usize..8, 0u8..3, 0u32..3), 1..300)) {
            let l = small();
            let mut a = Admission::new(l);
            let mut now = 0u64;
            for (op, slot, src, lease) in ops {
                now += 7;
                let source = [10, 0, 0, src];
                match op {
                    0 => {
                        if a.slot(slot) == Slot::Listening {
                            let (v, _) = connect(&mut a, slot, source, now);
                            prop_assert!(a.pending_of(source) <= l.pending_per_source);
                            if v == Verdict::Serve {
                                prop_assert!(a.listening() >= l.spare || a.pending() <= 1);
                            }
                        }
                    }
                    1 => {
                        let role = if lease == 0 { Role::Landlord } else { Role::Tenant(LeaseId(lease)) };
                        a.establish(slot, role, now);
                    }
                    2 => a.closed(slot),
                    3 => { a.expire(now); }
                    _ => a.closing(slot, now),
                }
                prop_assert!(a.sessions() <= l.max_sessions);
                let tenants = a.slots.iter().filter(|s| matches!(s, Slot::Session { role: Role::Tenant(_), .. })).count();
                prop_assert!(tenants <= l.tenant_sessions);
            }
        }
    }
}
