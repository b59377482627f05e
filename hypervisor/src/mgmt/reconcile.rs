//! Keeps the running VMs in step with the management state: a VM the
//! consoles started runs (a restart is a fresh VM), one they stopped or
//! destroyed stops, and one that exited by itself is reported stopped.

use super::Mgmt;
use crate::net::switchboard::Switchboard;
use crate::storage::{GuestDisk, Storage};
use crate::virt::Backend;
use crate::virt::StopReason;
use crate::vm::build::{build_vm_with, Attachments, ImageSource, NodeResources};
use crate::vm::Vm;
use alloc::string::String;
use alloc::vec::Vec;
use mgmt_proto::msg::{VmId, VmState};
use vmm_config::config::{NodeConfig, VmConfig};
use vswitch::config::ExtraNic;
use vswitch::policy::PortId;

/// The uploaded images a VM boots (kernel, and its initrd if any), read
/// from the image store for the VM builder.
struct Uploaded {
    images: Vec<(String, Vec<u8>)>,
}

impl ImageSource for Uploaded {
    fn image(&self, name: &str) -> Option<&[u8]> {
        self.images.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }
}

/// Reads image `name` for a VM start, if the heap has room for it (the
/// loader copies it into guest memory; the buffer is freed right after).
pub(super) fn read_image(m: &mut Mgmt, name: &str) -> Result<Vec<u8>, String> {
    let size = m.state.images.get(name).map(|i| i.size).ok_or_else(|| alloc::format!("no image named {name:?}"))?;
    let size = usize::try_from(size).map_err(|_| String::from("image too large"))?;
    if !crate::mm::heap::has_room_for(size) {
        return Err(alloc::format!("not enough node memory to load a {} MiB image now", size >> 20));
    }
    m.state.image_bytes(name)
}

/// Checks that `cluster` is one of the node's (a console VM's NIC joins it).
pub(super) fn nic_cluster(config: &NodeConfig, cluster: u32) -> Result<(), String> {
    if cluster == 0 || cluster as usize > config.clusters.len() {
        return Err(alloc::format!("a NIC needs one of this node's clusters (1..={})", config.clusters.len()));
    }
    Ok(())
}

/// The volume of a console-created VM.
pub(super) fn volume_name(id: u32) -> String {
    alloc::format!("vm{id}")
}

/// Switch port of a console-created VM's NIC (config VMs use 1..).
fn nic_port(id: u32) -> PortId {
    PortId(0x1_0000 + id)
}

/// MAC of a console-created VM's NIC: locally administered, "BM", 1, id.
fn nic_mac(id: u32) -> [u8; 6] {
    let [_, _, hi, lo] = id.to_be_bytes();
    [0x02, 0x42, 0x4D, 0x01, hi, lo]
}

/// One pass of reconciliation.
pub fn reconcile(
    m: &mut Mgmt,
    vms: &mut Vec<Vm>,
    config: &NodeConfig,
    backend: Backend,
    mut storage: Option<&mut Storage>,
    switch: &mut Switchboard,
) {
    let mut nics_changed = false;
    // Stop what is no longer wanted (stopped, restarted or destroyed).
    for vm in vms.iter_mut().filter(|v| v.is_running()) {
        let Some((id, generation)) = vm.managed else { continue };
        let reason = match m.state.vms.get(&VmId(id)) {
            None => Some("destroyed by console"),
            Some(w) if w.state != VmState::Running => Some("stopped by console"),
            Some(w) if w.starts != generation => Some("restarted by console"),
            Some(_) => None,
        };
        if let Some(why) = reason {
            vm.stop(StopReason::Console(why));
        }
    }
    // Stopped console VMs leave the switch.
    for vm in vms.iter().filter(|v| !v.is_running()) {
        let Some((id, _)) = vm.managed else { continue };
        if m.console_nics.remove(&id).is_some() {
            switch.remove_port(nic_port(id));
            nics_changed = true;
        }
    }
    // Destroyed VMs give their disks back.
    for vm in vms.iter_mut().filter(|v| !v.is_running()) {
        let Some((id, _)) = vm.managed else { continue };
        if !m.state.vms.contains_key(&VmId(id)) {
            if let Some(st) = storage.as_deref_mut() {
                st.delete_volume(&volume_name(id));
            }
            vm.managed = None;
        }
    }
    // Start what is wanted and not running.
    let wanted: Vec<(u32, u64)> =
        m.state.vms.iter().filter(|(_, w)| w.state == VmState::Running).map(|(id, w)| (id.0, w.starts)).collect();
    for (id, generation) in wanted {
        if vms.iter().any(|v| v.managed == Some((id, generation))) {
            continue;
        }
        let Some(spec) = m.state.vms.get(&VmId(id)).map(|w| w.spec.clone()) else { continue };
        let cfg = VmConfig {
            name: spec.name.clone(),
            memory_mib: spec.memory_mib,
            kernel: spec.image.clone(),
            cmdline: spec.cmdline.clone(),
            module: spec.initrd.clone(),
            ..Default::default()
        };
        let index = vms.len();
        let built = match (cfg.validate(index), u16::try_from(index)) {
            (Err(e), _) => Err(alloc::format!("{e}")),
            (_, Err(_)) => Err(String::from("too many VMs")),
            (Ok(()), Ok(n)) => {
                let image = spec.image.clone();
                let loaded = read_image(m, &image).and_then(|kernel| {
                    let mut images = alloc::vec![(image.clone(), kernel)];
                    if let Some(initrd) = spec.initrd.clone() {
                        let bytes = read_image(m, &initrd).map_err(|e| alloc::format!("initrd: {e}"))?;
                        images.push((initrd, bytes));
                    }
                    Ok(Uploaded { images })
                });
                loaded.and_then(|images| {
                    // Devices first: the VM's firmware tables list them.
                    let mut extra = Attachments::default();
                    if let Some(ip) = spec.ip {
                        let mac = m.fleet_mac(id).unwrap_or_else(|| nic_mac(id));
                        let nic = ExtraNic { cluster: spec.cluster.0, mac, ip };
                        nic_cluster(config, nic.cluster)?;
                        switch.add_port(nic_port(id), nic.mac, nic.ip)?;
                        m.console_nics.insert(id, nic);
                        nics_changed = true;
                        extra.nic = Some((nic.mac, nic_port(id)));
                        let a = core::net::Ipv4Addr::from(ip);
                        let base = crate::devices::virtio::slot(crate::devices::virtio::NIC_SLOT).0;
                        crate::log!("vm {} nic: virtio-net at {base:#x}, ip {a}, cluster {}", spec.name, nic.cluster);
                    }
                    if spec.disk_mib > 0 {
                        let st = storage.as_deref_mut().ok_or("the node has no disk for this VM's volume")?;
                        let volume = st.volume_for_lease(&volume_name(id), spec.cluster.0, spec.disk_mib)?;
                        let disk = GuestDisk::new(volume, &spec.name);
                        extra.disk = Some(match m.gate_for(id) {
                            Some((gate, epoch)) => disk.with_gate(gate, epoch),
                            None => disk,
                        });
                    }
                    let node = NodeResources { config, images: &images, nics: &[], storage: None };
                    Ok(build_vm_with(n, &cfg, node, backend, extra))
                })
            }
        };
        match built {
            Ok(mut vm) => {
                vm.managed = Some((id, generation));
                vms.push(vm);
            }
            Err(why) => {
                if m.console_nics.remove(&id).is_some() {
                    switch.remove_port(nic_port(id));
                }
                crate::log!("mgmt: vm {} cannot start: {}", super::escape(&spec.name), super::escape(&why));
                if let Some(w) = m.state.vms.get_mut(&VmId(id)) {
                    w.state = VmState::Stopped;
                }
            }
        }
    }
    // Membership changed: the boundary learns the new NICs.
    if nics_changed {
        match m.compile_with(None, None, None) {
            Ok(p) => m.new_policy = Some(p),
            Err(e) => crate::log!("mgmt: switch policy not updated: {e}"),
        }
    }
    // Report back: exits.
    for vm in vms.iter() {
        let Some((id, generation)) = vm.managed else { continue };
        let Some(w) = m.state.vms.get_mut(&VmId(id)) else { continue };
        if w.starts != generation {
            continue;
        }
        if !vm.is_running() && w.state == VmState::Running {
            w.state =
                if vm.stopped.as_ref().is_some_and(|r| r.is_abnormal()) { VmState::Faulted } else { VmState::Stopped };
        }
    }
}
