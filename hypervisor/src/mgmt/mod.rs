//! The management plane on the node: Noise sessions from the landlord's and
//! tenants' consoles (crate `mgmt-proto`) over the management TCP port,
//! served from the node's management state (leases, keys, images, VM
//! definitions, audit log), and reconciled with the VMs that actually run.
//!
//! What the node answers itself rather than from the state: shutdown and
//! reboot (real power actions), agent requests, subscriptions. Status,
//! console output and input and VM counters the state asks the running node
//! for through its backend (`backend.rs`).

mod agent;
mod backend;
mod fleet;
mod image_store;
mod monitor;
mod persist;
mod ports;
mod reconcile;
mod rules;

use crate::arch::x86_64::rng;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mgmt_proto::msg::{
    BoundaryRule, ClusterId, ErrorCode, ErrorReply, LeaseId, Request, Response, Role, RuleId, VmState,
};
use mgmt_proto::session::{NodeEvent, NodeSession};
use mgmt_proto::{Entropy, EntropyError, PublicKey};
use node_logic::NodeState;

pub use reconcile::reconcile;

/// Audit-only changes are written at most this often.
const LAZY_SAVE_MS: u64 = 2000;
/// A save taking this long is logged: the management plane stalls meanwhile.
const SLOW_SAVE_MS: u64 = 200;

/// Keys and session nonces come from the CPU's random source.
struct Rdrand;

impl Entropy for Rdrand {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        rng::fill(dest).map_err(|_| EntropyError)
    }
}

/// What the node loop must do after serving requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub shutdown: bool,
    pub reboot: bool,
}

/// Key regenerations whose disk consequences (crypto-erase) the node loop
/// applies to its storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskEffect {
    /// A new landlord pair: K_L discarded.
    LandlordKey,
    /// A new tenant pair for the lease in this cluster: its K_T discarded.
    TenantKey { cluster: u32 },
}

/// The node's management plane.
pub struct Mgmt {
    pub state: NodeState,
    /// The management port's connections, one per socket.
    conns: Vec<ports::Conn>,
    /// Who may hold a connection slot, and until when.
    admission: node_logic::admission::Admission,
    /// Connection failures awaiting their aggregated report.
    report: ports::ConnReport,
    /// Scratch for bytes read from the management port's sockets.
    rx_buf: Vec<u8>,
    /// The out-of-band line (COM2) and its session.
    serial: Option<crate::arch::x86_64::com2::Com2>,
    serial_session: Option<NodeSession>,
    /// Facts for status replies.
    pub facts: NodeFacts,
    pending: Actions,
    /// The node config, for console rules on top of its policy.
    config: vmm_config::config::NodeConfig,
    /// A switch policy to install (after a console rule change).
    pub new_policy: Option<vswitch::engine::CompiledPolicy>,
    /// Disk consequences of key regenerations, for the node loop.
    pub disk_effects: Vec<DiskEffect>,
    /// NICs of running console-created VMs, by management VM id.
    pub console_nics: BTreeMap<u32, vswitch::config::ExtraNic>,
    /// Where the state persists (the node's encrypted disk), if anywhere.
    store: Option<nodedisk::VolumeHandle<crate::storage::node::AnyDisk>>,
    /// The state changed since it was last saved.
    dirty: bool,
    /// Only the audit log (or an upload in progress) changed: save lazily.
    lazy: bool,
    /// When the state was last saved (TSC).
    saved_at: u64,
    /// Probes, events, policies in action.
    monitor: monitor::Monitor,
    /// A subscription the request being served asked for, for the
    /// connection it came on.
    subscribe: Option<ports::Subscription>,
    /// The request being served came on COM2 (no subscriptions there).
    serving_serial: bool,
    /// Random per boot, so consoles tell a restarted node (its event
    /// numbers began again) from a reconnect.
    boot_id: u64,
    /// The node disk, shared with the node loop, for replica volumes.
    storage: Option<crate::storage::Storage>,
    /// Write gates of running facility VMs' disks, by management VM id.
    gates: BTreeMap<u32, fleet::Gate>,
}

/// Node facts the status reply reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeFacts {
    pub cpus: u32,
    pub memory_total_mib: u64,
    pub nic_up: bool,
    /// Node disk (size MiB, free MiB, volumes), when there is one.
    pub disk: Option<(u64, u64, u64)>,
}

impl Mgmt {
    /// Provisions the plane: generates the landlord key pair (U_L, R_L) and
    /// registers the landlord console's key. `None` when no console key is
    /// configured or there is no random source (said in the log).
    /// `preloads` are the node config's `[[image]]`s (name, bundle bytes),
    /// put into the image store once the state is ready.
    pub fn provision(
        console_key: Option<[u8; 32]>,
        facts: NodeFacts,
        config: &vmm_config::config::NodeConfig,
        storage: Option<&mut crate::storage::Storage>,
        preloads: &[(&str, &[u8])],
    ) -> Option<Mgmt> {
        let storage_summary = storage.as_deref().map(crate::storage::Storage::summary);
        let shared_storage = storage.as_deref().cloned();
        let mut storage = storage;
        let Some(key) = console_key else {
            crate::log!("mgmt: not provisioned (no [node] landlord_console_key); the management port refuses sessions");
            return None;
        };
        if !rng::available() {
            crate::log!("mgmt: no hardware random source; management plane disabled");
            return None;
        }
        // Images go to their own volume on a physical disk; in memory (a
        // fixed budget, or room for the preloaded images) otherwise.
        let preload_bytes: u64 = preloads
            .iter()
            .map(|(_, b)| node_logic::images::blocks_for(b.len() as u64) * node_logic::images::BLOCK)
            .sum();
        let images: Box<dyn node_logic::images::ImageStore> = match storage.as_deref_mut() {
            Some(s) if s.is_physical() => match s.image_volume() {
                Ok(v) => Box::new(image_store::VolumeImageStore::new(v)),
                Err(e) => {
                    crate::log!("mgmt: images kept in memory: {e}");
                    image_store::memory(preload_bytes)
                }
            },
            _ => image_store::memory(preload_bytes),
        };
        let mut store = storage.and_then(|s| match s.state_volume() {
            Ok(v) => Some(v),
            Err(e) => {
                crate::log!("mgmt: state not persisted: {e}");
                None
            }
        });
        let restored = store.as_mut().and_then(|v| match persist::load(v) {
            Ok(snap) => snap,
            Err(e) => {
                crate::log!("mgmt: stored state unusable ({e}); provisioning afresh");
                None
            }
        });
        let fresh = restored.is_none();
        let limits = node_logic::StateLimits {
            max_images_bytes: node_logic::StateLimits::DEFAULT
                .max_images_bytes
                .min(images.capacity_blocks() * node_logic::images::BLOCK),
            ..node_logic::StateLimits::DEFAULT
        };
        let mut images = Some(images);
        let restored = restored.and_then(|snap| {
            let store = images.take()?;
            let (state, dropped) = NodeState::restore_with(Box::new(Rdrand), snap, store, limits)?;
            if !dropped.is_empty() {
                crate::log!("mgmt: images of the old state that do not fit the image store: {}", dropped.join(", "));
            }
            Some(state)
        });
        let state = match restored {
            Some(mut state) => {
                state.set_landlord_console(PublicKey(key));
                crate::log!(
                    "mgmt: state restored from the encrypted disk ({} lease(s), {} VM definition(s), {} image(s))",
                    state.leases.len(),
                    state.vms.len(),
                    state.images.len()
                );
                let again: Vec<&str> =
                    state.vms.values().filter(|v| v.state == VmState::Running).map(|v| v.spec.name.as_str()).collect();
                if !again.is_empty() {
                    crate::log!("mgmt: restarting {} VM(s) a console had started: {}", again.len(), again.join(", "));
                }
                Ok(state)
            }
            None => NodeState::provision(Box::new(Rdrand), PublicKey(key)).map(|s| {
                s.with_image_store(images.take().unwrap_or_else(|| image_store::memory(preload_bytes)), limits)
            }),
        };
        if store.is_none() {
            crate::log!("mgmt: no node disk: management state lives in memory only");
        }
        let facts = NodeFacts { disk: storage_summary, ..facts };
        match state {
            Ok(mut state) => {
                crate::log!("mgmt: landlord node key {}", state.landlord_key.to_hex());
                let preloaded = preload_images(&mut state, preloads);
                let serial = crate::arch::x86_64::com2::Com2::probe();
                if serial.is_some() {
                    crate::log!("mgmt: serving the management protocol on COM2 as well");
                }
                Some(Mgmt {
                    state,
                    conns: (0..crate::net::mgmt::MGMT_SOCKETS).map(|_| ports::Conn::default()).collect(),
                    admission: node_logic::admission::Admission::new(node_logic::admission::Limits::NODE),
                    report: ports::ConnReport::default(),
                    rx_buf: Vec::new(),
                    serial,
                    serial_session: None,
                    facts,
                    pending: Actions::default(),
                    config: config.clone(),
                    new_policy: None,
                    disk_effects: Vec::new(),
                    console_nics: BTreeMap::new(),
                    store,
                    dirty: fresh || preloaded,
                    lazy: false,
                    saved_at: 0,
                    monitor: monitor::Monitor::default(),
                    subscribe: None,
                    serving_serial: false,
                    boot_id: {
                        let mut b = [0u8; 8];
                        // No random source means no management plane at all
                        // (checked above), so this does not fail here.
                        let _ = rng::fill(&mut b);
                        u64::from_le_bytes(b)
                    },
                    storage: shared_storage,
                    gates: BTreeMap::new(),
                })
            }
            Err(_) => {
                crate::log!("mgmt: key generation failed; management plane disabled");
                None
            }
        }
    }

    /// Serves COM2: a serial line has no connections, so a session that
    /// fails or ends is replaced, and the bytes that broke it (a new
    /// console's hello) are offered to the fresh session once.
    pub fn serve_serial(&mut self, vms: &mut [crate::vm::Vm]) -> Actions {
        let Some(line) = self.serial.as_mut() else { return Actions::default() };
        let mut input = Vec::new();
        line.read(&mut input);
        if input.is_empty() {
            return Actions::default();
        }
        self.serving_serial = true;
        let actions = self.serve_serial_input(&input, vms);
        self.serving_serial = false;
        actions
    }

    fn serve_serial_input(&mut self, input: &[u8], vms: &mut [crate::vm::Vm]) -> Actions {
        let mut session = self.serial_session.take().unwrap_or_else(|| NodeSession::new(Box::new(Rdrand)));
        let failed_before = session.is_closed();
        if failed_before {
            session = NodeSession::new(Box::new(Rdrand));
        }
        if session.role().is_some() {
            // An established session either continues, or a new console
            // has started talking: then its hello does not decrypt.
            let mut probe = session;
            match probe.receive(input, &self.state.keys) {
                Ok(events) => {
                    session = probe;
                    self.handle_events(&mut session, events, vms);
                }
                Err(_) => {
                    crate::log!("mgmt: new console on COM2; previous session ended");
                    session = NodeSession::new(Box::new(Rdrand));
                    self.feed(&mut session, input, vms);
                }
            }
        } else {
            self.feed(&mut session, input, vms);
        }
        let out = session.take_output();
        if let Some(line) = self.serial.as_mut() {
            line.write(&out);
        }
        self.serial_session = Some(session);
        core::mem::take(&mut self.pending)
    }

    /// Applies the disk consequences of key regenerations; the state
    /// volume (landlord-owned) is rewritten afterwards if K_L changed.
    pub fn apply_disk_effects(&mut self, storage: Option<&mut crate::storage::Storage>) {
        if self.disk_effects.is_empty() {
            return;
        }
        let effects = core::mem::take(&mut self.disk_effects);
        let Some(storage) = storage else {
            crate::log!("mgmt: key regenerated; no node disk, so no volumes to erase");
            return;
        };
        for e in effects {
            let r = match e {
                DiskEffect::LandlordKey => storage.rotate_landlord_key(),
                DiskEffect::TenantKey { cluster } => storage.regenerate_tenant_key(cluster),
            };
            if let Err(why) = r {
                crate::log!("mgmt: disk consequence of a key regeneration failed: {why}");
            }
            if e == DiskEffect::LandlordKey {
                // The state volume was erased with the rest: write it again.
                self.dirty = true;
                self.lazy = false;
                // So was the image volume (images are sealed under K_L).
                if storage.is_physical() {
                    let n = self.state.drop_all_images();
                    crate::log!("mgmt: {n} image(s) crypto-erased with the landlord key; upload them again");
                }
            }
        }
    }

    /// Notes that the state changed; `minor` (audit-only) changes are saved
    /// lazily, anything else at the next round.
    fn changed(&mut self, minor: bool) {
        self.lazy = if self.dirty { self.lazy && minor } else { minor };
        self.dirty = true;
    }

    /// Writes the state to the encrypted disk if it changed.
    pub fn persist(&mut self) {
        use crate::arch::x86_64::time;
        if !self.dirty {
            return;
        }
        let now = time::rdtsc();
        if self.lazy && now.wrapping_sub(self.saved_at) < LAZY_SAVE_MS * time::tsc_per_ms() {
            return;
        }
        self.dirty = false;
        self.saved_at = now;
        if let Some(v) = self.store.as_mut() {
            if let Err(e) = persist::save(v, &self.state.snapshot()) {
                crate::log!("mgmt: state not saved: {e}");
            }
            let ms = time::rdtsc().wrapping_sub(now) / time::tsc_per_ms().max(1);
            if ms >= SLOW_SAVE_MS {
                crate::log!("mgmt: state saved in {ms} ms (slow: the management plane waited)");
            }
        }
    }

    /// Whether COM2 carries the management protocol.
    pub fn has_serial(&self) -> bool {
        self.serial.is_some()
    }

    /// Runs received bytes through the session.
    fn feed(&mut self, session: &mut NodeSession, input: &[u8], vms: &mut [crate::vm::Vm]) {
        let events = match session.receive(input, &self.state.keys) {
            Ok(ev) => ev,
            Err(e) => {
                self.note_refusal(session.role(), format!("{e}"));
                return;
            }
        };
        self.handle_events(session, events, vms);
    }

    /// Audits and answers what a session decoded.
    fn handle_events(&mut self, session: &mut NodeSession, events: Vec<NodeEvent>, vms: &mut [crate::vm::Vm]) {
        use crate::arch::x86_64::time;
        self.state.set_clock(time::tsc_to_ms(time::rdtsc()) / 1000);
        for ev in events {
            match ev {
                NodeEvent::Established { role, console_key } => {
                    crate::log!("mgmt: session established ({})", role_name(role));
                    self.state.log(Some(role), "connect", format!("ok (console {})", console_key.to_hex()));
                }
                NodeEvent::Request(env) => {
                    let Some(role) = session.role() else { return };
                    let result = self.handle(role, &env.body, vms);
                    if result.is_ok() && (agent::is_quiet(&env.body) || is_quiet_read(&env.body)) {
                        let _ = session.reply(env.seq, result);
                        continue;
                    }
                    let outcome = match (&result, &env.body) {
                        (Ok(_), Request::AgentOpen { op, .. }) => format!("ok: {}", agent::describe(op)),
                        (Ok(_), _) => String::from("ok"),
                        (Err(e), _) => format!("refused: {e}"),
                    };
                    // Chunks are many and alike: the audit log has them all.
                    if !(result.is_ok() && matches!(env.body, Request::UploadImageChunk { .. })) {
                        crate::log!("mgmt: {} {}: {}", role_name(role), env.body.name(), escape(&outcome));
                    }
                    // Reads and upload chunks only add audit entries: those
                    // are saved lazily; anything else at the next round.
                    let minor = matches!(
                        env.body,
                        Request::UploadImageChunk { .. }
                            | Request::NodeStatus
                            | Request::ListVms
                            | Request::ReadAudit { .. }
                            | Request::ReadCounters { .. }
                            | Request::ConsoleRead { .. }
                            | Request::Subscribe { .. }
                            | Request::GetPolicy { .. }
                    ) || result.is_err();
                    self.changed(minor);
                    self.state.log(Some(role), env.body.name(), outcome);
                    let _ = session.reply(env.seq, result);
                }
            }
        }
    }

    /// Requests the node answers from real state; the rest go to the state.
    fn handle(&mut self, role: Role, req: &Request, vms: &mut [crate::vm::Vm]) -> Result<Response, ErrorReply> {
        mgmt_proto::authz::authorize(&role, req, &self.state).map_err(|d| d.to_error())?;
        if agent::is_agent_request(req) {
            return agent::handle(&self.state, req, vms);
        }
        match req {
            Request::Subscribe { since, interval_ms } => {
                if self.serving_serial {
                    return Err(ErrorReply::new(
                        ErrorCode::Unsupported,
                        "subscriptions are served on the management port, not on COM2",
                    ));
                }
                let (sub, reply) =
                    ports::Subscription::new(role, *since, *interval_ms, &self.monitor.events, self.boot_id)?;
                self.subscribe = Some(sub);
                Ok(reply)
            }
            Request::SetPolicy { cluster, .. } => {
                let reply = self.handle_state(role, req, vms)?;
                if let Response::PolicySet { version } = &reply {
                    let owner = mgmt_proto::monitor::Owner::of(role);
                    self.monitor.record(
                        monitor::policy_scope(role),
                        mgmt_proto::monitor::EventKind::PolicySet { owner, cluster: *cluster, version: *version },
                        &format!("{} policy of cluster {} is now version {version}", role_name(role), cluster.0),
                    );
                }
                Ok(reply)
            }
            Request::Shutdown => {
                self.pending.shutdown = true;
                Ok(Response::Done)
            }
            Request::Reboot => {
                self.pending.reboot = true;
                Ok(Response::Done)
            }
            Request::StartVm { vm }
            | Request::RestartVm { vm }
            | Request::ReloadImage { vm }
            | Request::FleetStartVm { vm, .. } => {
                self.can_start(*vm)?;
                self.handle_state(role, req, vms)
            }
            Request::FenceVm { .. }
            | Request::PromoteReplica { .. }
            | Request::NotifyTenant { .. }
            | Request::DestroyVm { .. } => self.handle_fleet(role, req, vms),
            Request::SetClusterMembers { cluster, members } => {
                let mut m = self.state.fleet.members.clone();
                m.insert(*cluster, members.clone());
                let policy =
                    self.compile_with(None, None, Some(&m)).map_err(|e| ErrorReply::new(ErrorCode::Invalid, e))?;
                let reply = self.handle_state(role, req, vms)?;
                self.new_policy = Some(policy);
                Ok(reply)
            }
            Request::RotateLandlordKey => {
                let reply = self.handle_state(role, req, vms)?;
                self.disk_effects.push(DiskEffect::LandlordKey);
                Ok(reply)
            }
            Request::RegenerateTenantKey { lease, .. } => {
                let cluster = self.state.leases.get(lease).map(|l| l.cluster.0);
                let reply = self.handle_state(role, req, vms)?;
                if let Some(cluster) = cluster {
                    self.disk_effects.push(DiskEffect::TenantKey { cluster });
                }
                Ok(reply)
            }
            Request::RotateTenantKey => {
                let cluster = match role {
                    Role::Tenant(lease) => self.state.leases.get(&lease).map(|l| l.cluster.0),
                    Role::Landlord => None,
                };
                let reply = self.handle_state(role, req, vms)?;
                if let Some(cluster) = cluster {
                    self.disk_effects.push(DiskEffect::TenantKey { cluster });
                }
                Ok(reply)
            }
            Request::SetSubBoundary { rule } => {
                let Role::Tenant(lease) = role else { return self.handle_state(role, req, vms) };
                // Check it applies to the switch before accepting it.
                let mut sub = self.state.sub_rules.clone();
                sub.insert(RuleId(u32::MAX), (lease, *rule));
                let policy =
                    self.compile_with(None, Some(&sub), None).map_err(|e| ErrorReply::new(ErrorCode::Widening, e))?;
                let reply = self.handle_state(role, req, vms)?;
                self.new_policy = Some(policy);
                Ok(reply)
            }
            Request::SetClusterBoundary { cluster, rules: list } => {
                let mut b = self.state.boundaries.clone();
                b.insert(*cluster, list.clone());
                let policy =
                    self.compile_with(Some(&b), None, None).map_err(|e| ErrorReply::new(ErrorCode::Invalid, e))?;
                let reply = self.handle_state(role, req, vms)?;
                self.new_policy = Some(policy);
                Ok(reply)
            }
            Request::RemoveSubBoundary { .. } | Request::EndLease { .. } => {
                let reply = self.handle_state(role, req, vms)?;
                let policy =
                    self.compile_with(None, None, None).map_err(|e| ErrorReply::new(ErrorCode::Internal, e))?;
                self.new_policy = Some(policy);
                Ok(reply)
            }
            _ => self.handle_state(role, req, vms),
        }
    }

    /// Checks, before answering a start, what would make the VM fail to
    /// start, so the console hears the reason instead of "done".
    fn can_start(&self, vm: mgmt_proto::msg::VmId) -> Result<(), ErrorReply> {
        let Some(w) = self.state.vms.get(&vm) else { return Ok(()) }; // the state answers NotFound
        let spec = &w.spec;
        let invalid = |m: String| ErrorReply::new(ErrorCode::Invalid, m);
        node_logic::check_name(&spec.name)?;
        let image = self.state.images.get(&spec.image).ok_or_else(|| {
            ErrorReply::new(ErrorCode::NotFound, format!("image: no image named {:?} (upload it again)", spec.image))
        })?;
        let free_mib = (crate::mm::frames::free_count() as u64 * crate::mm::PAGE_SIZE) >> 20;
        // Guest RAM plus its page tables and device state.
        let need = u64::from(spec.memory_mib) + 2;
        if need > free_mib {
            return Err(ErrorReply::new(
                ErrorCode::Limit,
                format!("memory: the VM needs {} MiB, the node has {free_mib} MiB free", spec.memory_mib),
            ));
        }
        let initrd_size = match &spec.initrd {
            Some(name) => {
                self.state
                    .images
                    .get(name)
                    .ok_or_else(|| {
                        ErrorReply::new(
                            ErrorCode::NotFound,
                            format!("initrd: no image named {name:?} (upload it again)"),
                        )
                    })?
                    .size
            }
            None => 0,
        };
        let load = image.size.saturating_add(initrd_size);
        if !crate::mm::heap::has_room_for(usize::try_from(load).unwrap_or(usize::MAX)) {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                format!("not enough node memory to load the {} MiB of images now; retry", load >> 20),
            ));
        }
        if spec.ip.is_some() {
            reconcile::nic_cluster(&self.config, spec.cluster.0).map_err(|e| invalid(format!("cluster: {e}")))?;
        }
        if spec.disk_mib > 0 && self.facts.disk.is_none() {
            return Err(invalid(String::from("disk_mib: the node has no disk for this VM's volume")));
        }
        Ok(())
    }

    /// The switch policy with the consoles' rules, optionally with the
    /// boundaries or sub-rules replaced by a candidate being checked.
    pub(crate) fn compile_with(
        &self,
        boundaries: Option<&BTreeMap<ClusterId, Vec<BoundaryRule>>>,
        sub_rules: Option<&BTreeMap<RuleId, (LeaseId, BoundaryRule)>>,
        members: Option<&BTreeMap<ClusterId, Vec<[u8; 4]>>>,
    ) -> Result<vswitch::engine::CompiledPolicy, String> {
        let r = rules::ConsoleRules {
            leases: &self.state.leases,
            boundaries: boundaries.unwrap_or(&self.state.boundaries),
            sub_rules: sub_rules.unwrap_or(&self.state.sub_rules),
            nics: &self.console_nics.values().copied().collect::<Vec<_>>(),
            members: members.unwrap_or(&self.state.fleet.members),
        };
        rules::compile(&self.config, &r)
    }
}

/// Stores the node config's `[[image]]`s the image store does not hold
/// yet (by name and SHA-256), as a landlord upload would: logged and
/// audited one by one. Whether any was stored (the state changed).
fn preload_images(state: &mut NodeState, preloads: &[(&str, &[u8])]) -> bool {
    let mut stored = false;
    for (name, bytes) in preloads {
        let outcome = match state.preload_image(name, bytes) {
            Ok(true) => {
                stored = true;
                crate::log!("mgmt: image {} preloaded from the boot bundle ({} bytes)", escape(name), bytes.len());
                format!("{name}: stored ({} bytes)", bytes.len())
            }
            Ok(false) => {
                crate::log!("mgmt: image {} already stored", escape(name));
                format!("{name}: already stored")
            }
            Err(e) => {
                crate::log!("mgmt: image {} not preloaded: {}", escape(name), escape(&format!("{e}")));
                format!("{name}: refused: {e}")
            }
        };
        state.log(None, "preload-image", outcome);
    }
    stored
}

/// Landlord reads a facility controller polls (health during rollouts):
/// not audited or logged one by one when they succeed, like agent status.
fn is_quiet_read(req: &Request) -> bool {
    matches!(req, Request::FleetVmHealth { .. })
}

/// Time-driven work of the VMs' agent relays (hung agents, idle streams,
/// doorbells for pending credit).
pub fn agent_tick(vms: &mut [crate::vm::Vm]) {
    agent::tick(vms);
}

/// Client- or guest-supplied text made safe for the node log.
pub fn escape(s: &str) -> String {
    vmm_config::text::escape_control(s)
}

fn role_name(role: Role) -> String {
    match role {
        Role::Landlord => String::from("landlord"),
        Role::Tenant(l) => format!("tenant {}", l.0),
    }
}
