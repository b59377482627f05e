//! Builds a VM from its validated config and the images in the boot bundle:
//! parse the kernel, lay out boot info, allocate and fill guest RAM, create
//! the vCPU. A VM that cannot be built is stopped with the reason; the
//! others still run.

use super::{Running, Vm};
use crate::devices::ports::PortBus;
use crate::mm::guest::GuestMemory;
use crate::storage::{GuestDisk, Storage};
use crate::virt::StopReason;
use crate::virt::{self, Backend, EntryState};
use alloc::format;
use alloc::string::{String, ToString};
use guest_loader::{GuestWriteData, ModuleRef, Preference};
use vmm_config::bundle::Bundle;
use vmm_config::config::{BootProtocol, NodeConfig, VmConfig};
use vswitch::config::NicIdentity;

const MIB: u64 = 1 << 20;

/// Where kernels and modules come from: the boot bundle, or images
/// uploaded through the management plane.
pub trait ImageSource {
    /// The bytes of the image called `name`.
    fn image(&self, name: &str) -> Option<&[u8]>;
}

impl ImageSource for Bundle<'_> {
    fn image(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }
}

/// What a VM is built from besides its own config.
pub struct NodeResources<'a> {
    pub config: &'a NodeConfig,
    pub images: &'a dyn ImageSource,
    pub nics: &'a [NicIdentity],
    pub storage: Option<&'a mut Storage>,
}

/// Creates VM number `id`; on failure it is returned already stopped.
pub fn build_vm(id: u16, cfg: &VmConfig, node: NodeResources<'_>, backend: Backend) -> Vm {
    let NodeResources { config, images, nics, storage } = node;
    let mut vm = Vm {
        id,
        name: cfg.name.clone(),
        running: None,
        ports: PortBus::default(),
        mmio: Default::default(),
        counters: Default::default(),
        cpu_tsc: 0,
        cpu_limit_ms: cfg.cpu_time_limit_ms,
        debug_hypercalls: cfg.debug_hypercalls,
        stopped: None,
        managed: None,
    };
    let disk = match (&cfg.disk, storage) {
        (None, _) => Ok(None),
        (Some(_), None) => Err(String::from("the node's disk storage is unavailable (see the disk: lines)")),
        (Some(_), Some(st)) => st.volume_for(config, cfg).map(Some),
    };
    let disk = match disk {
        Ok(d) => d,
        Err(why) => {
            vm.stop(StopReason::LoadFailed(why));
            return vm;
        }
    };
    match load(id, cfg, images, backend) {
        Ok(running) => {
            vm.running = Some(running);
            if let Some(volume) = disk {
                let sectors = volume.capacity_sectors();
                let base = vm.mmio.attach_disk(GuestDisk::new(volume, &cfg.name));
                crate::log!("vm {} disk: virtio-blk at {base:#x}, {} MiB, encrypted", cfg.name, sectors / 2048);
            }
            if let Some(nic) = nics.iter().find(|n| n.vm == id) {
                let base = vm.mmio.attach_nic(nic.mac, super::nic_port(id));
                let [a, b, c, d, e, f] = nic.mac;
                let ip = core::net::Ipv4Addr::from(nic.ip);
                crate::log!(
                    "vm {} nic: virtio-net at {base:#x}, mac {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}, ip {ip}",
                    cfg.name
                );
            }
        }
        Err(why) => vm.stop(StopReason::LoadFailed(why)),
    }
    vm
}

fn load(id: u16, cfg: &VmConfig, images: &dyn ImageSource, backend: Backend) -> Result<Running, String> {
    let image = images.image(&cfg.kernel).ok_or_else(|| format!("kernel {} missing", cfg.kernel))?;
    let pref = match cfg.boot {
        BootProtocol::Auto => Preference::Auto,
        BootProtocol::Pvh => Preference::Pvh,
        BootProtocol::Multiboot1 => Preference::Multiboot1,
        BootProtocol::Linux => Preference::Linux,
    };
    let kernel = guest_loader::parse_kernel(image, pref).map_err(|e| format!("kernel {}: {e}", cfg.kernel))?;
    let module = match &cfg.module {
        Some(name) => {
            let data = images.image(name).ok_or_else(|| format!("module {name} missing"))?;
            Some(ModuleRef { name, data })
        }
        None => None,
    };
    let mem_bytes = u64::from(cfg.memory_mib) * MIB;
    // TODO(vm owner): real vCPU count, I/O APIC id and the VM's virtio-mmio windows/GSIs.
    let firmware = guest_loader::Firmware { vcpus: 1, ioapic_id: 1, virtio: alloc::vec::Vec::new() };
    let plan = guest_loader::plan_boot(&kernel, mem_bytes, &cfg.kernel, &cfg.cmdline, module, &firmware)
        .map_err(|e| format!("boot layout: {e}"))?;
    let mem = GuestMemory::new(mem_bytes, backend.table_format()).map_err(|e| e.to_string())?;
    for w in &plan.writes {
        let data: &[u8] = match &w.data {
            GuestWriteData::Borrowed(b) => b,
            GuestWriteData::Owned(v) => v,
        };
        // RAM starts zeroed, so `zero_len` (BSS) needs no writes.
        mem.write(w.gpa, data).map_err(|_| format!("boot data at {:#x} outside RAM", w.gpa))?;
    }
    let entry = EntryState { rip: plan.entry, rax: u64::from(plan.eax), rbx: u64::from(plan.ebx) };
    let vcpu = virt::create_vcpu(backend, id, mem.root_pointer(), entry).map_err(|e| e.to_string())?;
    crate::log!(
        "vm {} loaded: {:?} kernel {} ({} bytes), entry {:#x}, {} MiB RAM",
        cfg.name,
        kernel.protocol,
        cfg.kernel,
        image.len(),
        plan.entry,
        cfg.memory_mib
    );
    Ok(Running { mem, vcpu })
}
