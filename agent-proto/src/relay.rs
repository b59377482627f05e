//! The node's per-VM relay between a tenant's console and the VM's agent.
//!
//! The console opens streams ([`Relay::open`]), sends input
//! ([`Relay::send`]) and polls events ([`Relay::poll`]); the agent's
//! `agent_kick` hypercall moves records both ways ([`Relay::kick`]). Every
//! queue is bounded and checked before anything is queued, and a refusal
//! names its limit:
//!
//! - input for the agent: at most [`RelayLimits::input_bytes`] queued;
//! - events for the console: at most [`RelayLimits::stream_window`] per
//!   stream. The agent may have that many bytes of events outstanding per
//!   stream; the node grants more ([`ToAgent::Credit`]) as the console
//!   takes them, so a slow console slows the agent down instead of growing
//!   the node's memory. An agent that overruns its window loses the stream;
//! - streams: at most [`RelayLimits::max_streams`] at once; a stream the
//!   console stops polling is cancelled after [`RelayLimits::idle_stream_ms`];
//! - the agent log (attach, detach, heartbeat missed/resumed, service
//!   events): the last [`RelayLimits::log_entries`] entries;
//! - work per kick: at most [`RelayLimits::records_per_kick`] records.
//!
//! A malformed record or a broken ring detaches the agent: its streams end
//! with an error and the tenant sees why; the VM keeps running.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::msg::{decode, encode, Event, FromAgent, GuestLoad, Input, Op, StreamId, ToAgent};
use crate::ring::{Layout, RingFault, RingMem, FLAG_MORE};
use crate::{MAX_CONSOLE_DATA, MAX_DATA, MAX_RECORD};

/// The relay's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Streams open at once per VM.
    pub max_streams: usize,
    /// Event bytes outstanding per stream.
    pub stream_window: usize,
    /// Input bytes queued for the agent per VM.
    pub input_bytes: usize,
    /// Agent log entries kept per VM.
    pub log_entries: usize,
    /// A stream not polled for this long is cancelled.
    pub idle_stream_ms: u64,
    /// Records moved per direction per kick.
    pub records_per_kick: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_streams: 16,
            stream_window: 256 * 1024,
            input_bytes: 1024 * 1024,
            log_entries: 256,
            idle_stream_ms: 120_000,
            records_per_kick: 512,
        }
    }
}

/// Default heartbeat period asked of the agent.
pub const DEFAULT_HEARTBEAT_MS: u32 = 2_000;
/// Default bound after which a silent agent is reported hung.
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 10_000;

/// Why the relay refused a console request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// No agent is attached in the VM (not started yet, or detached).
    NoAgent(Option<String>),
    /// The stream does not exist (never opened, or finished and read).
    NoStream,
    /// The stream has ended; no more input is taken.
    Closed,
    /// Too many streams open.
    TooManyStreams(usize),
    /// The agent's input queue is full; retry after the agent catches up.
    InputFull(usize),
    /// A data input longer than [`MAX_DATA`], or an operation that does not
    /// fit a record.
    TooLarge(usize),
    /// A setting out of range; the message names it.
    Invalid(String),
}

impl core::fmt::Display for RelayError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RelayError::NoAgent(None) => write!(f, "no agent is attached in this VM"),
            RelayError::NoAgent(Some(why)) => write!(f, "no agent is attached in this VM (last detach: {why})"),
            RelayError::NoStream => write!(f, "no such agent stream"),
            RelayError::Closed => write!(f, "the agent stream has ended"),
            RelayError::TooManyStreams(n) => write!(f, "at most {n} agent streams may be open per VM (max_streams)"),
            RelayError::InputFull(n) => {
                write!(f, "agent input queue full: at most {n} bytes wait for the agent (input_bytes); retry")
            }
            RelayError::TooLarge(n) => write!(f, "input larger than {n} bytes"),
            RelayError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

/// One line of a VM's agent log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the log (monotonic per VM run).
    pub index: u64,
    /// Node time in milliseconds since boot.
    pub time_ms: u64,
    /// What happened.
    pub text: String,
}

/// The agent's state as the tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Whether an agent is attached.
    pub attached: bool,
    /// Whether its heartbeats stopped for longer than the bound.
    pub hung: bool,
    /// bm-agent's version, hostname and kernel from its hello.
    pub agent_version: Option<String>,
    /// Guest host name.
    pub hostname: Option<String>,
    /// Guest kernel.
    pub kernel: Option<String>,
    /// Milliseconds since the last heartbeat (or the attach).
    pub since_heartbeat_ms: Option<u64>,
    /// Heartbeat period asked of the agent.
    pub heartbeat_ms: u32,
    /// Bound after which the agent is reported hung.
    pub heartbeat_timeout_ms: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Guest load from the last heartbeat.
    pub load: Option<GuestLoad>,
    /// Streams open.
    pub streams: u32,
    /// Agent kicks (hypercalls) so far.
    pub kicks: u64,
    /// Bytes received from and sent to the agent.
    pub bytes_from_agent: u64,
    /// Bytes sent to the agent.
    pub bytes_to_agent: u64,
    /// Why the agent was last detached, if it was.
    pub last_fault: Option<String>,
}

struct Stream {
    /// Events with their encoded size (what they cost in a console reply).
    events: VecDeque<(Event, usize)>,
    queued: usize,
    /// The agent sent a terminal event (or the stream was aborted).
    ended: bool,
    /// The console sent `End` or `Cancel`.
    input_done: bool,
    last_poll_ms: u64,
    /// Credit owed to the agent (bytes the console took since the last kick).
    owed: usize,
}

/// What a kick did, for the hypervisor's counters and the agent's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KickOutcome {
    /// Records taken from the agent.
    pub records_in: usize,
    /// Records given to the agent.
    pub records_out: usize,
    /// More is waiting for the agent than fit.
    pub more: bool,
}

/// The per-VM relay.
pub struct Relay {
    limits: RelayLimits,
    layout: Option<Layout>,
    g2h_tail: u32,
    h2g_head: u32,
    streams: BTreeMap<StreamId, Stream>,
    next_stream: StreamId,
    to_agent: VecDeque<Vec<u8>>,
    to_agent_bytes: usize,
    hello: Option<(String, String, String)>,
    attached_ms: u64,
    last_heartbeat_ms: Option<u64>,
    heartbeats: u64,
    load: Option<GuestLoad>,
    heartbeat_ms: u32,
    heartbeat_timeout_ms: u64,
    hung: bool,
    log: VecDeque<LogEntry>,
    log_next: u64,
    kicks: u64,
    bytes_in: u64,
    bytes_out: u64,
    last_fault: Option<String>,
    doorbell_rung: bool,
    scratch: Vec<u8>,
    /// Service events not yet taken by the node's monitor (bounded).
    service_events: VecDeque<ServiceNote>,
    /// Service events dropped because the monitor did not take them.
    service_events_dropped: u64,
    /// The last event of each service, for the landlord's health view
    /// (at most [`MAX_SERVICE_TABLE`]; reset when the agent comes or goes).
    services: Vec<ServiceLast>,
    /// Orders the table's updates, so a full table evicts the oldest.
    services_clock: u64,
}

/// Service events kept for the node's monitor between two takes.
pub const MAX_SERVICE_NOTES: usize = 64;

/// Services whose last event a relay remembers: the guest names its
/// services, and a hostile one must not grow the node's memory by
/// inventing names. A new name in a full table evicts the entry updated
/// longest ago.
pub const MAX_SERVICE_TABLE: usize = 32;

/// Longest service name the table keeps, in characters (longer ones are
/// cut): what the landlord sees of a tenant's service stays small.
pub const MAX_SERVICE_NAME_CHARS: usize = 32;

/// Longest event text the table keeps, in characters (longer ones are cut).
pub const MAX_SERVICE_EVENT_CHARS: usize = 128;

/// The last event the agent reported for one service, as the relay keeps
/// it for the landlord's health view: the name and text cut to
/// [`MAX_SERVICE_NAME_CHARS`] and [`MAX_SERVICE_EVENT_CHARS`], control
/// characters dropped (the guest chose them; a console prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLast {
    /// Service name.
    pub name: String,
    /// Its last event's text ("started pid 42", "exited with status 1").
    pub what: String,
    /// When it was last updated, in the relay's update order.
    stamp: u64,
}

impl ServiceLast {
    /// Whether the last event says the service runs: only a start does
    /// ("restarting in ...", exits and failures do not).
    pub fn up(&self) -> bool {
        self.what.starts_with("started")
    }
}

/// Guest text cut to `max` characters, without control characters, so it
/// is safe to keep and to print.
pub fn clean_guest_text(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A service event as the agent reported it, for the node's monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNote {
    /// Node time, milliseconds.
    pub time_ms: u64,
    /// Service name (at most 64 characters).
    pub name: String,
    /// What happened (at most 200 characters).
    pub what: String,
}

impl Relay {
    /// A relay with no agent attached.
    pub fn new(limits: RelayLimits) -> Relay {
        Relay {
            limits,
            layout: None,
            g2h_tail: 0,
            h2g_head: 0,
            streams: BTreeMap::new(),
            next_stream: 1,
            to_agent: VecDeque::new(),
            to_agent_bytes: 0,
            hello: None,
            attached_ms: 0,
            last_heartbeat_ms: None,
            heartbeats: 0,
            load: None,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            hung: false,
            log: VecDeque::new(),
            log_next: 0,
            kicks: 0,
            bytes_in: 0,
            bytes_out: 0,
            last_fault: None,
            doorbell_rung: false,
            scratch: Vec::new(),
            service_events: VecDeque::new(),
            service_events_dropped: 0,
            services: Vec::new(),
            services_clock: 0,
        }
    }

    /// The last event of each service since the agent attached (at most
    /// [`MAX_SERVICE_TABLE`], in no particular order).
    pub fn services(&self) -> &[ServiceLast] {
        &self.services
    }

    /// Remembers `what` as service `name`'s last event, evicting the
    /// oldest-updated entry when a new name finds the table full.
    fn remember_service(&mut self, name: &str, what: &str) {
        let name = clean_guest_text(name, MAX_SERVICE_NAME_CHARS);
        if name.is_empty() {
            return;
        }
        let what = clean_guest_text(what, MAX_SERVICE_EVENT_CHARS);
        self.services_clock += 1;
        let stamp = self.services_clock;
        if let Some(s) = self.services.iter_mut().find(|s| s.name == name) {
            s.what = what;
            s.stamp = stamp;
            return;
        }
        if self.services.len() >= MAX_SERVICE_TABLE {
            let oldest = self.services.iter().enumerate().min_by_key(|(_, s)| s.stamp).map(|(i, _)| i);
            if let Some(i) = oldest {
                self.services.swap_remove(i);
            }
        }
        self.services.push(ServiceLast { name, what, stamp });
    }

    /// Service events since the last take (oldest first), and how many
    /// were dropped for want of room ([`MAX_SERVICE_NOTES`]) meanwhile.
    pub fn take_service_events(&mut self) -> (Vec<ServiceNote>, u64) {
        let dropped = core::mem::take(&mut self.service_events_dropped);
        (self.service_events.drain(..).collect(), dropped)
    }

    /// The registered region's geometry, when attached.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Whether an agent is attached.
    pub fn attached(&self) -> bool {
        self.layout.is_some()
    }

    fn note(&mut self, now_ms: u64, text: String) {
        if self.log.len() >= self.limits.log_entries {
            self.log.pop_front();
        }
        self.log.push_back(LogEntry { index: self.log_next, time_ms: now_ms, text });
        self.log_next += 1;
    }

    /// Log entries from index `from`, at most `max`; and the next index.
    pub fn log_since(&self, from: u64, max: usize) -> (Vec<LogEntry>, u64) {
        let v: Vec<LogEntry> = self.log.iter().filter(|e| e.index >= from).take(max).cloned().collect();
        let next =
            v.last().map(|e| e.index + 1).unwrap_or(from.max(self.log.front().map_or(self.log_next, |e| e.index)));
        (v, next)
    }

    /// Ends every stream with `why` (the console reads the error).
    fn abort_streams(&mut self, why: &str) {
        for s in self.streams.values_mut() {
            if !s.ended {
                s.events.push_back((Event::Error(why.to_string()), why.len() + 8));
                s.ended = true;
            }
        }
    }

    /// An agent registered its region (already checked for magic and
    /// reachability by the caller through [`Layout::check_magic`]). A
    /// re-attach (agent restarted) ends the old streams.
    pub fn attach(&mut self, layout: Layout, now_ms: u64) {
        if self.attached() {
            self.abort_streams("the agent restarted");
            self.note(now_ms, "agent re-attached (restarted)".to_string());
        } else {
            self.note(now_ms, "agent attached".to_string());
        }
        self.layout = Some(layout);
        // A new agent reports its services afresh: nothing from before
        // it (a "started" of another boot) may look healthy now.
        self.services.clear();
        self.g2h_tail = 0;
        self.h2g_head = 0;
        self.to_agent.clear();
        self.to_agent_bytes = 0;
        for s in self.streams.values_mut() {
            s.owed = 0;
        }
        self.hello = None;
        self.attached_ms = now_ms;
        self.last_heartbeat_ms = None;
        self.hung = false;
        self.doorbell_rung = false;
        let cfg = ToAgent::Configure { heartbeat_ms: self.heartbeat_ms };
        if let Ok(b) = encode(&cfg, MAX_RECORD) {
            self.to_agent_bytes += b.len();
            self.to_agent.push_back(b);
        }
    }

    /// The agent is gone (its VM stopped, or it broke the protocol).
    pub fn detach(&mut self, why: &str, now_ms: u64) {
        if !self.attached() {
            return;
        }
        self.layout = None;
        self.to_agent.clear();
        self.to_agent_bytes = 0;
        self.services.clear();
        self.abort_streams(why);
        self.last_fault = Some(why.to_string());
        self.note(now_ms, format!("agent detached: {why}"));
    }

    fn queue(&mut self, msg: &ToAgent) -> Result<(), RelayError> {
        let b = encode(msg, MAX_RECORD).map_err(|_| RelayError::TooLarge(MAX_RECORD))?;
        self.queue_records(alloc::vec![b])
    }

    /// Queues encoded records for the agent, all or none, within the
    /// input budget.
    fn queue_records(&mut self, records: Vec<Vec<u8>>) -> Result<(), RelayError> {
        let total: usize = records.iter().map(Vec::len).sum();
        if self.to_agent_bytes + total > self.limits.input_bytes {
            return Err(RelayError::InputFull(self.limits.input_bytes));
        }
        self.to_agent_bytes += total;
        self.to_agent.extend(records);
        self.doorbell_rung = false;
        Ok(())
    }

    fn require_agent(&self) -> Result<(), RelayError> {
        if self.attached() {
            Ok(())
        } else {
            Err(RelayError::NoAgent(self.last_fault.clone()))
        }
    }

    /// Starts an operation; the stream id names it from now on.
    pub fn open(&mut self, op: Op, now_ms: u64) -> Result<StreamId, RelayError> {
        self.require_agent()?;
        if self.streams.len() >= self.limits.max_streams {
            return Err(RelayError::TooManyStreams(self.limits.max_streams));
        }
        let stream = self.next_stream;
        self.queue(&ToAgent::Open { stream, op })?;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        self.streams.insert(
            stream,
            Stream {
                events: VecDeque::new(),
                queued: 0,
                ended: false,
                input_done: false,
                last_poll_ms: now_ms,
                owed: 0,
            },
        );
        Ok(stream)
    }

    /// Console input for an open stream. Data of up to
    /// [`MAX_CONSOLE_DATA`] bytes is queued as records of at most
    /// [`MAX_DATA`], all or none.
    pub fn send(&mut self, stream: StreamId, input: Input, now_ms: u64) -> Result<(), RelayError> {
        self.require_agent()?;
        if let Input::Data(d) = &input {
            if d.len() > MAX_CONSOLE_DATA {
                return Err(RelayError::TooLarge(MAX_CONSOLE_DATA));
            }
        }
        let s = self.streams.get(&stream).ok_or(RelayError::NoStream)?;
        if s.ended || (s.input_done && !matches!(input, Input::Cancel | Input::Signal(_))) {
            return Err(RelayError::Closed);
        }
        let done = matches!(input, Input::End | Input::Cancel);
        match input {
            Input::Data(d) if d.len() > MAX_DATA => {
                let mut records = Vec::new();
                for part in d.chunks(MAX_DATA) {
                    let msg = ToAgent::Input { stream, input: Input::Data(part.to_vec()) };
                    records.push(encode(&msg, MAX_RECORD).map_err(|_| RelayError::TooLarge(MAX_RECORD))?);
                }
                let total: usize = records.iter().map(Vec::len).sum();
                if total > self.limits.input_bytes {
                    // Could never fit: not worth a retry.
                    return Err(RelayError::TooLarge(self.limits.input_bytes));
                }
                self.queue_records(records)?;
            }
            input => self.queue(&ToAgent::Input { stream, input })?,
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.last_poll_ms = now_ms;
            s.input_done |= done;
        }
        Ok(())
    }

    /// Takes events of a stream up to `max_bytes` of their encoded size (at
    /// least one when any is queued; one event is at most [`MAX_RECORD`]
    /// bytes). `true` when the stream is finished and now forgotten.
    pub fn poll(&mut self, stream: StreamId, max_bytes: usize, now_ms: u64) -> Result<(Vec<Event>, bool), RelayError> {
        let s = self.streams.get_mut(&stream).ok_or(RelayError::NoStream)?;
        s.last_poll_ms = now_ms;
        let mut out = Vec::new();
        let (mut size, mut weight) = (0usize, 0usize);
        while let Some((_, n)) = s.events.front() {
            if !out.is_empty() && size + n > max_bytes {
                break;
            }
            size += n;
            if let Some((e, _)) = s.events.pop_front() {
                weight += e.weight();
                out.push(e);
            }
        }
        s.queued = s.queued.saturating_sub(weight);
        s.owed += weight;
        if s.owed > 0 {
            self.doorbell_rung = false;
        }
        let finished = s.ended && s.events.is_empty();
        if finished {
            self.streams.remove(&stream);
        }
        Ok((out, finished))
    }

    /// Sets the heartbeat period asked of the agent and the bound after
    /// which it is reported hung.
    pub fn set_heartbeat(&mut self, period_ms: u32, timeout_ms: u64) -> Result<(), RelayError> {
        if !(100..=60_000).contains(&period_ms) {
            return Err(RelayError::Invalid("heartbeat period must be 100..=60000 ms".to_string()));
        }
        if timeout_ms < 2 * u64::from(period_ms) || timeout_ms > 3_600_000 {
            return Err(RelayError::Invalid(
                "heartbeat timeout must be at least twice the period and at most 3600000 ms".to_string(),
            ));
        }
        self.heartbeat_ms = period_ms;
        self.heartbeat_timeout_ms = timeout_ms;
        if self.attached() {
            self.queue(&ToAgent::Configure { heartbeat_ms: period_ms })?;
        }
        Ok(())
    }

    /// Whether the node should ring the agent's doorbell: something waits
    /// for the agent and it has not been rung since the last kick.
    pub fn wants_doorbell(&self) -> bool {
        self.attached()
            && !self.doorbell_rung
            && (!self.to_agent.is_empty() || self.streams.values().any(|s| s.owed > 0))
    }

    /// The node rang the doorbell.
    pub fn doorbell_rung(&mut self) {
        self.doorbell_rung = true;
    }

    /// Time-driven work: hung detection and idle streams. Call every few
    /// hundred milliseconds.
    pub fn tick(&mut self, now_ms: u64) {
        if self.attached() {
            let since = now_ms.saturating_sub(self.last_heartbeat_ms.unwrap_or(self.attached_ms));
            if !self.hung && since > self.heartbeat_timeout_ms {
                self.hung = true;
                let bound = self.heartbeat_timeout_ms;
                self.note(now_ms, format!("agent heartbeat missed: none for {since} ms (bound {bound} ms)"));
            }
        }
        let idle = self.limits.idle_stream_ms;
        let stale: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_poll_ms) > idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let ended = self.streams.remove(&id).map(|s| s.ended).unwrap_or(true);
            if !ended && self.attached() {
                // Best effort: the queue may be full; the agent also ends
                // the operation when the node forgets its stream.
                let _ = self.queue(&ToAgent::Input { stream: id, input: Input::Cancel });
            }
        }
    }

    /// The agent's `agent_kick`: takes its records, then gives it what
    /// waits, as much as fits. On a fault the agent is detached and the
    /// fault returned (the hypervisor answers the call with an error).
    pub fn kick(&mut self, mem: &mut (impl RingMem + ?Sized), now_ms: u64) -> Result<KickOutcome, RingFault> {
        let Some(layout) = self.layout else { return Err(RingFault::Memory) };
        self.kicks += 1;
        match self.kick_inner(layout, mem, now_ms) {
            Ok(o) => Ok(o),
            Err(f) => {
                let why = format!("{f}");
                self.detach(&why, now_ms);
                Err(f)
            }
        }
    }

    fn kick_inner(
        &mut self,
        layout: Layout,
        mem: &mut (impl RingMem + ?Sized),
        now_ms: u64,
    ) -> Result<KickOutcome, RingFault> {
        let mut out = KickOutcome::default();
        let g2h = layout.guest_to_host();
        let mut rec = core::mem::take(&mut self.scratch);
        let mut tail = self.g2h_tail;
        let mut result = Ok(());
        while out.records_in < self.limits.records_per_kick {
            match g2h.consume(mem, &mut tail, &mut rec) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            out.records_in += 1;
            self.bytes_in += rec.len() as u64 + 4;
            match decode::<FromAgent>(&rec, MAX_RECORD) {
                Ok(m) => self.take(m, rec.len(), now_ms),
                Err(_) => {
                    result = Err(RingFault::Corrupt("malformed agent message"));
                    break;
                }
            }
        }
        self.g2h_tail = tail;
        self.scratch = rec;
        result?;

        let h2g = layout.host_to_guest();
        let mut head = self.h2g_head;
        // Credit first: it is small and unblocks the agent's output.
        let owed: Vec<(StreamId, usize)> =
            self.streams.iter().filter(|(_, s)| s.owed > 0).map(|(id, s)| (*id, s.owed)).collect();
        for (stream, bytes) in owed {
            let b =
                encode(&ToAgent::Credit { stream, bytes: bytes as u32 }, MAX_RECORD).map_err(|_| RingFault::Memory)?;
            if !h2g.produce(mem, &mut head, &b)? {
                out.more = true;
                break;
            }
            self.bytes_out += b.len() as u64 + 4;
            out.records_out += 1;
            if let Some(s) = self.streams.get_mut(&stream) {
                s.owed = 0;
            }
        }
        while !out.more && out.records_out < self.limits.records_per_kick {
            let Some(b) = self.to_agent.front() else { break };
            if !h2g.produce(mem, &mut head, b)? {
                out.more = true;
                break;
            }
            self.bytes_out += b.len() as u64 + 4;
            self.to_agent_bytes = self.to_agent_bytes.saturating_sub(b.len());
            self.to_agent.pop_front();
            out.records_out += 1;
        }
        if !self.to_agent.is_empty() {
            out.more = true;
        }
        self.h2g_head = head;
        layout.set_flags(mem, if out.more { FLAG_MORE } else { 0 })?;
        self.doorbell_rung = false;
        Ok(out)
    }

    fn take(&mut self, m: FromAgent, size: usize, now_ms: u64) {
        match m {
            FromAgent::Hello { protocol, agent_version, hostname, kernel } => {
                self.note(
                    now_ms,
                    format!(
                        "agent hello: bm-agent {agent_version} (protocol {protocol}) on {hostname}, kernel {kernel}"
                    ),
                );
                self.hello = Some((agent_version, hostname, kernel));
                self.last_heartbeat_ms = Some(now_ms);
            }
            FromAgent::Heartbeat { load, .. } => {
                self.heartbeats += 1;
                self.last_heartbeat_ms = Some(now_ms);
                self.load = Some(load);
                if self.hung {
                    self.hung = false;
                    self.note(now_ms, "agent heartbeat resumed".to_string());
                }
            }
            FromAgent::ServiceEvent { name, what } => {
                let name: String = name.chars().take(64).collect();
                let what: String = what.chars().take(200).collect();
                self.remember_service(&name, &what);
                self.note(now_ms, format!("service {name}: {what}"));
                if self.service_events.len() >= MAX_SERVICE_NOTES {
                    self.service_events.pop_front();
                    self.service_events_dropped += 1;
                }
                self.service_events.push_back(ServiceNote { time_ms: now_ms, name, what });
            }
            FromAgent::Event { stream, event } => {
                let window = self.limits.stream_window;
                let Some(s) = self.streams.get_mut(&stream) else { return };
                if s.ended {
                    return;
                }
                let w = event.weight();
                if s.queued + w > window {
                    s.events.push_back((
                        Event::Error(format!(
                            "the agent sent more than the stream window of {window} bytes (stream_window)"
                        )),
                        96,
                    ));
                    s.ended = true;
                    return;
                }
                s.queued += w;
                s.ended = event.is_terminal();
                s.events.push_back((event, size));
            }
        }
    }

    /// The agent's state for the tenant.
    pub fn status(&self, now_ms: u64) -> AgentStatus {
        let (agent_version, hostname, kernel) = match &self.hello {
            Some((a, h, k)) => (Some(a.clone()), Some(h.clone()), Some(k.clone())),
            None => (None, None, None),
        };
        AgentStatus {
            attached: self.attached(),
            hung: self.hung,
            agent_version,
            hostname,
            kernel,
            since_heartbeat_ms: self
                .attached()
                .then(|| now_ms.saturating_sub(self.last_heartbeat_ms.unwrap_or(self.attached_ms))),
            heartbeat_ms: self.heartbeat_ms,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
            heartbeats: self.heartbeats,
            load: self.load,
            streams: self.streams.len() as u32,
            kicks: self.kicks,
            bytes_from_agent: self.bytes_in,
            bytes_to_agent: self.bytes_out,
            last_fault: self.last_fault.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::msg::ExecSpec;
    use crate::ring::MIN_DATA;
    use alloc::vec;

    /// The agent's half, in plain memory, for driving the relay.
    struct FakeAgent {
        layout: Layout,
        mem: Vec<u8>,
        g2h_head: u32,
        h2g_tail: u32,
    }

    impl FakeAgent {
        fn new() -> FakeAgent {
            let layout = Layout::new(u64::from(MIN_DATA)).unwrap();
            let mut mem = vec![0u8; layout.total() as usize];
            layout.init(&mut mem[..]).unwrap();
            FakeAgent { layout, mem, g2h_head: 0, h2g_tail: 0 }
        }
        fn send(&mut self, m: &FromAgent) -> bool {
            let b = encode(m, MAX_RECORD).unwrap();
            self.layout.guest_to_host().produce(&mut self.mem[..], &mut self.g2h_head, &b).unwrap()
        }
        fn recv(&mut self) -> Vec<ToAgent> {
            let mut v = Vec::new();
            let mut rec = Vec::new();
            while self.layout.host_to_guest().consume(&mut self.mem[..], &mut self.h2g_tail, &mut rec).unwrap() {
                v.push(decode(&rec, MAX_RECORD).unwrap());
            }
            v
        }
    }

    fn exec() -> Op {
        Op::Exec(ExecSpec { argv: vec!["true".into()], env: vec![], cwd: None, timeout_ms: 0, stdin: false, pty: None })
    }

    fn attached() -> (Relay, FakeAgent) {
        let mut r = Relay::new(RelayLimits::default());
        let a = FakeAgent::new();
        r.attach(a.layout, 0);
        (r, a)
    }

    #[test]
    fn no_agent_refused() {
        let mut r = Relay::new(RelayLimits::default());
        assert_eq!(r.open(exec(), 0), Err(RelayError::NoAgent(None)));
    }

    #[test]
    fn exec_round_trip() {
        let (mut r, mut a) = attached();
        let s = r.open(exec(), 1).unwrap();
        assert!(r.wants_doorbell());
        r.kick(&mut a.mem[..], 2).unwrap();
        let got = a.recv();
        assert!(matches!(got[0], ToAgent::Configure { .. }));
        assert!(matches!(&got[1], ToAgent::Open { stream, .. } if *stream == s));
        assert!(a.send(&FromAgent::Event { stream: s, event: Event::Stdout(b"hi\n".to_vec()) }));
        assert!(a.send(&FromAgent::Event {
            stream: s,
            event: Event::Exited { code: Some(0), signal: None, timed_out: false }
        }));
        r.kick(&mut a.mem[..], 3).unwrap();
        let (ev, done) = r.poll(s, 1 << 20, 4).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(done);
        assert_eq!(r.poll(s, 100, 5), Err(RelayError::NoStream));
        // The console's consumption is credited back.
        r.kick(&mut a.mem[..], 6).unwrap();
        assert!(a.recv().is_empty(), "credit for a forgotten stream is not sent");
    }

    #[test]
    fn credit_follows_consumption() {
        let (mut r, mut a) = attached();
        let s = r.open(exec(), 0).unwrap();
        r.kick(&mut a.mem[..], 0).unwrap();
        a.recv();
        a.send(&FromAgent::Event { stream: s, event: Event::Stdout(vec![1; 1000]) });
        r.kick(&mut a.mem[..], 0).unwrap();
        r.poll(s, 10_000, 0).unwrap();
        assert!(r.wants_doorbell());
        r.kick(&mut a.mem[..], 0).unwrap();
        assert_eq!(a.recv(), vec![ToAgent::Credit { stream: s, bytes: 1000 }]);
    }

    #[test]
    fn window_overrun_ends_stream() {
        let (mut r, mut a) = attached();
        let s = r.open(exec(), 0).unwrap();
        for _ in 0..9 {
            assert!(a.send(&FromAgent::Event { stream: s, event: Event::Stdout(vec![0; MAX_DATA]) }));
            r.kick(&mut a.mem[..], 0).unwrap();
        }
        let (ev, done) = r.poll(s, usize::MAX, 0).unwrap();
        assert!(done);
        assert!(matches!(ev.last(), Some(Event::Error(m)) if m.contains("stream_window")));
    }

    #[test]
    fn input_bounded_and_named() {
        let (mut r, _a) = attached();
        let s = r.open(exec(), 0).unwrap();
        let mut refused = None;
        for _ in 0..100 {
            if let Err(e) = r.send(s, Input::Data(vec![0; MAX_DATA]), 0) {
                refused = Some(e);
                break;
            }
        }
        let e = refused.unwrap();
        assert!(e.to_string().contains("input_bytes"));
        assert_eq!(
            r.send(s, Input::Data(vec![0; MAX_CONSOLE_DATA + 1]), 0),
            Err(RelayError::TooLarge(MAX_CONSOLE_DATA))
        );
    }

    #[test]
    fn large_console_input_is_split_in_order() {
        let (mut r, mut a) = attached();
        let s = r.open(exec(), 0).unwrap();
        let data: Vec<u8> = (0..MAX_CONSOLE_DATA).map(|i| (i % 251) as u8).collect();
        r.send(s, Input::Data(data.clone()), 0).unwrap();
        r.kick(&mut a.mem[..], 0).unwrap();
        let mut got = Vec::new();
        for m in a.recv() {
            if let ToAgent::Input { input: Input::Data(d), .. } = m {
                assert!(d.len() <= MAX_DATA);
                got.extend(d);
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn streams_bounded() {
        let (mut r, _a) = attached();
        for _ in 0..16 {
            r.open(exec(), 0).unwrap();
        }
        assert_eq!(r.open(exec(), 0), Err(RelayError::TooManyStreams(16)));
        r.tick(200_000);
        assert!(r.open(exec(), 200_000).is_ok(), "idle streams are forgotten");
    }

    #[test]
    fn garbage_detaches_with_reason() {
        let (mut r, mut a) = attached();
        let s = r.open(exec(), 0).unwrap();
        let g2h = a.layout.guest_to_host();
        g2h.produce(&mut a.mem[..], &mut a.g2h_head, &[0xFF, 0xFF, 0xFF]).unwrap();
        assert!(r.kick(&mut a.mem[..], 5).is_err());
        assert!(!r.attached());
        let (ev, done) = r.poll(s, 1000, 6).unwrap();
        assert!(done);
        assert!(matches!(&ev[0], Event::Error(m) if m.contains("malformed")));
        assert!(matches!(r.open(exec(), 7), Err(RelayError::NoAgent(Some(_)))));
    }

    #[test]
    fn hung_reported_once_then_resumed() {
        let (mut r, mut a) = attached();
        r.set_heartbeat(1000, 3000).unwrap();
        r.tick(2000);
        assert!(!r.status(2000).hung);
        r.tick(3500);
        r.tick(4000);
        assert!(r.status(4000).hung);
        let (log, _) = r.log_since(0, 100);
        assert_eq!(log.iter().filter(|e| e.text.contains("missed")).count(), 1);
        a.send(&FromAgent::Heartbeat { seq: 1, uptime_ms: 1, load: GuestLoad::default() });
        r.kick(&mut a.mem[..], 4100).unwrap();
        assert!(!r.status(4100).hung);
        assert!(r.set_heartbeat(50, 1000).is_err());
        assert!(r.set_heartbeat(1000, 1500).is_err());
    }

    #[test]
    fn log_is_bounded() {
        let mut r = Relay::new(RelayLimits { log_entries: 4, ..RelayLimits::default() });
        let a = FakeAgent::new();
        for t in 0..10 {
            r.attach(a.layout, t);
        }
        let (v, next) = r.log_since(0, 100);
        assert_eq!(v.len(), 4);
        assert_eq!(next, 10);
    }

    fn service(a: &mut FakeAgent, r: &mut Relay, name: &str, what: &str, now: u64) {
        assert!(a.send(&FromAgent::ServiceEvent { name: name.into(), what: what.into() }));
        r.kick(&mut a.mem[..], now).unwrap();
    }

    fn last<'r>(r: &'r Relay, name: &str) -> Option<&'r ServiceLast> {
        r.services().iter().find(|s| s.name == name)
    }

    #[test]
    fn the_service_table_keeps_the_last_event_per_name_and_its_up_state() {
        let (mut r, mut a) = attached();
        service(&mut a, &mut r, "api", "started pid 42", 1);
        assert!(last(&r, "api").unwrap().up());
        service(&mut a, &mut r, "api", "exited with status 1", 2);
        assert_eq!(last(&r, "api").unwrap().what, "exited with status 1");
        assert!(!last(&r, "api").unwrap().up());
        service(&mut a, &mut r, "api", "restarting in 20 ms (restart 1)", 3);
        assert!(!last(&r, "api").unwrap().up(), "restarting is not up");
        service(&mut a, &mut r, "api", "started pid 43", 4);
        assert!(last(&r, "api").unwrap().up());
        service(&mut a, &mut r, "api", "failed: 3 restarts in 60 s (max_restarts)", 5);
        assert!(!last(&r, "api").unwrap().up());
        assert_eq!(r.services().len(), 1);
    }

    #[test]
    fn the_service_table_is_bounded_and_evicts_the_oldest_updated() {
        let (mut r, mut a) = attached();
        for i in 0..MAX_SERVICE_TABLE {
            service(&mut a, &mut r, &format!("s{i}"), "started pid 1", i as u64);
        }
        // s0 is updated again: s1 is now the oldest.
        service(&mut a, &mut r, "s0", "started pid 2", 100);
        service(&mut a, &mut r, "new", "started pid 3", 101);
        assert_eq!(r.services().len(), MAX_SERVICE_TABLE);
        assert!(last(&r, "s1").is_none(), "the oldest-updated entry is evicted");
        assert!(last(&r, "s0").is_some() && last(&r, "new").is_some());
        // A hostile agent inventing names never grows the table.
        for i in 0..200 {
            service(&mut a, &mut r, &format!("x{i}"), "started pid 1", 200 + i);
            assert!(r.services().len() <= MAX_SERVICE_TABLE);
        }
    }

    #[test]
    fn service_names_and_texts_are_cut_and_cleaned() {
        let (mut r, mut a) = attached();
        let long = "n".repeat(60);
        service(&mut a, &mut r, &long, &format!("started \u{1b}[2J{}", "x".repeat(190)), 1);
        service(&mut a, &mut r, "\u{7}", "started pid 1", 2);
        assert_eq!(r.services().len(), 1, "a name of control characters only is not kept");
        let s = &r.services()[0];
        assert_eq!(s.name.chars().count(), MAX_SERVICE_NAME_CHARS);
        assert_eq!(s.what.chars().count(), MAX_SERVICE_EVENT_CHARS);
        assert!(!s.what.chars().any(char::is_control));
        assert!(s.up());
    }

    #[test]
    fn the_service_table_is_reset_when_the_agent_comes_or_goes() {
        let (mut r, mut a) = attached();
        service(&mut a, &mut r, "api", "started pid 42", 1);
        // The agent restarts (re-attaches): a stale "started" must go.
        let mut b = FakeAgent::new();
        r.attach(b.layout, 2);
        assert!(r.services().is_empty());
        service(&mut b, &mut r, "api", "started pid 7", 3);
        assert!(last(&r, "api").unwrap().up());
        r.detach("the agent detached", 4);
        assert!(r.services().is_empty());
    }

    proptest::proptest! {
        /// Whatever records a hostile agent sends, the relay's queues stay
        /// within their limits and it never panics.
        #[test]
        fn hostile_records_stay_bounded(recs in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200), 0..50)) {
            let (mut r, mut a) = attached();
            let s = r.open(exec(), 0).unwrap();
            for rec in &recs {
                if !a.layout.guest_to_host().produce(&mut a.mem[..], &mut a.g2h_head, rec).unwrap() { break; }
            }
            let _ = r.kick(&mut a.mem[..], 1);
            if let Ok((ev, _)) = r.poll(s, usize::MAX, 2) {
                let total: usize = ev.iter().map(|e| e.weight()).sum();
                proptest::prop_assert!(total <= RelayLimits::default().stream_window + 200);
            }
        }
    }
}
