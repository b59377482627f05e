//! The facility controller's hands: [`facility::NodeDriver`] over the
//! authenticated console channel, as the landlord. One session per node is
//! kept and re-opened when it breaks; every call is bounded by the link
//! timeout. Leases and images a VM needs on a node are made there first.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use facility::driver::{BootImage, DriverError, NodeDriver, NodeReport, NodeVm, ReplicaBatch, ServiceHealth, VmHealth};
use facility::model::{NodeAddr, VmPlacementSpec};
use indicatif::ProgressBar;
use mgmt_proto::fleet::{FleetSpec, LeaseInfo, ReplicaBlock, VmHealthReport, MAX_REPLICA_BLOCKS};
use mgmt_proto::*;

use crate::client::{Client, ClientError, Link};
use crate::upload::{upload_image, UploadOptions};

/// The landlord's console driving a fleet. Clones share sessions, so the
/// lease keeper ([`super::cmd`]) renews fencing leases on the same ones.
#[derive(Clone)]
pub struct ConsoleDriver {
    secret: SecretKey,
    timeout: Duration,
    /// Bound on opening a connection: a node on the facility's segment
    /// answers in milliseconds, and a dead one must not hold a heartbeat
    /// round longer than its period.
    connect_timeout: Duration,
    /// Where image files named by VMs are (`DIR/NAME`).
    images: PathBuf,
    /// The fencing lease each heartbeat grants.
    fence_after_ms: u32,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// (node, VM) whose next pull must resync the whole volume.
    resync: Arc<Mutex<BTreeSet<(String, String)>>>,
}

/// One node's console session, opened on first use, dropped when broken.
type Session = Arc<Mutex<Option<Client>>>;

/// Most requests in flight on one session (replica copies).
const PIPELINE: usize = 4;

fn classify(node: &str, e: ClientError) -> DriverError {
    match e {
        ClientError::Refused(r) | ClientError::Node(r) => DriverError::Refused(format!("{node}: {r}")),
        ClientError::Protocol(_) | ClientError::Unexpected(_) | ClientError::Local(_) => {
            DriverError::Other(format!("{node}: {e}"))
        }
        other => DriverError::Unreachable(format!("{node}: {other}")),
    }
}

fn unexpected(node: &str, what: &str, r: &Response) -> DriverError {
    DriverError::Other(format!("{node}: unexpected answer to {what}: {r:?}"))
}

impl ConsoleDriver {
    /// A driver acting with the landlord console key `secret`.
    pub fn new(
        secret: SecretKey,
        timeout: Duration,
        connect_timeout: Duration,
        images: PathBuf,
        fence_after_ms: u32,
    ) -> ConsoleDriver {
        ConsoleDriver {
            secret,
            timeout,
            connect_timeout: connect_timeout.min(timeout),
            images,
            fence_after_ms,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            resync: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    fn slot(&self, n: &NodeAddr) -> Session {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(n.name.clone()).or_default().clone()
    }

    fn connect(&self, n: &NodeAddr) -> Result<Client, ClientError> {
        let key = PublicKey::from_hex(&n.node_key)
            .ok_or_else(|| ClientError::Local(format!("node {}: node key is not 64 hex digits", n.name)))?;
        let link = Link { node: n.addr.to_string(), timeout: self.timeout };
        let stream = std::net::TcpStream::connect_timeout(&n.addr, self.connect_timeout).map_err(|e| {
            if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                ClientError::Timeout { node: link.node.clone(), timeout: self.connect_timeout }
            } else {
                ClientError::Connect { node: link.node.clone(), reason: e.to_string() }
            }
        })?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true).ok();
        Client::handshake_tcp(stream, link, Role::Landlord, &self.secret, &key)
    }

    /// One request on the node's session; a broken session is re-opened
    /// once when `retry` (the request is safe to send twice).
    fn call(&self, n: &NodeAddr, req: Request, retry: bool) -> Result<Response, DriverError> {
        let slot = self.slot(n);
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.connect(n).map_err(|e| classify(&n.name, e))?);
            }
            let Some(c) = guard.as_mut() else { continue };
            match c.call(req.clone()) {
                Ok(r) => return Ok(r),
                Err(e @ (ClientError::Refused(_) | ClientError::Node(_))) => return Err(classify(&n.name, e)),
                Err(e) => {
                    *guard = None;
                    if !retry || attempt == 1 {
                        return Err(classify(&n.name, e));
                    }
                }
            }
        }
        Err(DriverError::Unreachable(format!("{}: no session", n.name)))
    }

    /// Several requests in flight on the node's session at once (at most
    /// [`PIPELINE`] unanswered), answers in order; not retried. Replica
    /// copies are long runs of alike requests: pipelining hides the round
    /// trip.
    fn pipeline(&self, n: &NodeAddr, reqs: Vec<Request>) -> Result<Vec<Response>, DriverError> {
        let slot = self.slot(n);
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.connect(n).map_err(|e| classify(&n.name, e))?);
        }
        let Some(c) = guard.as_mut() else { return Err(DriverError::Unreachable(format!("{}: no session", n.name))) };
        let total = reqs.len();
        let mut out = Vec::with_capacity(total);
        let mut sent = 0usize;
        let mut reqs = reqs.into_iter();
        let result = (|| {
            while out.len() < total {
                while sent < total && sent - out.len() < PIPELINE {
                    let Some(r) = reqs.next() else { break };
                    c.send(r)?;
                    sent += 1;
                }
                out.push(c.reply()?);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(out),
            Err(e @ (ClientError::Refused(_) | ClientError::Node(_))) => {
                // Answers to requests after the refused one are still on
                // the wire: start afresh.
                *guard = None;
                Err(classify(&n.name, e))
            }
            Err(e) => {
                *guard = None;
                Err(classify(&n.name, e))
            }
        }
    }

    fn done(&self, n: &NodeAddr, req: Request) -> Result<(), DriverError> {
        let what = req.name();
        match self.call(n, req, true)? {
            Response::Done => Ok(()),
            r => Err(unexpected(&n.name, what, &r)),
        }
    }

    /// VM `name`'s id on node `n`, if it has one.
    fn vm_id(&self, n: &NodeAddr, name: &str) -> Result<Option<VmId>, DriverError> {
        match self.call(n, Request::ListVms, true)? {
            Response::Vms(list) => Ok(list.into_iter().find(|v| v.spec.name == name).map(|v| v.id)),
            r => Err(unexpected(&n.name, "list-vms", &r)),
        }
    }

    fn need_vm(&self, n: &NodeAddr, name: &str) -> Result<VmId, DriverError> {
        self.vm_id(n, name)?.ok_or_else(|| DriverError::Refused(format!("{}: no VM named {name}", n.name)))
    }

    /// The lease of the VM's tenant and cluster on `n`, made if missing.
    fn lease(&self, n: &NodeAddr, vm: &VmPlacementSpec) -> Result<LeaseId, DriverError> {
        self.ensure_lease(n, &vm.tenant_console_key, vm.cluster).map(|l| l.lease)
    }

    /// The lease of tenant console key `tenant_key` (hex) for cluster
    /// `cluster` on `n`, made if missing. A cluster leased to another
    /// tenant there is refused (its disk key is that tenant's).
    pub fn ensure_lease(&self, n: &NodeAddr, tenant_key: &str, cluster: u32) -> Result<LeaseInfo, DriverError> {
        let key = PublicKey::from_hex(tenant_key)
            .ok_or_else(|| DriverError::Other(format!("tenant key {tenant_key:?} is not 64 hex digits")))?;
        let find = |leases: Vec<LeaseInfo>| -> Result<Option<LeaseInfo>, DriverError> {
            for l in leases {
                if l.cluster.0 == cluster {
                    return if l.console == key {
                        Ok(Some(l))
                    } else {
                        Err(DriverError::Refused(format!(
                            "{}: cluster {cluster} is leased to another tenant console there",
                            n.name
                        )))
                    };
                }
            }
            Ok(None)
        };
        if let Some(l) = find(self.leases(n)?)? {
            return Ok(l);
        }
        match self.call(n, Request::CreateLease { tenant_console_key: key, cluster: ClusterId(cluster) }, false)? {
            Response::LeaseCreated { .. } => {}
            r => return Err(unexpected(&n.name, "create-lease", &r)),
        }
        find(self.leases(n)?)?
            .ok_or_else(|| DriverError::Other(format!("{}: the lease just made is not listed", n.name)))
    }

    fn leases(&self, n: &NodeAddr) -> Result<Vec<LeaseInfo>, DriverError> {
        match self.call(n, Request::ListLeases, true)? {
            Response::Leases(l) => Ok(l),
            r => Err(unexpected(&n.name, "list-leases", &r)),
        }
    }

    /// Uploads the named images the node does not hold (same name and
    /// SHA-256) from the images directory.
    fn images(&self, n: &NodeAddr, names: &[&str]) -> Result<(), DriverError> {
        let held = match self.call(n, Request::ListImages { verify: false }, true)? {
            Response::Images(l) => l.images,
            r => return Err(unexpected(&n.name, "list-images", &r)),
        };
        for name in names {
            let path = self.images.join(name);
            let data = std::fs::read(&path)
                .map_err(|e| DriverError::Other(format!("image {name}: cannot read {}: {e}", path.display())))?;
            let digest = image_digest(&data);
            if held.iter().any(|i| i.name == *name && i.sha256 == digest) {
                continue;
            }
            let opts = UploadOptions {
                name: (*name).to_string(),
                lease: None,
                signature: None,
                chunk: MAX_CHUNK,
                retries: 2,
                backoff: Duration::from_millis(500),
                cancel: None,
            };
            let mut connect = || self.connect(n);
            upload_image(&mut connect, &data, &opts, &ProgressBar::hidden()).map_err(|e| classify(&n.name, e))?;
        }
        Ok(())
    }

    fn vm_spec(&self, n: &NodeAddr, vm: &VmPlacementSpec) -> Result<VmSpec, DriverError> {
        let mut names = vec![vm.image.as_str()];
        names.extend(vm.initrd.as_deref());
        self.images(n, &names)?;
        Ok(VmSpec {
            lease: self.lease(n, vm)?,
            name: vm.name.clone(),
            vcpus: vm.res.vcpus,
            memory_mib: vm.res.memory_mib,
            disk_mib: vm.res.disk_mib,
            image: vm.image.clone(),
            cluster: ClusterId(vm.cluster),
            cmdline: vm.cmdline.clone(),
            ip: vm.ip,
            initrd: vm.initrd.clone(),
        })
    }

    fn key_of(n: &NodeAddr) -> Result<PublicKey, DriverError> {
        PublicKey::from_hex(&n.node_key)
            .ok_or_else(|| DriverError::Other(format!("node {}: node key is not 64 hex digits", n.name)))
    }
}

impl NodeDriver for ConsoleDriver {
    fn status(&self, n: &NodeAddr) -> Result<NodeReport, DriverError> {
        let report = match self.call(n, Request::FleetHeartbeat { fence_after_ms: self.fence_after_ms }, false)? {
            Response::Fleet(r) => r,
            r => return Err(unexpected(&n.name, "fleet-heartbeat", &r)),
        };
        let (replicas, vms): (Vec<_>, Vec<_>) = report.vms.into_iter().partition(|v| v.replica);
        Ok(NodeReport {
            cpus: report.status.cpus,
            memory_mib_free: u32::try_from(report.status.memory_free_mib).unwrap_or(u32::MAX),
            disk_mib_free: u32::try_from(report.disk_free_mib).unwrap_or(u32::MAX),
            vms: vms
                .into_iter()
                .map(|v| NodeVm {
                    name: v.name,
                    instance: v.fleet.instance,
                    epoch: v.fleet.epoch,
                    running: v.state == VmState::Running,
                    fenced: v.fence > v.fleet.epoch,
                    self_fenced: v.self_fenced,
                })
                .collect(),
            replicas: replicas.into_iter().map(|v| (v.name, v.fence)).collect(),
        })
    }

    fn probe(&self, n: &NodeAddr, timeout: Duration) -> bool {
        std::net::TcpStream::connect_timeout(&n.addr, timeout).is_ok()
    }

    fn create_vm(&self, n: &NodeAddr, vm: &VmPlacementSpec, instance: u64, epoch: u64) -> Result<(), DriverError> {
        let spec = self.vm_spec(n, vm)?;
        let fleet = FleetSpec { mac: vm.mac, instance, epoch, protected: vm.protected };
        match self.call(n, Request::FleetCreateVm { spec, fleet }, true)? {
            Response::VmCreated { .. } => Ok(()),
            r => Err(unexpected(&n.name, "fleet-create-vm", &r)),
        }
    }

    fn start_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError> {
        let id = self.need_vm(n, vm)?;
        self.done(n, Request::FleetStartVm { vm: id, epoch })
    }

    fn stop_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        let id = self.need_vm(n, vm)?;
        self.done(n, Request::StopVm { vm: id })
    }

    fn destroy_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        match self.vm_id(n, vm)? {
            Some(id) => self.done(n, Request::DestroyVm { vm: id }),
            None => Ok(()),
        }
    }

    fn fence_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError> {
        match self.vm_id(n, vm)? {
            Some(id) => self.done(n, Request::FenceVm { vm: id, epoch }),
            None => Ok(()),
        }
    }

    fn set_cluster_filter(&self, n: &NodeAddr, cluster: u32, members: &[[u8; 4]]) -> Result<(), DriverError> {
        self.done(n, Request::SetClusterMembers { cluster: ClusterId(cluster), members: members.to_vec() })
    }

    fn replica_key(&self, primary: &NodeAddr, vm: &str, partner: &NodeAddr) -> Result<Vec<u8>, DriverError> {
        let id = self.need_vm(primary, vm)?;
        let partner = Self::key_of(partner)?;
        match self.call(primary, Request::ReplicaKey { vm: id, partner }, true)? {
            Response::SealedSecret(s) => Ok(s),
            r => Err(unexpected(&primary.name, "replica-key", &r)),
        }
    }

    fn replica_create(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        sealed_key: &[u8],
        from: &NodeAddr,
        instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError> {
        let spec = self.vm_spec(partner, vm)?;
        let fleet = FleetSpec { mac: vm.mac, instance, epoch, protected: true };
        let req = Request::ReplicaCreate { spec, fleet, from: Self::key_of(from)?, sealed: sealed_key.to_vec() };
        match self.call(partner, req, true)? {
            Response::VmCreated { .. } => Ok(()),
            r => Err(unexpected(&partner.name, "replica-create", &r)),
        }
    }

    fn replica_pull(&self, primary: &NodeAddr, vm: &str, max_blocks: u32) -> Result<ReplicaBatch, DriverError> {
        let id = self.need_vm(primary, vm)?;
        let key = (primary.name.clone(), vm.to_string());
        let resync = self.resync.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        // Pulls in flight together; the first carries the resync. Not
        // retried: blocks a lost answer carried are pending no more, so a
        // failure makes the next pull ask for a full resync instead.
        let n = max_blocks.div_ceil(MAX_REPLICA_BLOCKS).max(1);
        let reqs = (0..n)
            .map(|i| {
                let want = max_blocks.saturating_sub(i * MAX_REPLICA_BLOCKS).clamp(1, MAX_REPLICA_BLOCKS);
                Request::ReplicaPull { vm: id, max_blocks: want, resync: resync && i == 0 }
            })
            .collect();
        let answers = match self.pipeline(primary, reqs) {
            Ok(a) => a,
            Err(e) => {
                self.resync.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                return Err(e);
            }
        };
        let mut batch = ReplicaBatch::default();
        for a in answers {
            match a {
                Response::ReplicaBatch { blocks, remaining } => {
                    batch.remaining = remaining;
                    batch.blocks.extend(blocks.into_iter().map(|b| (b.index, b.bytes)));
                }
                r => {
                    self.resync.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                    return Err(unexpected(&primary.name, "replica-pull", &r));
                }
            }
        }
        Ok(batch)
    }

    fn replica_push(&self, partner: &NodeAddr, vm: &str, epoch: u64, batch: &ReplicaBatch) -> Result<(), DriverError> {
        let id = self.need_vm(partner, vm)?;
        let reqs = batch
            .blocks
            .chunks(MAX_REPLICA_BLOCKS as usize)
            .map(|chunk| {
                let blocks = chunk.iter().map(|(i, b)| ReplicaBlock { index: *i, bytes: b.clone() }).collect();
                Request::ReplicaPush { vm: id, epoch, blocks }
            })
            .collect();
        // In order on one session: the node applies them in order, so data
        // blocks still land before the records that name them.
        for a in self.pipeline(partner, reqs)? {
            if a != Response::Done {
                return Err(unexpected(&partner.name, "replica-push", &a));
            }
        }
        Ok(())
    }

    fn replica_resync(&self, primary: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.resync.lock().unwrap_or_else(|p| p.into_inner()).insert((primary.name.clone(), vm.to_string()));
        Ok(())
    }

    fn replica_drop(&self, partner: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.destroy_vm(partner, vm)
    }

    fn promote_replica(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError> {
        let id = self.need_vm(partner, &vm.name)?;
        self.done(partner, Request::PromoteReplica { vm: id, instance, epoch })
    }

    fn notify_tenant(&self, n: &NodeAddr, vm: &str, text: &str) -> Result<(), DriverError> {
        let id = self.need_vm(n, vm)?;
        let text: String = text.chars().filter(|c| !c.is_control()).take(mgmt_proto::fleet::MAX_NOTICE).collect();
        self.done(n, Request::NotifyTenant { vm: id, text })
    }

    fn vm_health(&self, n: &NodeAddr, vm: &str) -> Result<VmHealth, DriverError> {
        let id = self.need_vm(n, vm)?;
        match self.call(n, Request::FleetVmHealth { vm: id }, true)? {
            Response::VmHealth(report) => health_of(&n.name, report),
            r => Err(unexpected(&n.name, "fleet-vm-health", &r)),
        }
    }

    fn set_vm_image(&self, n: &NodeAddr, vm: &str, boot: &BootImage) -> Result<(), DriverError> {
        let id = self.need_vm(n, vm)?;
        let mut names = vec![boot.image.as_str()];
        names.extend(boot.initrd.as_deref());
        self.images(n, &names)?;
        let req = Request::FleetSetImage {
            vm: id,
            image: boot.image.clone(),
            initrd: boot.initrd.clone(),
            cmdline: boot.cmdline.clone(),
        };
        self.done(n, req)
    }
}

/// A node's health report as the controller takes it: checked against the
/// protocol's bounds first (the node relays what a guest said; a report
/// past them is refused as a protocol error, not believed).
fn health_of(node: &str, report: VmHealthReport) -> Result<VmHealth, DriverError> {
    report.check().map_err(|e| DriverError::Other(format!("{node}: health report out of bounds: {e}")))?;
    Ok(VmHealth {
        running: report.running,
        agent_attached: report.agent_attached,
        agent_hung: report.agent_hung,
        since_heartbeat_ms: report.since_heartbeat_ms,
        heartbeats: report.heartbeats,
        services: report
            .services
            .into_iter()
            .map(|s| ServiceHealth { name: s.name, last_event: s.last_event, up: s.up })
            .collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mgmt_proto::fleet::ServiceHealthReport;

    fn report() -> VmHealthReport {
        VmHealthReport {
            running: true,
            agent_attached: true,
            agent_hung: false,
            since_heartbeat_ms: Some(40),
            heartbeats: 9,
            services: vec![ServiceHealthReport { name: "api".into(), last_event: "started pid 4".into(), up: true }],
        }
    }

    #[test]
    fn a_health_report_maps_field_for_field() {
        let h = health_of("n1", report()).unwrap();
        assert!(h.running && h.agent_attached && !h.agent_hung);
        assert_eq!((h.since_heartbeat_ms, h.heartbeats), (Some(40), 9));
        assert_eq!(h.service("api").map(|s| (s.last_event.as_str(), s.up)), Some(("started pid 4", true)));
    }

    #[test]
    fn a_health_report_past_its_bounds_is_not_believed() {
        let mut many = report();
        many.services = (0..=mgmt_proto::fleet::MAX_HEALTH_SERVICES)
            .map(|i| ServiceHealthReport { name: format!("s{i}"), last_event: String::new(), up: false })
            .collect();
        assert!(matches!(health_of("n1", many), Err(DriverError::Other(m)) if m.contains("MAX_HEALTH_SERVICES")));
        let mut escape = report();
        escape.services[0].name = "api\u{1b}[2J".into();
        assert!(health_of("n1", escape).is_err());
        let stopped_but_talking = VmHealthReport { running: false, ..report() };
        assert!(health_of("n1", stopped_but_talking).is_err());
    }
}
