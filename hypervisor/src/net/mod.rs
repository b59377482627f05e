//! Networking glue: the physical NIC (virtio-net over PCI), the management
//! stack (smoltcp) with its address from DHCP or the config, and the queue
//! that carries frames between them and the switch.

pub mod mgmt;
pub mod node;
pub mod phys_nic;
pub mod switchboard;
