//! The node's network: the switch between VM NICs, and (when the node has
//! a NIC) the uplink and the management stack. The scheduler calls
//! [`Network::round`] between time slices; there are no NIC interrupts.

use super::mgmt::{AddressMode, MgmtStack};
use super::phys_nic::PhysNic;
use super::switchboard::{Delivery, Switchboard, UPLINK_PORT};
use crate::arch::x86_64::acpi::Ecam;
use crate::arch::x86_64::time;
use crate::vm::Vm;
use alloc::string::String;
use alloc::vec::Vec;
use virtio_drivers::transport::DeviceType;
use vmm_config::config::NodeConfig;

/// Most frames taken from one source in one round, so a flood cannot hold
/// the CPU away from the VMs.
const FRAMES_PER_ROUND: usize = 256;

/// The physical NIC with the management stack behind it.
pub struct Uplink {
    nic: PhysNic,
    pub mgmt: MgmtStack,
    mac: [u8; 6],
}

/// Switch plus optional uplink.
pub struct Network {
    pub switchboard: Switchboard,
    pub uplink: Option<Uplink>,
}

fn start_uplink(ecam: Option<Ecam>, mode: AddressMode, discard_port: Option<u16>) -> Option<Uplink> {
    let transport = match crate::drivers::pci::find_virtio(ecam, DeviceType::Network) {
        Ok(t) => t,
        Err(why) => {
            crate::log!("net: no uplink ({why}); VMs switch among themselves only");
            return None;
        }
    };
    // A second handle only reads the link status from config space.
    let config = crate::drivers::pci::find_virtio(ecam, DeviceType::Network).ok();
    let nic = match PhysNic::new(transport, config) {
        Ok(n) => n,
        Err(why) => {
            crate::log!("net: no uplink ({why})");
            return None;
        }
    };
    let mac = nic.mac();
    let [a, b, c, d, e, f] = mac;
    crate::log!("net: uplink virtio-net {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}");
    Some(Uplink { nic, mgmt: MgmtStack::new(mac, mode, discard_port), mac })
}

impl Network {
    /// Brings up the uplink (if any) and builds the switch from the config.
    pub fn start(ecam: Option<Ecam>, config: &NodeConfig) -> Result<Network, String> {
        let uplink = start_uplink(ecam, AddressMode::from_config(&config.uplink), config.uplink.discard_port);
        let switchboard = Switchboard::new(config, uplink.is_some())?;
        Ok(Network { switchboard, uplink })
    }

    /// One round: frames the VMs sent, frames from the wire, and the
    /// management stack, each switched and delivered.
    pub fn round(&mut self, vms: &mut [Vm]) {
        let now = time::tsc_to_ms(time::rdtsc()) / 1000;
        let mut out: Vec<Delivery> = Vec::new();
        for vm in vms.iter_mut() {
            let (Some(run), Some(nic)) = (vm.running.as_ref(), vm.devices.nic.as_ref()) else { continue };
            let mut nic = nic.lock();
            let _ = nic.dev.poll(&*run.mem);
            nic.flush_pending(&*run.mem);
            let frames = nic.dev.backend_mut().take_tx_frames();
            for f in frames.iter().take(FRAMES_PER_ROUND) {
                out.extend(self.switchboard.switch(nic.port, f, now));
            }
        }
        if let Some(up) = self.uplink.as_mut() {
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = up.nic.recv() else { break };
                let dst: [u8; 6] = frame.get(..6).and_then(|d| d.try_into().ok()).unwrap_or([0; 6]);
                let broadcast = dst[0] & 1 != 0;
                if dst == up.mac || broadcast {
                    up.mgmt.queues.rx.push_back(frame.clone());
                }
                if dst != up.mac {
                    out.extend(self.switchboard.switch(UPLINK_PORT, &frame, now));
                }
            }
            up.mgmt.poll();
            while let Some(frame) = up.mgmt.queues.tx.pop_front() {
                up.nic.send(&frame);
            }
        }
        self.route(vms, out);
        self.switchboard.expire(now);
        self.report_stopped(vms);
    }

    /// Prints the network counters of VMs that stopped and detaches their
    /// NICs, so nothing is delivered into freed memory.
    fn report_stopped(&mut self, vms: &mut [Vm]) {
        for vm in vms.iter_mut().filter(|v| v.running.is_none()) {
            let Some(nic) = vm.devices.nic.take() else { continue };
            let nic = nic.lock();
            let c = nic.dev.backend().counters();
            let packets = c.tx_frames + c.rx_frames;
            let ratio = |n: u64| if packets == 0 { 0.0 } else { n as f64 / packets as f64 };
            crate::log!(
                "vm {} net: tx-frames={} rx-frames={} rx-no-buffer={} device-errors={} switch {} exits-per-packet={:.3} device-exits-per-packet={:.3}",
                vm.name,
                c.tx_frames,
                c.rx_frames,
                c.rx_dropped_no_buffer + nic.rx_overflow,
                c.errors,
                self.switchboard.port_summary(nic.port),
                ratio(vm.counters.total),
                ratio(vm.counters.npf)
            );
        }
    }

    fn route(&mut self, vms: &mut [Vm], deliveries: Vec<Delivery>) {
        // CPUs running a VM that just received frames: kicked once each, so
        // the guest sees its interrupt now rather than at its next exit.
        let mut kick: u64 = 0;
        for d in deliveries {
            if d.port == UPLINK_PORT {
                if let Some(up) = self.uplink.as_mut() {
                    let to_mgmt =
                        d.frame.get(..6).is_some_and(|m| m == up.mac) || d.frame.first().is_some_and(|b| b & 1 != 0);
                    if to_mgmt {
                        up.mgmt.queues.rx.push_back(d.frame.clone());
                    }
                    up.nic.send(&d.frame);
                }
                continue;
            }
            let target = vms.iter_mut().find(|v| v.devices.nic.as_ref().is_some_and(|n| n.lock().port == d.port));
            if let Some(vm) = target {
                if let (Some(run), Some(nic)) = (vm.running.as_ref(), vm.devices.nic.as_ref()) {
                    nic.lock().deliver(&*run.mem, d.frame);
                    kick |= run.homes();
                }
            }
        }
        for cpu in (0..64).filter(|c| kick & (1 << c) != 0) {
            crate::vm::runq::kick(cpu);
        }
    }

    /// The uplink's link state: `None` without an uplink or when its
    /// device does not report one.
    pub fn link_up(&self) -> Option<bool> {
        self.uplink.as_ref().and_then(|u| u.nic.link_up())
    }

    /// Logs switch totals and the frames each rule matched.
    pub fn report(&self) {
        let sb = &self.switchboard;
        if sb.ports == 0 {
            return;
        }
        crate::log!("net: switched={} dropped={} boundary-drops={}", sb.switched, sb.dropped, sb.boundary_drops());
        for (i, hits) in sb.rule_hits().iter().enumerate() {
            crate::log!("net: rule[{i}] matched={hits}");
        }
    }

    /// Socket `i` of the management port, when the node has an uplink.
    pub fn mgmt_port(&mut self, i: usize) -> Option<&mut smoltcp::socket::tcp::Socket<'static>> {
        self.uplink.as_mut().and_then(|u| u.mgmt.port(i))
    }

    /// Connection requests to the management port held back for want of a
    /// listening socket since the last call.
    pub fn take_mgmt_held_back(&mut self) -> u32 {
        self.uplink.as_mut().map_or(0, |u| u.mgmt.take_held_back())
    }

    /// Sends what the management plane wrote.
    pub fn flush_mgmt(&mut self) {
        if let Some(up) = self.uplink.as_mut() {
            up.mgmt.flush();
            while let Some(frame) = up.mgmt.queues.tx.pop_front() {
                up.nic.send(&frame);
            }
        }
    }

    /// Whether the node has an uplink (for keep_running).
    pub fn has_uplink(&self) -> bool {
        self.uplink.is_some()
    }
}
