//! BMonitor: a type-1 micro-hypervisor for shared computers.
//!
//! Boot order: serial log, descriptor tables, boot info, memory, platform
//! discovery (ACPI, CPUID), time, virtualization backend, then the VMs named
//! by the node config in the boot bundle, time-sliced until all stop.
#![no_std]
#![no_main]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

extern crate alloc;

mod arch;
mod devices;
mod drivers;
mod mgmt;
mod mm;
mod net;
mod node;
mod storage;
mod virt;
mod vm;

use alloc::vec::Vec;
use arch::x86_64::{acpi, apic, bootinfo, gdt, idt, percpu, power, serial, time};
use vmm_config::bundle::Bundle;

/// Entered from the boot stub in long mode with the loader's magic and info.
#[no_mangle]
extern "C" fn kmain(magic: u32, info: u32) -> ! {
    serial::init();
    log!("BMonitor {} starting", env!("CARGO_PKG_VERSION"));
    gdt::init();
    idt::init();
    match boot(magic, info) {
        Ok(all_ok) => {
            log!("BMonitor: all VMs stopped ({}); powering off", if all_ok { "all succeeded" } else { "some failed" });
            power::off(all_ok)
        }
        Err(why) => {
            log!("BMonitor: fatal: {}", why);
            power::off(false)
        }
    }
}

fn boot(magic: u32, info: u32) -> Result<bool, &'static str> {
    let bi = bootinfo::BootInfo::parse(magic, info)?;
    let ram: u64 = bi.regions().iter().filter(|r| r.usable).map(|r| r.len).sum();
    log!(
        "boot: {} loader, {} MiB RAM in {} regions, {} module(s)",
        bi.loader,
        ram >> 20,
        bi.region_count,
        bi.module_count
    );
    mm::frames::init(&bi);
    mm::heap::init()?;
    log!("memory: {} MiB free for VMs after the heap", (mm::frames::free_count() as u64 * mm::PAGE_SIZE) >> 20);
    percpu::init_boot_cpu();
    log_cpu();
    let platform = match acpi::discover(bi.rsdp) {
        Ok(p) => {
            log!("acpi: {} CPU(s), {} I/O APIC(s), local APIC at {:#x}", p.cpus, p.io_apics, p.local_apic_address);
            p
        }
        Err(why) => {
            log!("acpi: {} (continuing with one CPU)", why);
            acpi::Platform::default()
        }
    };
    apic::init();
    time::calibrate();
    log!("time: TSC {} MHz", time::tsc_per_ms() / 1000);
    let backend = virt::enable_backend()?;
    log!("backend: {}", backend.name());
    start_application_processors(&bi, &platform, backend);

    let module = bi.modules().first().ok_or("no boot module: expected the node bundle")?;
    let bytes = bootinfo::module_bytes(module).ok_or("boot module outside memory")?;
    let bundle = Bundle::parse(bytes).map_err(|e| {
        log!("bundle: {}", e);
        "boot module is not a valid node bundle"
    })?;
    let config = bundle.node_config().map_err(|e| {
        log!("config: {}", e);
        "node config rejected"
    })?;
    log!("config: {} VM(s), {} cluster(s), {} rule(s)", config.vms.len(), config.clusters.len(), config.rules.len());
    let mut network = net::node::Network::start(platform.ecam, &config).map_err(|e| {
        log!("config: {}", e);
        "network policy rejected"
    })?;

    let mut storage = storage::Storage::start(platform.ecam, &config, bundle.get("node.secret"));
    let nics = net::switchboard::nic_identities(&config);
    let mut vms: Vec<vm::Vm> = Vec::new();
    for (i, cfg) in config.vms.iter().enumerate() {
        let node =
            vm::build::NodeResources { config: &config, images: &bundle, nics: &nics, storage: storage.as_mut() };
        vms.push(vm::build::build_vm(i as u16, cfg, node, backend));
    }
    if backend == virt::Backend::Svm {
        let ticks = time::apic_ticks_per_ms() * vm::scheduler::SLICE_MS;
        apic::start_periodic(ticks.min(u64::from(u32::MAX)) as u32);
    }
    log!(
        "scheduler: running {} VM(s), {} ms slices",
        vms.iter().filter(|v| v.is_running()).count(),
        vm::scheduler::SLICE_MS
    );
    let facts = mgmt::NodeFacts {
        cpus: platform.cpus.max(1) as u32,
        memory_total_mib: ram >> 20,
        nic_up: network.has_uplink(),
        disk: None,
    };
    // The config's preloaded images: bundle entries (node_config checked they exist).
    let preloads: Vec<(&str, &[u8])> =
        config.images.iter().filter_map(|i| Some((i.name.as_str(), bundle.get(&i.file)?))).collect();
    let mut management = mgmt::Mgmt::provision(
        config.node.landlord_console_key.map(|k| k.0),
        facts,
        &config,
        storage.as_mut(),
        &preloads,
    );
    let reachable = network.has_uplink() || management.as_ref().is_some_and(|m| m.has_serial());
    let stay_up = config.node.keep_running && reachable;
    if config.node.keep_running && !reachable {
        log!("node: keep_running set but no management path (uplink or COM2); the node powers off when its VMs stop");
    }
    let mut node = node::Node {
        images: &bundle,
        nics: &nics,
        network: &mut network,
        mgmt: management.as_mut(),
        storage: storage.as_mut(),
        config: &config,
        backend,
    };
    let end = node::run_node(&mut vms, &mut node, stay_up);
    network.report();
    vm::runq::report_kicks();
    match end {
        node::End::Reboot => power::reboot(),
        node::End::Shutdown | node::End::Idle => {}
    }
    Ok(vms.iter().all(|v| v.stopped.as_ref().is_some_and(|r| r.exit_code() == 0)))
}

fn log_cpu() {
    let cpuid = raw_cpuid::CpuId::new();
    let vendor = cpuid.get_vendor_info();
    let brand = cpuid.get_processor_brand_string();
    log!(
        "cpu: {} {}",
        vendor.as_ref().map_or("unknown", |v| v.as_str()),
        brand.as_ref().map_or("", |b| b.as_str().trim())
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::write_fmt_unlocked(format_args!("\nHYPERVISOR PANIC: {}\n", info));
    power::fail_stop()
}

/// The backend the boot CPU enabled, for the application processors.
static AP_BACKEND: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// Why an application processor could not enable the backend, by index.
static AP_ERRORS: spin::Mutex<[Option<&'static str>; arch::x86_64::percpu::MAX_CPUS]> =
    spin::Mutex::new([None; arch::x86_64::percpu::MAX_CPUS]);

/// Runs on each application processor once it is in long mode: enables
/// the boot CPU's backend there, says how it went, and then runs the vCPUs
/// placed on it for good (or returns to be parked when it cannot).
fn ap_main(index: usize) {
    use arch::x86_64::percpu;
    use core::sync::atomic::Ordering;
    let Some(cpu) = percpu::get(index) else { return };
    let backend = if AP_BACKEND.load(Ordering::SeqCst) == 1 { virt::Backend::Vmx } else { virt::Backend::Svm };
    match virt::enable_ap(backend, cpu) {
        Ok(()) => {
            cpu.state.store(percpu::STATE_UP, Ordering::SeqCst);
            vm::scheduler::ap_loop(index)
        }
        Err(why) => {
            if let Some(slot) = AP_ERRORS.lock().get_mut(index) {
                *slot = Some(why);
            }
            cpu.state.store(percpu::STATE_FAILED, Ordering::SeqCst);
        }
    }
}

/// Starts the other CPUs the MADT lists and enables virtualization on
/// each; they are parked afterwards. Logs one line per CPU that failed and
/// a summary.
fn start_application_processors(bi: &bootinfo::BootInfo, platform: &acpi::Platform, backend: virt::Backend) {
    use arch::x86_64::{percpu, smp};
    use core::sync::atomic::Ordering;
    if platform.apic_ids.as_slice().len() <= 1 {
        return;
    }
    AP_BACKEND.store(if backend == virt::Backend::Vmx { 1 } else { 2 }, Ordering::SeqCst);
    let outcomes = match smp::start_aps(bi, platform.apic_ids.as_slice(), ap_main, mm::frames::alloc_contiguous) {
        Ok(o) => o,
        Err(why) => {
            log!("smp: application processors not started: {}", why);
            return;
        }
    };
    let mut up = alloc::vec::Vec::new();
    for o in outcomes.iter() {
        match o.state {
            percpu::STATE_UP => up.push(o.apic_id),
            percpu::STATE_FAILED => {
                let why = AP_ERRORS.lock().get(o.index).copied().flatten().unwrap_or("unknown");
                log!("smp: CPU {} (APIC {}) started but cannot run VMs: {}", o.index, o.apic_id, why);
            }
            s => log!(
                "smp: CPU {} (APIC {}) did not come up (state {}); the rest are not started",
                o.index,
                o.apic_id,
                s
            ),
        }
    }
    let ids: alloc::vec::Vec<alloc::string::String> = up.iter().map(|i| alloc::format!("{i}")).collect();
    log!(
        "smp: {} application processor(s) up (APIC {}), {} enabled on each; each runs the vCPUs placed on it",
        up.len(),
        if ids.is_empty() { alloc::string::String::from("none") } else { ids.join(", ") },
        backend.name()
    );
}
