//! Builds a VM from its validated config and the images in the boot bundle:
//! parse the kernel, lay out boot info, allocate and fill guest RAM, create
//! the vCPU. A VM that cannot be built is stopped with the reason; the
//! others still run.

use super::{runq, Running, VcpuCore, VcpuSlot, Vm};
use crate::arch::x86_64::time;
use crate::devices::VmDevices;
use crate::mm::guest::GuestMemory;
use crate::storage::{GuestDisk, Storage};
use crate::virt::StopReason;
use crate::virt::{self, Backend, EntryState};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize};
use cpu_policy::cpuid::VcpuIdentity;
use cpu_policy::msr::MsrFile;
use guest_loader::{GuestWriteData, ModuleRef, Preference};
use pc_devices::chipset::Chipset;
use pc_devices::time::TscRate;
use virtio_dev::blk::BlockBackend;
use vmm_config::bundle::Bundle;
use vmm_config::config::{BootProtocol, NodeConfig, VmConfig};
use vswitch::config::NicIdentity;
use vswitch::policy::PortId;

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

/// Devices a VM gets besides what its config names (console-created VMs).
#[derive(Default)]
pub struct Attachments {
    /// A NIC with this MAC on this switch port.
    pub nic: Option<([u8; 6], PortId)>,
    /// A disk over this volume.
    pub disk: Option<GuestDisk>,
}

/// The VM's wall clock at boot: the node's RTC.
fn wall_clock() -> u64 {
    crate::arch::x86_64::cmos::unix_time()
}

/// Creates VM number `id`; on failure it is returned already stopped.
pub fn build_vm(id: u16, cfg: &VmConfig, node: NodeResources<'_>, backend: Backend) -> Vm {
    build_vm_with(id, cfg, node, backend, Attachments::default())
}

/// [`build_vm`] with devices the caller provides.
pub fn build_vm_with(id: u16, cfg: &VmConfig, node: NodeResources<'_>, backend: Backend, extra: Attachments) -> Vm {
    let NodeResources { config, images, nics, storage } = node;
    let mem_bytes = u64::from(cfg.memory_mib) * MIB;
    let rate = TscRate::new(time::tsc_per_ms().saturating_mul(1000));
    let boot_unix = wall_clock();
    let vcpus = cfg.vcpus.clamp(1, pc_devices::ipi::MAX_VCPUS as u32);
    let chip = Chipset::with_vcpus(rate, time::rdtsc(), boot_unix, mem_bytes, vcpus);
    let amd = raw_cpuid::CpuId::new().get_vendor_info().is_some_and(|v| v.as_str() == "AuthenticAMD");
    let identity = VcpuIdentity {
        apic_id: 0,
        vcpus,
        tsc_hz: rate.hz,
        limit_cpuid: false,
        hv_signature: hv_signature(),
        hv_abi: vmm_config::hypercall::ABI_VERSION as u32,
        boot_tsc: time::rdtsc(),
        boot_unix,
    };
    let devices = match VmDevices::new(&cfg.name, chip) {
        Ok(d) => d,
        // The fixed platform always fits its bus; a failure is a bug, but
        // the VM alone pays for it.
        Err(e) => {
            crate::log!("vm {}: platform devices: {e}", cfg.name);
            return stopped_shell(id, cfg, format!("platform devices: {e}"));
        }
    };
    let mut vm = Vm {
        id,
        name: cfg.name.clone(),
        running: None,
        devices,
        counters: Default::default(),
        cpu_tsc: 0,
        stopped: None,
        managed: None,
        resets: (0, 0),
    };
    let disk = match (&cfg.disk, storage) {
        (None, _) => Ok(extra.disk),
        (Some(_), None) => Err(String::from("the node's disk storage is unavailable (see the disk: lines)")),
        (Some(_), Some(st)) => st.volume_for(config, cfg).map(|v| Some(GuestDisk::new(v, &cfg.name))),
    };
    let disk = match disk {
        Ok(d) => d,
        Err(why) => {
            vm.stop(StopReason::LoadFailed(why));
            return vm;
        }
    };
    if let Some(disk) = disk {
        let sectors = disk.capacity_sectors();
        match vm.devices.attach_disk(disk) {
            Ok(base) => crate::log!("vm {} disk: virtio-blk at {base:#x}, {} MiB, encrypted", cfg.name, sectors / 2048),
            Err(e) => {
                vm.stop(StopReason::LoadFailed(format!("disk: {e}")));
                return vm;
            }
        }
    }
    let nic = nics
        .iter()
        .find(|n| n.vm == id)
        .map(|n| (n.mac, super::nic_port(id), Some(n.ip)))
        .or(extra.nic.map(|(m, p)| (m, p, None)));
    if let Some((mac, port, ip)) = nic {
        match vm.devices.attach_nic(mac, port) {
            Ok(base) => {
                let [a, b, c, d, e, f] = mac;
                let ip = ip.map(core::net::Ipv4Addr::from).map(|i| format!(", ip {i}")).unwrap_or_default();
                crate::log!(
                    "vm {} nic: virtio-net at {base:#x}, mac {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}{ip}",
                    cfg.name
                );
            }
            Err(e) => {
                vm.stop(StopReason::LoadFailed(format!("nic: {e}")));
                return vm;
            }
        }
    }
    let firmware = guest_loader::Firmware {
        vcpus,
        ioapic_id: u8::try_from(vcpus).unwrap_or(1),
        virtio: vm
            .devices
            .virtio_devices()
            .into_iter()
            .map(|(base, len, gsi)| guest_loader::VirtioMmio { base, len, gsi })
            .collect(),
    };
    let (mem, vcpu) = match load(id, cfg, images, backend, &firmware) {
        Ok(parts) => parts,
        Err(why) => {
            vm.stop(StopReason::LoadFailed(why));
            return vm;
        }
    };
    // The application processors: created now, held in wait-for-SIPI by
    // the chipset until the guest starts them.
    let mut cores = alloc::vec![vcpu];
    for index in 1..vcpus as usize {
        let entry = EntryState { rip: 0, rax: 0, rbx: 0, rsi: 0 };
        match virt::create_vcpu(backend, vcpu_tag(id, index), mem.root_pointer(), entry) {
            Ok(v) => cores.push(v),
            Err(e) => {
                vm.stop(StopReason::LoadFailed(format!("vCPU {index}: {e}")));
                return vm;
            }
        }
    }
    let mut slots = alloc::vec::Vec::new();
    let mut placed = alloc::vec::Vec::new();
    for (index, vcpu) in cores.into_iter().enumerate() {
        let core = VcpuCore {
            vcpu: Some(vcpu),
            mem: Some(mem.clone()),
            devices: vm.devices.clone(),
            msrs: MsrFile::new(amd),
            identity: VcpuIdentity { apic_id: index as u32, ..identity },
            halted: false,
            counters: Default::default(),
            cpu_tsc: 0,
            cpu_limit_ms: cfg.cpu_time_limit_ms,
            debug_hypercalls: cfg.debug_hypercalls,
            name: cfg.name.clone(),
            id,
            index,
            cpus: cfg.cpus.clone(),
        };
        let slot = Arc::new(VcpuSlot {
            core: spin::Mutex::new(core),
            stop_requested: AtomicBool::new(false),
            ended: spin::Mutex::new(None),
            report: spin::Mutex::new(Default::default()),
            home: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        match runq::place(&slot, &cfg.cpus) {
            Ok(p) => {
                if p.pin_unmet && index == 0 {
                    crate::log!(
                        "vm {}: none of cpus {:?} is online; placed where the node has room",
                        cfg.name,
                        cfg.cpus
                    );
                }
                vm.devices.homes.set(index, p.cpu);
                placed.push(p.cpu);
                slots.push(slot);
            }
            Err(why) => {
                // Take back what was placed; the VM does not start.
                vm.running = Some(Running { mem: mem.clone(), slots });
                vm.stop(StopReason::LoadFailed(why));
                return vm;
            }
        }
    }
    match placed.as_slice() {
        [one] => crate::log!("vm {}: placed on CPU {one}", cfg.name),
        many => crate::log!("vm {}: {} vCPUs placed on CPUs {:?}", cfg.name, many.len(), many),
    }
    vm.running = Some(Running { mem, slots });
    vm
}

/// The VPID (VMX) or ASID (SVM) source of vCPU `index` of VM `id`: each
/// vCPU tags its own translations, as each CPU of a machine has its own TLB.
fn vcpu_tag(id: u16, index: usize) -> u16 {
    id.wrapping_mul(pc_devices::ipi::MAX_VCPUS as u16).wrapping_add(index as u16)
}

fn hv_signature() -> [u32; 3] {
    let sig = vmm_config::hypercall::CPUID_SIGNATURE;
    let w = |i: usize| {
        let b = |n: usize| sig.get(i + n).copied().unwrap_or(0);
        u32::from_le_bytes([b(0), b(1), b(2), b(3)])
    };
    [w(0), w(4), w(8)]
}

/// A VM that could not get its platform: stopped at once, with a console
/// that only holds the reason.
fn stopped_shell(id: u16, cfg: &VmConfig, why: String) -> Vm {
    let rate = TscRate::new(1);
    let devices = VmDevices::bare(&cfg.name, Chipset::new(rate, 0, 0, 0, 0));
    let mut vm = Vm {
        id,
        name: cfg.name.clone(),
        running: None,
        devices,
        counters: Default::default(),
        cpu_tsc: 0,
        stopped: None,
        managed: None,
        resets: (0, 0),
    };
    vm.stop(StopReason::LoadFailed(why));
    vm
}

fn load(
    id: u16,
    cfg: &VmConfig,
    images: &dyn ImageSource,
    backend: Backend,
    firmware: &guest_loader::Firmware,
) -> Result<(Arc<GuestMemory>, alloc::boxed::Box<dyn virt::Vcpu>), String> {
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
    let plan = guest_loader::plan_boot(&kernel, mem_bytes, &cfg.kernel, &cfg.cmdline, module, firmware)
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
    let entry =
        EntryState { rip: plan.entry, rax: u64::from(plan.eax), rbx: u64::from(plan.ebx), rsi: u64::from(plan.esi) };
    let vcpu = virt::create_vcpu(backend, vcpu_tag(id, 0), mem.root_pointer(), entry).map_err(|e| e.to_string())?;
    crate::log!(
        "vm {} loaded: {:?} kernel {} ({} bytes), entry {:#x}, {} MiB RAM",
        cfg.name,
        kernel.protocol,
        cfg.kernel,
        image.len(),
        plan.entry,
        cfg.memory_mib
    );
    Ok((Arc::new(mem), vcpu))
}
