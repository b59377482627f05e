//! Keeps the running VMs in step with the management state: a VM the
//! consoles started runs (a restart is a fresh VM), one they stopped or
//! destroyed stops, one that exited by itself is reported stopped, and its
//! UART output is what the console reads.

use super::Mgmt;
use crate::storage::{GuestDisk, Storage};
use crate::virt::Backend;
use crate::vm::build::{build_vm, ImageSource, NodeResources};
use crate::vm::{StopReason, Vm};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use mgmt_proto::msg::{VmId, VmState};
use mgmt_proto::state::Image;
use vmm_config::config::{NodeConfig, VmConfig};

/// Uploaded images, as the VM builder reads kernels.
struct Uploaded<'a>(&'a BTreeMap<String, Image>);

impl ImageSource for Uploaded<'_> {
    fn image(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|i| i.data.as_slice())
    }
}

/// The volume of a console-created VM.
fn volume_name(id: u32) -> String {
    alloc::format!("vm{id}")
}

/// One pass of reconciliation.
pub fn reconcile(
    m: &mut Mgmt,
    vms: &mut Vec<Vm>,
    config: &NodeConfig,
    backend: Backend,
    mut storage: Option<&mut Storage>,
) {
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
        let Some(w) = m.state.vms.get(&VmId(id)) else { continue };
        let cfg = VmConfig {
            name: w.spec.name.clone(),
            memory_mib: w.spec.memory_mib,
            kernel: w.spec.image.clone(),
            cmdline: w.spec.cmdline.clone(),
            ..Default::default()
        };
        let index = vms.len();
        let built = match (cfg.validate(index), u16::try_from(index)) {
            (Err(e), _) => Err(alloc::format!("{e}")),
            (_, Err(_)) => Err(String::from("too many VMs")),
            (Ok(()), Ok(n)) => {
                let images = Uploaded(&m.state.images);
                let node = NodeResources { config, images: &images, nics: &[], storage: None };
                Ok(build_vm(n, &cfg, node, backend))
            }
        };
        let built = built.and_then(|mut vm| {
            if w.spec.disk_mib > 0 && vm.is_running() {
                let st = storage.as_deref_mut().ok_or("the node has no disk for this VM's volume")?;
                let volume = st.volume_for_lease(&volume_name(id), w.spec.cluster.0, w.spec.disk_mib)?;
                let base = vm.mmio.attach_disk(GuestDisk::new(volume, &w.spec.name));
                crate::log!("vm {} disk: virtio-blk at {base:#x}, {} MiB, encrypted", w.spec.name, w.spec.disk_mib);
            }
            Ok(vm)
        });
        match built {
            Ok(mut vm) => {
                vm.managed = Some((id, generation));
                vms.push(vm);
            }
            Err(why) => {
                crate::log!("mgmt: vm {} cannot start: {why}", w.spec.name);
                if let Some(w) = m.state.vms.get_mut(&VmId(id)) {
                    w.state = VmState::Stopped;
                }
            }
        }
    }
    // Report back: exits, console output.
    for vm in vms.iter() {
        let Some((id, generation)) = vm.managed else { continue };
        let Some(w) = m.state.vms.get_mut(&VmId(id)) else { continue };
        if w.starts != generation {
            continue;
        }
        w.console = vm.ports.uart.history_bytes();
        if !vm.is_running() {
            w.state = VmState::Stopped;
        }
    }
}
