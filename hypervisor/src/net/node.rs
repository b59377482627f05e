//! The node's network: the uplink NIC and the management stack, polled by
//! the scheduler between time slices (there are no NIC interrupts).

use super::mgmt::{AddressMode, MgmtStack};
use super::phys_nic::PhysNic;
use crate::arch::x86_64::acpi::Ecam;
use virtio_drivers::transport::DeviceType;

/// Most frames moved per direction in one poll, so a flood cannot hold the
/// CPU away from the VMs.
const FRAMES_PER_POLL: usize = 64;

/// Uplink and management stack; both absent on nodes without a NIC.
pub struct NodeNet {
    nic: PhysNic,
    pub mgmt: MgmtStack,
}

impl NodeNet {
    /// Finds and starts the uplink; `None` (with the reason logged) when the
    /// node has no usable NIC, as under Bochs.
    pub fn start(ecam: Option<Ecam>, mode: AddressMode) -> Option<NodeNet> {
        let transport = match crate::drivers::pci::find_virtio(ecam, DeviceType::Network) {
            Ok(t) => t,
            Err(why) => {
                crate::log!("net: no uplink ({why}); VMs switch among themselves only");
                return None;
            }
        };
        let nic = match PhysNic::new(transport) {
            Ok(n) => n,
            Err(why) => {
                crate::log!("net: no uplink ({why})");
                return None;
            }
        };
        let mac = nic.mac();
        crate::log!(
            "net: uplink virtio-net {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5]
        );
        let mgmt = MgmtStack::new(mac, mode);
        Some(NodeNet { nic, mgmt })
    }

    /// Moves frames between the NIC and the management stack.
    pub fn poll(&mut self) {
        for _ in 0..FRAMES_PER_POLL {
            let Some(frame) = self.nic.recv() else { break };
            self.mgmt.queues.rx.push_back(frame);
        }
        self.mgmt.poll();
        for _ in 0..FRAMES_PER_POLL {
            let Some(frame) = self.mgmt.queues.tx.pop_front() else { break };
            self.nic.send(&frame);
        }
    }
}
