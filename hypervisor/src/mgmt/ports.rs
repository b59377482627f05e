//! The management port's connections: each smoltcp socket is a slot of the
//! admission table (`node_logic::admission`), which decides who is served,
//! evicted, timed out or answered "busy". Replies leave through a bounded
//! per-connection outbox, so a slow reader never loses bytes and never
//! makes the node buffer without limit. Failed and dropped connections are
//! reported in aggregate (`ConnReport`), so a flood cannot flood the log.

use super::Mgmt;
use crate::arch::x86_64::time;
use crate::net::node::Network;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mgmt_proto::session::busy_frame;
use mgmt_proto::NodeSession;
use node_logic::admission::{Drop, Slot, Verdict};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

/// Reply bytes one connection may have waiting to be sent; a console that
/// does not read is dropped when it would exceed this.
const OUTBOX_LIMIT: usize = 512 * 1024;
/// Requests are read while less than this waits to be sent: small replies
/// (upload acknowledgements) do not stall a pipelining console, large ones
/// (console output) make it wait for the network.
const OUTBOX_PAUSE: usize = 16 * 1024;
/// Bytes read from a socket at a time (its whole receive buffer).
const RX_CHUNK: usize = 64 * 1024;

/// Refusals and drops logged one by one per report window; the rest only
/// in the window's summary.
const DETAILED_PER_WINDOW: u32 = 4;
/// The length of a report window.
const REPORT_WINDOW_MS: u64 = 10_000;

/// Pushes are skipped (and the events wait in the log) while this much of
/// a subscriber's earlier output is still unsent.
const PUSH_BACKLOG: usize = 64 * 1024;
/// Events in a push retried smaller after a push did not fit one message.
const PUSH_EVENTS_SMALL: usize = 8;
/// Events are pushed at most this often (health on the subscription's own
/// interval).
const EVENT_PUSH_MS: u64 = 100;

/// One connection slot's protocol side.
#[derive(Default)]
pub struct Conn {
    session: Option<NodeSession>,
    outbox: Vec<u8>,
    close_when_sent: bool,
    sub: Option<Subscription>,
}

/// A session's monitoring subscription.
pub struct Subscription {
    role: mgmt_proto::Role,
    interval_ms: u32,
    /// The next event this subscriber gets.
    cursor: u64,
    /// Health reports sent (the node's heartbeat to this console).
    beat: u64,
    next_health_ms: u64,
    last_push_ms: u64,
    /// Events the log dropped before this subscriber got them, not yet told.
    lost: u64,
}

impl Subscription {
    /// Checks a subscribe request; the subscription and its reply.
    pub fn new(
        role: mgmt_proto::Role,
        since: Option<u64>,
        interval_ms: u32,
        events: &mgmt_proto::monitor::events::EventLog,
        boot: u64,
    ) -> Result<(Subscription, mgmt_proto::Response), mgmt_proto::ErrorReply> {
        use mgmt_proto::monitor::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(mgmt_proto::ErrorReply::new(
                mgmt_proto::ErrorCode::Invalid,
                format!("interval_ms: {interval_ms} is out of range {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"),
            ));
        }
        let cursor = since.unwrap_or(events.next_seq()).clamp(1, events.next_seq());
        let sub = Subscription { role, interval_ms, cursor, beat: 0, next_health_ms: 0, last_push_ms: 0, lost: 0 };
        Ok((sub, mgmt_proto::Response::Subscribed { next_seq: cursor, interval_ms, boot }))
    }
}

/// Connection failures counted over one report window.
#[derive(Default)]
pub struct ConnReport {
    window_start: u64,
    detailed: u32,
    refused: u32,
    evicted: u32,
    handshake_timeouts: u32,
    idle: u32,
    busy: u32,
    reset_stuck: u32,
    overflow: u32,
    held_back: u32,
    last_refusal: String,
}

impl ConnReport {
    fn total(&self) -> u32 {
        self.refused
            + self.evicted
            + self.handshake_timeouts
            + self.idle
            + self.busy
            + self.reset_stuck
            + self.overflow
            + self.held_back
    }

    /// Whether this event may still be logged on its own in this window.
    fn detail(&mut self) -> bool {
        self.detailed += 1;
        self.detailed <= DETAILED_PER_WINDOW
    }
}

/// What a console hears when no slot is free; `why` names the limit.
fn busy_message(why: &str) -> String {
    format!("node busy: {why}; retry in a moment")
}

/// Node time in ms (the management plane's clock: deadlines, leases).
pub(super) fn now_ms() -> u64 {
    time::tsc_to_ms(time::rdtsc())
}

fn source(sock: &tcp::Socket<'_>) -> [u8; 4] {
    match sock.remote_endpoint().map(|e| e.addr) {
        Some(IpAddress::Ipv4(a)) => a.octets(),
        _ => [0; 4],
    }
}

impl Mgmt {
    /// Serves every socket of the management port for one round: deadlines
    /// first, then new connections, bytes in, replies out.
    pub fn serve_ports(&mut self, net: &mut Network, vms: &mut [crate::vm::Vm]) -> super::Actions {
        let now = now_ms();
        self.state.set_clock(now / 1000);
        for name in self.state.expire_uploads() {
            crate::log!("mgmt: unfinished upload of {} expired; its room is free", crate::mgmt::escape(&name));
            self.dirty = true;
        }
        let mut resets: Vec<usize> = Vec::new();
        self.admission.begin_round();
        for (i, drop) in self.admission.expire(now) {
            match drop {
                Drop::HandshakeTimeout => self.report.handshake_timeouts += 1,
                Drop::Idle => self.report.idle += 1,
                Drop::Linger => self.report.reset_stuck += 1,
                Drop::Evicted => self.report.evicted += 1,
            }
            if drop.resets() {
                resets.push(i);
            } else if let Some(c) = self.conns.get_mut(i) {
                // Idle: the session ends, the connection closes politely.
                c.session = None;
                c.close_when_sent = true;
            }
        }
        self.push_subscriptions(now, vms);
        // Connections already held go first, so one whose first handshake
        // message has arrived becomes a session before a newcomer can evict
        // it; then the newcomers (slots the table has listening).
        let listening: Vec<bool> = (0..self.conns.len()).map(|i| self.admission.slot(i) == Slot::Listening).collect();
        for newcomers in [false, true] {
            for (i, &was_listening) in listening.iter().enumerate() {
                if was_listening != newcomers || resets.contains(&i) {
                    continue;
                }
                let Some(sock) = net.mgmt_port(i) else { break };
                self.serve_slot(i, sock, now, vms, &mut resets);
            }
        }
        for i in resets {
            if let Some(sock) = net.mgmt_port(i) {
                sock.abort();
            }
            if let Some(c) = self.conns.get_mut(i) {
                *c = Conn::default();
            }
            self.admission.closed(i);
        }
        self.report.held_back = self.report.held_back.saturating_add(net.take_mgmt_held_back());
        self.report_connections(now);
        core::mem::take(&mut self.pending)
    }

    fn serve_slot(
        &mut self,
        i: usize,
        sock: &mut tcp::Socket<'_>,
        now: u64,
        vms: &mut [crate::vm::Vm],
        resets: &mut Vec<usize>,
    ) {
        let slot = self.admission.slot(i);
        let active = sock.is_active() && sock.state() != tcp::State::Listen;
        if slot == Slot::Listening {
            if !active {
                return;
            }
            let (verdict, evicted) = self.admission.connect(i, source(sock), now);
            self.report.evicted += evicted.len() as u32;
            resets.extend(evicted);
            let Some(conn) = self.conns.get_mut(i) else { return };
            *conn = Conn::default();
            match verdict {
                Verdict::Serve => conn.session = Some(NodeSession::new(Box::new(super::Rdrand))),
                Verdict::Busy(why) => {
                    self.report.busy += 1;
                    conn.outbox = busy_frame(&busy_message(why));
                    conn.close_when_sent = true;
                }
            }
        } else if !active {
            // The peer is gone (reset, or our close completed). A socket in
            // TIME-WAIT would sit out 10 s unusable, and a peer reusing its
            // port meanwhile would be reset: both FINs are through, so
            // free it now.
            if sock.state() == tcp::State::TimeWait {
                sock.abort();
            }
            if let Some(c) = self.conns.get_mut(i) {
                *c = Conn::default();
            }
            self.admission.closed(i);
            return;
        }
        if sock.state() == tcp::State::CloseWait {
            // The console closed its side: flush what is left, then close.
            if let Some(c) = self.conns.get_mut(i) {
                c.session = None;
                c.close_when_sent = true;
            }
        }
        self.receive(i, sock, now, vms);
        self.send(i, sock, now, resets);
    }

    /// Feeds received bytes to slot `i`'s session, unless its outbox holds
    /// [`OUTBOX_PAUSE`] or more (back-pressure: the console waits for our
    /// replies).
    fn receive(&mut self, i: usize, sock: &mut tcp::Socket<'_>, now: u64, vms: &mut [crate::vm::Vm]) {
        if !sock.can_recv() {
            return;
        }
        // One buffer for every connection and round (this runs on every
        // round for every busy socket).
        let mut buf = core::mem::take(&mut self.rx_buf);
        buf.resize(RX_CHUNK, 0);
        self.receive_into(&mut buf, i, sock, now, vms);
        self.rx_buf = buf;
    }

    fn receive_into(
        &mut self,
        buf: &mut [u8],
        i: usize,
        sock: &mut tcp::Socket<'_>,
        now: u64,
        vms: &mut [crate::vm::Vm],
    ) {
        loop {
            let Some(conn) = self.conns.get_mut(i) else { return };
            if conn.session.is_none() || conn.outbox.len() >= OUTBOX_PAUSE || !sock.can_recv() {
                return;
            }
            let n = match sock.recv_slice(buf) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            let Some(input) = buf.get(..n) else { return };
            let Some(mut session) = conn.session.take() else { return };
            let was_established = session.is_established();
            self.subscribe = None;
            self.feed(&mut session, input, vms);
            if let (Some(sub), Some(conn)) = (self.subscribe.take(), self.conns.get_mut(i)) {
                conn.sub = Some(sub);
            }
            if !was_established && session.is_established() {
                if let Some(role) = session.role() {
                    if let Verdict::Busy(why) = self.admission.establish(i, role, now) {
                        self.report.busy += 1;
                        session.refuse_busy(&busy_message(why));
                    }
                }
            } else if session.is_established() {
                self.admission.active(i, now);
            }
            let out = session.take_output();
            let closed = session.is_closed();
            let Some(conn) = self.conns.get_mut(i) else { return };
            conn.outbox.extend_from_slice(&out);
            if closed {
                conn.close_when_sent = true;
                self.admission.closing(i, now);
            } else {
                conn.session = Some(session);
            }
        }
    }

    /// Sends what slot `i` has waiting; closes it once sent if asked to.
    fn send(&mut self, i: usize, sock: &mut tcp::Socket<'_>, now: u64, resets: &mut Vec<usize>) {
        let Some(conn) = self.conns.get_mut(i) else { return };
        if conn.outbox.len() > OUTBOX_LIMIT {
            self.report.overflow += 1;
            resets.push(i);
            return;
        }
        if !conn.outbox.is_empty() && sock.may_send() {
            if let Ok(n) = sock.send_slice(&conn.outbox) {
                conn.outbox.drain(..n.min(conn.outbox.len()));
            }
        }
        // A subscriber only listens: while it takes (acknowledges) what is
        // pushed, its session is in use; one that stops reading goes idle.
        if conn.sub.is_some() && conn.outbox.is_empty() && sock.send_queue() == 0 {
            self.admission.active(i, now);
        }
        if conn.outbox.is_empty() && conn.close_when_sent && sock.may_send() {
            conn.close_when_sent = false;
            sock.close();
            self.admission.closing(i, now);
        }
    }

    /// Queues the pushes that are due: health on each subscription's
    /// interval, new events as they come (at most every [`EVENT_PUSH_MS`]).
    /// A subscriber with [`PUSH_BACKLOG`] unsent is skipped; its events
    /// wait in the log (and are counted lost if the log drops them).
    fn push_subscriptions(&mut self, now: u64, vms: &[crate::vm::Vm]) {
        use mgmt_proto::monitor::{Push, MAX_EVENTS_PER_PUSH};
        let mut report: Option<mgmt_proto::monitor::HealthReport> = None;
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns.get_mut(i) else { continue };
            let (Some(sub), Some(session)) = (conn.sub.as_mut(), conn.session.as_mut()) else { continue };
            if !session.is_established() || conn.outbox.len() + session.output_len() >= PUSH_BACKLOG {
                continue;
            }
            let health_due = now >= sub.next_health_ms;
            let events_due =
                self.monitor.events.next_seq() > sub.cursor && now.saturating_sub(sub.last_push_ms) >= EVENT_PUSH_MS;
            if !(health_due || events_due) {
                continue;
            }
            let read = self.monitor.events.read(sub.cursor, sub.role, MAX_EVENTS_PER_PUSH);
            sub.lost = sub.lost.saturating_add(read.lost);
            if !health_due && read.events.is_empty() {
                // Invisible events were passed over: move on without a push.
                sub.cursor = read.next_seq;
                continue;
            }
            let health = if health_due {
                sub.next_health_ms = now + u64::from(sub.interval_ms);
                sub.beat += 1;
                let full = report.get_or_insert_with(|| self.monitor.health(0, vms, &self.state));
                let mut mine = full.for_role(sub.role);
                mine.beat = sub.beat;
                Some(mine)
            } else {
                None
            };
            let mut push =
                Push { health, events: read.events, lost: core::mem::take(&mut sub.lost), next_seq: read.next_seq };
            let mut sent = session.push(push.clone());
            if sent.is_err() {
                // Too large for one message (many VMs with many services):
                // fewer events, and services only counted in the health.
                push.events.truncate(PUSH_EVENTS_SMALL);
                if let Some(last) = push.events.last() {
                    push.next_seq = last.seq + 1;
                }
                if let Some(h) = push.health.as_mut() {
                    for v in h.vms.iter_mut() {
                        if let Some(a) = v.agent.as_mut() {
                            a.services.clear();
                        }
                    }
                }
                sent = session.push(push.clone());
            }
            match sent {
                Ok(()) => {
                    sub.cursor = push.next_seq;
                    sub.last_push_ms = now;
                }
                Err(e) => {
                    sub.lost = push.lost;
                    sub.last_push_ms = now;
                    crate::log!("mgmt: push not sent: {e}");
                }
            }
            let out = session.take_output();
            self.monitor.push_bytes = self.monitor.push_bytes.saturating_add(out.len() as u64);
            self.monitor.pushes = self.monitor.pushes.saturating_add(1);
            conn.outbox.extend_from_slice(&out);
        }
    }

    /// Counts a refused session; the first few of a window are logged and
    /// audited on their own, the rest in the window's summary.
    pub(super) fn note_refusal(&mut self, role: Option<mgmt_proto::Role>, why: String) {
        self.report.refused += 1;
        if self.report.detail() {
            crate::log!("mgmt: session refused: {}", crate::mgmt::escape(&why));
            self.state.log(role, "session", format!("refused: {why}"));
            self.changed(true);
        } else {
            self.report.last_refusal = why;
        }
    }

    /// At the end of each window: one log line and one audit entry for
    /// everything not reported on its own.
    fn report_connections(&mut self, now: u64) {
        if now.saturating_sub(self.report.window_start) < REPORT_WINDOW_MS {
            return;
        }
        let r = core::mem::take(&mut self.report);
        self.report.window_start = now;
        if r.total() == 0 || r.total() <= r.detailed.min(DETAILED_PER_WINDOW) && r.refused == r.total() {
            return;
        }
        let mut summary = format!(
            "in the last {} s: {} refused, {} evicted for room, {} handshake timeouts, {} idle sessions closed, {} busy answers, {} stuck connections reset, {} unread-reply overflows, {} connection requests held back (no free socket)",
            REPORT_WINDOW_MS / 1000,
            r.refused,
            r.evicted,
            r.handshake_timeouts,
            r.idle,
            r.busy,
            r.reset_stuck,
            r.overflow,
            r.held_back
        );
        if !r.last_refusal.is_empty() {
            summary.push_str(&format!(" (last refusal: {})", r.last_refusal));
        }
        crate::log!("mgmt: connections {}", crate::mgmt::escape(&summary));
        self.state.log(None, "connections", summary);
        self.changed(true);
    }
}
