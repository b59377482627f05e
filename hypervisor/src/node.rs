//! The node loop: runs the VMs' slices in turn and, between slices, the
//! network, the management plane and what it asks for (reconcile, persist,
//! shutdown). The top of the hypervisor: it may use every module below.

use crate::arch::x86_64::time;
use crate::mgmt::Mgmt;
use crate::net::node::Network;
use crate::virt::{Backend, StopReason};
use crate::vm::build::{build_vm, ImageSource, NodeResources};
use crate::vm::runq;
use crate::vm::scheduler::{self, run_slot, SLICE_MS};
use crate::vm::Vm;
use alloc::vec::Vec;
use vmm_config::config::NodeConfig;
use vswitch::config::NicIdentity;

/// Everything the node loop drives besides the VMs.
pub struct Node<'a> {
    /// Where config VMs' kernels and modules come from (to restart them).
    pub images: &'a dyn ImageSource,
    /// The config VMs' NICs.
    pub nics: &'a [NicIdentity],
    pub network: &'a mut Network,
    pub mgmt: Option<&'a mut Mgmt>,
    pub storage: Option<&'a mut crate::storage::Storage>,
    pub config: &'a NodeConfig,
    pub backend: Backend,
}

/// Why the node loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// No VM runs and the node need not stay up.
    Idle,
    /// The landlord asked for a shutdown.
    Shutdown,
    /// The landlord asked for a reboot.
    Reboot,
}

/// Guest resets a config VM gets within [`RESET_WINDOW_MS`] before it is
/// left stopped: a guest that resets in a loop costs only itself, and not
/// for ever.
pub const MAX_RESETS: u32 = 5;
/// The window [`MAX_RESETS`] counts in.
pub const RESET_WINDOW_MS: u64 = 60_000;

impl Node<'_> {
    /// A config VM that asked for a reset (0xCF9, the keyboard controller,
    /// port 0x92) runs again from its image with fresh memory and devices,
    /// as a PC would, keeping its disk.
    fn restart_after_reset(&mut self, vms: &mut [Vm], i: usize) {
        let Some(vm) = vms.get(i) else { return };
        if vm.stopped != Some(StopReason::Reset) || vm.managed.is_some() {
            return;
        }
        let Some(cfg) = self.config.vms.get(usize::from(vm.id)) else { return };
        let now = time::rdtsc();
        let (mut start, mut count) = vm.resets;
        if time::tsc_to_ms(now.wrapping_sub(start)) > RESET_WINDOW_MS {
            (start, count) = (now, 0);
        }
        if count >= MAX_RESETS {
            crate::log!(
                "vm {}: {count} guest resets within {RESET_WINDOW_MS} ms (limit {MAX_RESETS}); left stopped",
                vm.name
            );
            if let Some(v) = vms.get_mut(i) {
                v.managed = Some((u32::MAX, 0)); // never considered again
            }
            return;
        }
        crate::log!(
            "vm {}: guest reset; restarting ({} of {MAX_RESETS} within {RESET_WINDOW_MS} ms)",
            vm.name,
            count + 1
        );
        let id = vm.id;
        let res = NodeResources {
            config: self.config,
            images: self.images,
            nics: self.nics,
            storage: self.storage.as_deref_mut(),
        };
        let mut fresh = build_vm(id, cfg, res, self.backend);
        fresh.resets = (start, count + 1);
        if let Some(slot) = vms.get_mut(i) {
            *slot = fresh;
        }
    }

    /// Between slices: the network, then the management plane and the VMs
    /// it wants.
    fn round(&mut self, vms: &mut Vec<Vm>) -> Option<End> {
        self.network.round(vms);
        let mut actions = crate::mgmt::Actions::default();
        match self.mgmt.as_deref_mut() {
            Some(m) => {
                m.fleet_round();
                actions = m.serve_ports(self.network, vms);
            }
            None => {
                // Not provisioned: refuse connections at once.
                for i in 0..crate::net::mgmt::MGMT_SOCKETS {
                    let Some(port) = self.network.mgmt_port(i) else { break };
                    if port.is_active() {
                        port.abort();
                    }
                }
            }
        }
        let m = self.mgmt.as_deref_mut()?;
        let a = m.serve_serial(vms);
        crate::mgmt::agent_tick(vms);
        actions.shutdown |= a.shutdown;
        actions.reboot |= a.reboot;
        crate::mgmt::reconcile(
            m,
            vms,
            self.config,
            self.backend,
            self.storage.as_deref_mut(),
            &mut self.network.switchboard,
        );
        m.monitor_round(vms, self.network, self.storage.as_deref_mut());
        m.apply_disk_effects(self.storage.as_deref_mut());
        m.persist();
        if let Some(policy) = m.new_policy.take() {
            self.network.switchboard.swap_policy(policy);
            crate::log!("net: switch policy replaced (console changes)");
        }
        self.network.flush_mgmt();
        if actions.shutdown {
            return Some(End::Shutdown);
        }
        actions.reboot.then_some(End::Reboot)
    }
}

/// Runs VMs until every one has stopped (and, with `stay_up`, keeps serving
/// the network and management plane), or the landlord ends it. The boot
/// CPU runs the slices of the vCPUs placed on it with a node round after
/// each; the other CPUs run theirs on their own (`scheduler::ap_loop`).
pub fn run_node(vms: &mut Vec<Vm>, node: &mut Node<'_>, stay_up: bool) -> End {
    let slice = SLICE_MS * time::tsc_per_ms();
    let mut announced = false;
    let mut was_suspended = false;
    loop {
        // A landlord suspend pauses every VM in place, on every CPU; the
        // node keeps serving the network and the management plane.
        let suspended = node.mgmt.as_ref().is_some_and(|m| m.state.suspended);
        if suspended != was_suspended {
            crate::log!("node: {}", if suspended { "suspended by the landlord (VMs paused)" } else { "resumed" });
            was_suspended = suspended;
            scheduler::set_paused(suspended);
        }
        let mut i = 0;
        while let Some(slot) = runq::get(0, i) {
            i += 1;
            if run_slot(&slot, slice) {
                if let Some(end) = node.round(vms) {
                    return stop_all(vms, end);
                }
            }
        }
        for i in 0..vms.len() {
            if vms.get_mut(i).is_some_and(|v| v.sync()) {
                node.restart_after_reset(vms, i);
            }
        }
        if !vms.iter().any(|v| v.is_running()) {
            if !stay_up {
                return End::Idle;
            }
            if !announced {
                crate::log!("node: all VMs stopped; staying up for the management plane (keep_running)");
                announced = true;
            }
        } else {
            announced = false;
        }
        if let Some(end) = node.round(vms) {
            return stop_all(vms, end);
        }
        core::hint::spin_loop();
    }
}

fn stop_all(vms: &mut [Vm], end: End) -> End {
    crate::log!("node: {} requested by the landlord", if end == End::Reboot { "reboot" } else { "shutdown" });
    for vm in vms.iter_mut().filter(|v| v.is_running()) {
        vm.stop(StopReason::Console("node shutdown"));
    }
    end
}
