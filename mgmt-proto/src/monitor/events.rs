//! The node's event log: a bounded ring that consoles read from a sequence
//! number, so a console that reconnects resumes where it stopped and a
//! console that stays away too long is told how many events it lost.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use super::{visible_to, EventKind, MonitorEvent, Scope};
use crate::msg::Role;

/// Events kept by the node; older ones are dropped first.
pub const EVENT_LOG_CAPACITY: usize = 1024;

/// Longest event text kept (longer texts are cut, marked with `…`).
pub const MAX_EVENT_TEXT: usize = 256;

/// The bounded event log.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: VecDeque<MonitorEvent>,
    capacity: usize,
    /// The sequence number the next event gets (starts at 1).
    next_seq: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(EVENT_LOG_CAPACITY)
    }
}

/// What [`EventLog::read`] found for one reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Visible events, oldest first.
    pub events: Vec<MonitorEvent>,
    /// Events at or after the reader's position that the log no longer holds.
    pub lost: u64,
    /// Where this reader continues.
    pub next_seq: u64,
}

impl EventLog {
    /// A log holding at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> EventLog {
        EventLog { events: VecDeque::new(), capacity: capacity.max(1), next_seq: 1 }
    }

    /// Records an event; returns its sequence number.
    pub fn record(&mut self, time_ms: u64, scope: Scope, kind: EventKind, text: &str) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(MonitorEvent { seq, time_ms, scope, kind, text: clip(text) });
        seq
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number still held (`next_seq` when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Up to `max` events visible to `role` from position `from`. A position
    /// past the end reads nothing and stays where it is clamped to.
    pub fn read(&self, from: u64, role: Role, max: usize) -> Read {
        let from = from.clamp(1, self.next_seq);
        let oldest = self.oldest_seq();
        let lost = oldest.saturating_sub(from);
        let start = from.max(oldest);
        let mut events = Vec::new();
        let mut next_seq = start;
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        for e in self.events.iter().skip(skip) {
            if events.len() >= max {
                break;
            }
            next_seq = e.seq + 1;
            if visible_to(&e.scope, role) {
                events.push(e.clone());
            }
        }
        Read { events, lost, next_seq }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the log holds nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_EVENT_TEXT {
        return String::from(text);
    }
    let mut end = MAX_EVENT_TEXT - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = String::from(text.get(..end).unwrap_or(""));
    s.push('…');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::msg::{LeaseId, VmId};
    use proptest::prelude::*;

    fn vm(lease: u32) -> Scope {
        Scope::Vm { vm: VmId(lease * 10), lease: LeaseId(lease) }
    }

    #[test]
    fn resume_and_loss() {
        let mut log = EventLog::new(4);
        for i in 0..6u64 {
            log.record(i, vm(1), EventKind::VmStarted, "x");
        }
        // Events 1 and 2 were dropped.
        let r = log.read(1, Role::Landlord, 10);
        assert_eq!(r.lost, 2);
        assert_eq!(r.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert_eq!(r.next_seq, 7);
        let r = log.read(5, Role::Landlord, 1);
        assert_eq!((r.lost, r.events.len(), r.next_seq), (0, 1, 6));
        let r = log.read(99, Role::Landlord, 10);
        assert_eq!((r.lost, r.events.len(), r.next_seq), (0, 0, 7));
    }

    #[test]
    fn tenants_see_only_their_own() {
        let mut log = EventLog::default();
        log.record(0, Scope::Node, EventKind::ProbeFailed(super::super::Probe::Disk), "disk");
        log.record(0, vm(1), EventKind::VmStarted, "a");
        log.record(0, Scope::Guest { vm: VmId(20), lease: LeaseId(2) }, EventKind::AgentHung, "b");
        log.record(0, Scope::Tenant(LeaseId(1)), EventKind::VmStarted, "c");
        let t1 = log.read(1, Role::Tenant(LeaseId(1)), 10);
        assert_eq!(t1.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        let t2 = log.read(1, Role::Tenant(LeaseId(2)), 10);
        assert_eq!(t2.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["b"]);
        let l = log.read(1, Role::Landlord, 10);
        assert_eq!(l.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["disk", "a"]);
        assert_eq!(t1.next_seq, 5);
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let mut log = EventLog::default();
        let text = "é".repeat(400);
        log.record(0, Scope::Node, EventKind::VmStarted, &text);
        let e = &log.read(1, Role::Landlord, 1).events[0];
        assert!(e.text.len() <= MAX_EVENT_TEXT && e.text.ends_with('…'));
    }

    proptest! {
        /// Reading in pages of any size from any start sees every held
        /// event exactly once, in order, and counts the rest as lost.
        #[test]
        fn pages_cover_the_log(cap in 1usize..20, n in 0u64..60, from in 0u64..70, page in 1usize..8) {
            let mut log = EventLog::new(cap);
            for i in 0..n {
                log.record(i, Scope::Node, EventKind::VmStarted, "e");
            }
            let mut pos = from;
            let mut seen = Vec::new();
            let mut lost = 0;
            loop {
                let r = log.read(pos, Role::Landlord, page);
                lost += r.lost;
                if r.events.is_empty() { break; }
                seen.extend(r.events.iter().map(|e| e.seq));
                pos = r.next_seq;
            }
            let first = from.clamp(1, n + 1);
            let expect: Vec<u64> = (first.max(log.oldest_seq())..=n).collect();
            prop_assert_eq!(&seen, &expect);
            prop_assert_eq!(lost, log.oldest_seq().saturating_sub(first));
            prop_assert!(log.len() <= cap);
        }
    }
}
