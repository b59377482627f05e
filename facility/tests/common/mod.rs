//! An in-memory fleet of fake nodes and an in-memory store, for the
//! controller's scenarios. Nodes can die, be partitioned (alive, keeping
//! their VMs, unreachable), come back, and refuse stale epochs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use facility::driver::{BootImage, DriverError, NodeDriver, NodeReport, NodeVm, ReplicaBatch, ServiceHealth, VmHealth};
use facility::model::{FacilityState, NodeAddr, Resources, VmPlacementSpec};
use facility::store::{Rev, Store, StoreError};
use facility::{ControlError, Controller, ControllerConfig};

pub type Disk = BTreeMap<u64, Vec<u8>>;

#[derive(Clone, Debug, Default)]
pub struct FVm {
    pub instance: u64,
    pub epoch: u64,
    pub min_epoch: u64,
    pub running: bool,
    pub fenced: bool,
    pub protected: bool,
    pub disk: Disk,
    /// Blocks written since the replica last took them.
    pub dirty: BTreeSet<u64>,
    /// What it boots (None: the image it was created with).
    pub boot: Option<BootImage>,
}

#[derive(Clone, Debug, Default)]
pub struct FNode {
    pub up: bool,
    pub cpus: u32,
    pub mem: u32,
    pub disk: u32,
    pub vms: BTreeMap<String, FVm>,
    pub replicas: BTreeMap<String, (u64, Disk)>,
    /// What each replica boots once promoted: its spec when it was made
    /// (as on a BMonitor node, promotion does not change it).
    pub replica_boot: BTreeMap<String, BootImage>,
    pub filters: BTreeMap<u32, Vec<[u8; 4]>>,
    pub filter_calls: u32,
    pub notes: Vec<String>,
}

#[derive(Default)]
pub struct Fleet {
    pub nodes: Mutex<BTreeMap<String, FNode>>,
    /// (node, call) log of mutating calls.
    pub calls: Mutex<Vec<(String, String)>>,
    /// Fail the next N replica pushes.
    pub fail_pushes: Mutex<u32>,
    pub filter_delay: Duration,
    /// Services every running VM's agent reports up.
    pub services: Mutex<Vec<String>>,
    /// Services reported down (exited) instead.
    pub down_services: Mutex<BTreeSet<String>>,
    /// VMs whose services all report down.
    pub sick_vms: Mutex<BTreeSet<String>>,
}

/// What a VM defined from `vm` boots.
pub fn boot_of(vm: &VmPlacementSpec) -> BootImage {
    BootImage { image: vm.image.clone(), initrd: vm.initrd.clone(), cmdline: vm.cmdline.clone() }
}

fn unreachable(n: &str) -> DriverError {
    DriverError::Unreachable(format!("{n}: no answer"))
}

impl Fleet {
    pub fn new(names: &[&str], cpus: u32, mem: u32) -> Self {
        let f = Fleet { filter_delay: Duration::from_millis(30), ..Fleet::default() };
        for n in names {
            f.nodes
                .lock()
                .unwrap()
                .insert(n.to_string(), FNode { up: true, cpus, mem, disk: 100_000, ..FNode::default() });
        }
        f
    }

    pub fn addr(name: &str, i: u16) -> NodeAddr {
        NodeAddr { name: name.into(), addr: ([10, 0, 0, 1], 7700 + i).into(), node_key: format!("{i:064x}") }
    }

    /// The node stops answering and loses everything (power off).
    pub fn kill(&self, n: &str) {
        let mut g = self.nodes.lock().unwrap();
        let node = g.get_mut(n).unwrap();
        node.up = false;
        for v in node.vms.values_mut() {
            v.running = false;
        }
    }

    /// Unreachable but alive: unprotected VMs keep running; the fencing
    /// lease runs out, so protected ones stop.
    pub fn partition(&self, n: &str) {
        let mut g = self.nodes.lock().unwrap();
        let node = g.get_mut(n).unwrap();
        node.up = false;
        for v in node.vms.values_mut() {
            if v.protected {
                v.running = false;
            }
        }
    }

    pub fn heal_partition(&self, n: &str) {
        self.nodes.lock().unwrap().get_mut(n).unwrap().up = true;
    }

    /// The guest writes a block (only a running, unfenced copy can).
    pub fn write(&self, n: &str, vm: &str, block: u64, data: &[u8]) -> bool {
        let mut g = self.nodes.lock().unwrap();
        let Some(v) = g.get_mut(n).and_then(|x| x.vms.get_mut(vm)) else {
            return false;
        };
        if !v.running || v.fenced {
            return false;
        }
        v.disk.insert(block, data.to_vec());
        v.dirty.insert(block);
        true
    }

    /// Where `vm` runs (node names).
    pub fn running_copies(&self, vm: &str) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| n.vms.get(vm).is_some_and(|v| v.running))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every node that has `vm` defined (running or not).
    pub fn copies(&self, vm: &str) -> Vec<String> {
        self.nodes.lock().unwrap().iter().filter(|(_, n)| n.vms.contains_key(vm)).map(|(k, _)| k.clone()).collect()
    }

    pub fn disk(&self, n: &str, vm: &str) -> Option<Disk> {
        self.nodes.lock().unwrap().get(n)?.vms.get(vm).map(|v| v.disk.clone())
    }

    pub fn count(&self, node: &str, call: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(n, c)| n == node && c == call).count()
    }

    fn rec(&self, n: &NodeAddr, call: &str) {
        self.calls.lock().unwrap().push((n.name.clone(), call.to_string()));
    }

    fn with<T>(&self, n: &NodeAddr, f: impl FnOnce(&mut FNode) -> Result<T, DriverError>) -> Result<T, DriverError> {
        let mut g = self.nodes.lock().unwrap();
        match g.get_mut(&n.name) {
            Some(node) if node.up => f(node),
            _ => Err(unreachable(&n.name)),
        }
    }
}

impl NodeDriver for Fleet {
    fn status(&self, n: &NodeAddr) -> Result<NodeReport, DriverError> {
        self.with(n, |node| {
            Ok(NodeReport {
                cpus: node.cpus,
                memory_mib_free: node.mem,
                disk_mib_free: node.disk,
                vms: node
                    .vms
                    .iter()
                    .map(|(k, v)| NodeVm {
                        name: k.clone(),
                        instance: v.instance,
                        epoch: v.epoch,
                        running: v.running,
                        fenced: v.fenced,
                        self_fenced: false,
                    })
                    .collect(),
                replicas: node.replicas.iter().map(|(k, (e, _))| (k.clone(), *e)).collect(),
            })
        })
    }

    fn probe(&self, n: &NodeAddr, _timeout: Duration) -> bool {
        self.nodes.lock().unwrap().get(&n.name).is_some_and(|x| x.up)
    }

    fn create_vm(&self, n: &NodeAddr, vm: &VmPlacementSpec, instance: u64, epoch: u64) -> Result<(), DriverError> {
        self.rec(n, "create");
        self.with(n, |node| match node.vms.get(&vm.name) {
            Some(v) if v.instance == instance => Ok(()),
            Some(_) => Err(DriverError::Refused("another instance exists".into())),
            None => {
                node.vms.insert(
                    vm.name.clone(),
                    FVm {
                        instance,
                        epoch,
                        min_epoch: epoch,
                        protected: vm.protected,
                        boot: Some(boot_of(vm)),
                        ..FVm::default()
                    },
                );
                Ok(())
            }
        })
    }

    fn start_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError> {
        self.rec(n, "start");
        self.with(n, |node| {
            let v = node.vms.get_mut(vm).ok_or(DriverError::Refused("no such VM".into()))?;
            if epoch < v.min_epoch || epoch < v.epoch {
                return Err(DriverError::Refused(format!("stale epoch {epoch} < {}", v.min_epoch.max(v.epoch))));
            }
            v.epoch = epoch;
            v.running = true;
            v.fenced = false;
            Ok(())
        })
    }

    fn stop_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.rec(n, "stop");
        self.with(n, |node| {
            if let Some(v) = node.vms.get_mut(vm) {
                v.running = false;
            }
            Ok(())
        })
    }

    fn destroy_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.rec(n, "destroy");
        self.with(n, |node| {
            node.vms.remove(vm);
            Ok(())
        })
    }

    fn fence_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError> {
        self.rec(n, "fence");
        self.with(n, |node| {
            if let Some(v) = node.vms.get_mut(vm) {
                v.running = false;
                v.fenced = true;
                v.min_epoch = v.min_epoch.max(epoch);
            }
            Ok(())
        })
    }

    fn set_cluster_filter(&self, n: &NodeAddr, cluster: u32, members: &[[u8; 4]]) -> Result<(), DriverError> {
        std::thread::sleep(self.filter_delay);
        self.with(n, |node| {
            node.filters.insert(cluster, members.to_vec());
            node.filter_calls += 1;
            Ok(())
        })
    }

    fn replica_key(&self, primary: &NodeAddr, vm: &str, partner: &NodeAddr) -> Result<Vec<u8>, DriverError> {
        self.with(primary, |_| Ok(format!("sealed:{vm}:{}", partner.name).into_bytes()))
    }

    fn replica_create(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        sealed_key: &[u8],
        from: &NodeAddr,
        _instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError> {
        self.rec(partner, "replica_create");
        if sealed_key != format!("sealed:{}:{}", vm.name, partner.name).as_bytes() {
            return Err(DriverError::Refused("key not sealed for this node".into()));
        }
        self.with(partner, |node| {
            if node.replicas.get(&vm.name).is_some_and(|(e, _)| *e > epoch) {
                return Err(DriverError::Refused("stale epoch".into()));
            }
            // As on BMonitor: one name is either a VM or a replica here.
            if node.vms.contains_key(&vm.name) {
                return Err(DriverError::Refused("this instance runs here as the primary, not a replica".into()));
            }
            node.replicas.insert(vm.name.clone(), (epoch, Disk::new()));
            node.replica_boot.insert(vm.name.clone(), boot_of(vm));
            Ok(())
        })?;
        self.replica_resync(from, &vm.name)
    }

    fn replica_pull(&self, primary: &NodeAddr, vm: &str, max_blocks: u32) -> Result<ReplicaBatch, DriverError> {
        self.with(primary, |node| {
            let v = node.vms.get_mut(vm).ok_or(DriverError::Refused("no such VM".into()))?;
            let take: Vec<u64> = v.dirty.iter().take(max_blocks as usize).copied().collect();
            let mut blocks = Vec::new();
            for b in take {
                v.dirty.remove(&b);
                blocks.push((b, v.disk.get(&b).cloned().unwrap_or_default()));
            }
            Ok(ReplicaBatch { blocks, remaining: v.dirty.len() as u64 })
        })
    }

    fn replica_push(&self, partner: &NodeAddr, vm: &str, epoch: u64, batch: &ReplicaBatch) -> Result<(), DriverError> {
        {
            let mut f = self.fail_pushes.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(DriverError::Unreachable("push dropped".into()));
            }
        }
        self.with(partner, |node| {
            let (e, d) = node.replicas.get_mut(vm).ok_or(DriverError::Refused("no replica".into()))?;
            if epoch < *e {
                return Err(DriverError::Refused(format!("stale epoch {epoch} < {e}")));
            }
            *e = epoch;
            for (b, data) in &batch.blocks {
                d.insert(*b, data.clone());
            }
            Ok(())
        })
    }

    fn replica_resync(&self, primary: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.with(primary, |node| {
            if let Some(v) = node.vms.get_mut(vm) {
                v.dirty = v.disk.keys().copied().collect();
            }
            Ok(())
        })
    }

    fn replica_drop(&self, partner: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        self.rec(partner, "replica_drop");
        self.with(partner, |node| {
            node.replicas.remove(vm);
            Ok(())
        })
    }

    fn promote_replica(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError> {
        self.rec(partner, "promote");
        self.with(partner, |node| {
            if node.vms.get(&vm.name).is_some_and(|v| v.instance == instance) {
                return Ok(());
            }
            // As a BMonitor node: promotion must go above every epoch the
            // replica has seen (pushes raise it).
            let seen = node
                .replicas
                .get(&vm.name)
                .map(|(e, _)| *e)
                .ok_or(DriverError::Refused("no replica to promote".into()))?;
            if epoch <= seen {
                return Err(DriverError::Refused(format!("epoch: must be above {seen}")));
            }
            let (_, disk) =
                node.replicas.remove(&vm.name).ok_or(DriverError::Refused("no replica to promote".into()))?;
            node.vms.insert(
                vm.name.clone(),
                FVm {
                    instance,
                    epoch,
                    min_epoch: epoch,
                    protected: vm.protected,
                    disk,
                    boot: node.replica_boot.get(&vm.name).cloned(),
                    ..FVm::default()
                },
            );
            Ok(())
        })
    }

    fn notify_tenant(&self, n: &NodeAddr, vm: &str, text: &str) -> Result<(), DriverError> {
        self.rec(n, "notify");
        self.with(n, |node| {
            node.notes.push(format!("{vm}: {text}"));
            Ok(())
        })
    }

    fn vm_health(&self, n: &NodeAddr, vm: &str) -> Result<VmHealth, DriverError> {
        let services = self.services.lock().unwrap().clone();
        let mut down = self.down_services.lock().unwrap().clone();
        if self.sick_vms.lock().unwrap().contains(vm) {
            down.extend(services.iter().cloned());
        }
        self.with(n, |node| {
            let v = node.vms.get(vm).ok_or(DriverError::Refused("no such VM".into()))?;
            if !v.running {
                return Ok(VmHealth::default());
            }
            Ok(VmHealth {
                running: true,
                agent_attached: true,
                agent_hung: false,
                since_heartbeat_ms: Some(100),
                heartbeats: 5,
                services: services
                    .iter()
                    .map(|s| ServiceHealth {
                        name: s.clone(),
                        up: !down.contains(s),
                        last_event: if down.contains(s) {
                            "exited with status 1".into()
                        } else {
                            "started pid 7".into()
                        },
                    })
                    .collect(),
            })
        })
    }

    fn set_vm_image(&self, n: &NodeAddr, vm: &str, boot: &BootImage) -> Result<(), DriverError> {
        self.rec(n, "set-image");
        self.with(n, |node| {
            let v = node.vms.get_mut(vm).ok_or(DriverError::Refused("no such VM".into()))?;
            if v.running {
                return Err(DriverError::Refused("stop the VM first".into()));
            }
            v.boot = Some(boot.clone());
            Ok(())
        })
    }
}

impl NodeDriver for &Fleet {
    fn status(&self, n: &NodeAddr) -> Result<NodeReport, DriverError> {
        (**self).status(n)
    }
    fn probe(&self, n: &NodeAddr, t: Duration) -> bool {
        (**self).probe(n, t)
    }
    fn create_vm(&self, n: &NodeAddr, vm: &VmPlacementSpec, i: u64, e: u64) -> Result<(), DriverError> {
        (**self).create_vm(n, vm, i, e)
    }
    fn start_vm(&self, n: &NodeAddr, vm: &str, e: u64) -> Result<(), DriverError> {
        (**self).start_vm(n, vm, e)
    }
    fn stop_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        (**self).stop_vm(n, vm)
    }
    fn destroy_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        (**self).destroy_vm(n, vm)
    }
    fn fence_vm(&self, n: &NodeAddr, vm: &str, e: u64) -> Result<(), DriverError> {
        (**self).fence_vm(n, vm, e)
    }
    fn set_cluster_filter(&self, n: &NodeAddr, c: u32, m: &[[u8; 4]]) -> Result<(), DriverError> {
        (**self).set_cluster_filter(n, c, m)
    }
    fn replica_key(&self, p: &NodeAddr, vm: &str, q: &NodeAddr) -> Result<Vec<u8>, DriverError> {
        (**self).replica_key(p, vm, q)
    }
    fn replica_create(
        &self,
        p: &NodeAddr,
        vm: &VmPlacementSpec,
        k: &[u8],
        f: &NodeAddr,
        i: u64,
        e: u64,
    ) -> Result<(), DriverError> {
        (**self).replica_create(p, vm, k, f, i, e)
    }
    fn replica_pull(&self, p: &NodeAddr, vm: &str, m: u32) -> Result<ReplicaBatch, DriverError> {
        (**self).replica_pull(p, vm, m)
    }
    fn replica_push(&self, p: &NodeAddr, vm: &str, e: u64, b: &ReplicaBatch) -> Result<(), DriverError> {
        (**self).replica_push(p, vm, e, b)
    }
    fn replica_resync(&self, p: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        (**self).replica_resync(p, vm)
    }
    fn replica_drop(&self, p: &NodeAddr, vm: &str) -> Result<(), DriverError> {
        (**self).replica_drop(p, vm)
    }
    fn promote_replica(&self, p: &NodeAddr, vm: &VmPlacementSpec, i: u64, e: u64) -> Result<(), DriverError> {
        (**self).promote_replica(p, vm, i, e)
    }
    fn notify_tenant(&self, n: &NodeAddr, vm: &str, t: &str) -> Result<(), DriverError> {
        (**self).notify_tenant(n, vm, t)
    }
    fn vm_health(&self, n: &NodeAddr, vm: &str) -> Result<VmHealth, DriverError> {
        (**self).vm_health(n, vm)
    }
    fn set_vm_image(&self, n: &NodeAddr, vm: &str, b: &BootImage) -> Result<(), DriverError> {
        (**self).set_vm_image(n, vm, b)
    }
}

/// A store in memory with the same compare-and-swap as the real ones.
#[derive(Default)]
pub struct MemStore {
    pub inner: Mutex<(FacilityState, u64)>,
}

impl Store for MemStore {
    fn load(&self) -> Result<(FacilityState, Rev), StoreError> {
        let g = self.inner.lock().unwrap();
        Ok((g.0.clone(), Rev(g.1)))
    }
    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError> {
        let mut g = self.inner.lock().unwrap();
        if g.1 != expect.0 {
            return Err(StoreError::Conflict { expected: expect, found: Rev(g.1) });
        }
        g.0 = st.clone();
        g.1 += 1;
        Ok(Rev(g.1))
    }
}

impl Store for &MemStore {
    fn load(&self) -> Result<(FacilityState, Rev), StoreError> {
        (**self).load()
    }
    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError> {
        (**self).save(st, expect)
    }
}

pub fn spec(name: &str, cluster: u32, mem: u32, ip: u8, protected: bool) -> VmPlacementSpec {
    VmPlacementSpec {
        name: name.into(),
        tenant: "t1".into(),
        tenant_console_key: "00".repeat(32),
        cluster,
        res: Resources { vcpus: 1, memory_mib: mem, disk_mib: 64 },
        image: "web".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        ip: Some([10, 1, 0, ip]),
        mac: [2, 0, 0, 0, 0, ip],
        protected,
        service: None,
        domain: None,
        version: None,
    }
}

/// A controller over `fleet` and `store`, with `names` enrolled.
pub type Ctl<'a> = Controller<&'a Fleet, &'a MemStore>;

/// A controller with the nodes `names` enrolled (addresses from [`Fleet::addr`]).
pub fn setup<'a>(fleet: &'a Fleet, store: &'a MemStore, names: &[&str]) -> Ctl<'a> {
    let mut c = Controller::new(fleet, store, ControllerConfig::default()).unwrap();
    for (i, n) in names.iter().enumerate() {
        c.add_node(Fleet::addr(n, i as u16), None).unwrap();
    }
    c
}

/// Tick once per heartbeat interval, `n` times; Halted is returned as is.
pub fn ticks<D: NodeDriver, S: Store>(c: &mut Controller<D, S>, t: &mut Instant, n: u32) -> Result<(), ControlError> {
    for _ in 0..n {
        *t += Duration::from_secs(1);
        c.tick(*t)?;
    }
    Ok(())
}
