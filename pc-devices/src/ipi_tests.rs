//! Router tests, driven through the chipset the way a guest drives it:
//! ICR writes (xAPIC MMIO or x2APIC MSR) on one vCPU, effects on others.
//! Section numbers are Intel SDM vol. 3A's.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::chipset::Chipset;
use crate::time::TscRate;
use proptest::prelude::*;

const HZ: u64 = 1_000_000_000;
const SVR: u64 = 0xF0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const TPR: u64 = 0x80;
const LDR: u64 = 0xD0;
const DFR: u64 = 0xE0;

fn chip(n: u32) -> Chipset {
    Chipset::with_vcpus(TscRate::new(HZ), 0, 0, 64 << 20, n)
}

/// Software-enables vCPU `cpu`'s APIC (SVR bit 8), as a guest does first.
fn enable(c: &mut Chipset, cpu: usize) {
    c.lapic_mmio_write(cpu, SVR, 0x1FF, 0);
}

/// A chip of `n` vCPUs, every APIC software-enabled, no kicks pending.
fn enabled_chip(n: u32) -> Chipset {
    let mut c = chip(n);
    for cpu in 0..c.vcpus() {
        enable(&mut c, cpu);
    }
    c.take_kicks();
    c
}

/// [`enabled_chip`] with the flat logical model, vCPU `i` logical ID `1 << i`.
fn flat_chip(n: u32) -> Chipset {
    let mut c = enabled_chip(n);
    for cpu in 0..c.vcpus() {
        c.lapic_mmio_write(cpu, DFR, 0xFFFF_FFFF, 0);
        c.lapic_mmio_write(cpu, LDR, 1 << (24 + cpu), 0);
    }
    c
}

/// An xAPIC ICR write as Linux does it: high dword, then low (which sends).
fn icr(c: &mut Chipset, cpu: usize, dest: u8, low: u32) {
    c.lapic_mmio_write(cpu, ICR_HIGH, u32::from(dest) << 24, 0);
    c.lapic_mmio_write(cpu, ICR_LOW, low, 0);
}

/// INIT-SIPI on `cpu` from vCPU 0 and the hypervisor's start, so the AP runs.
fn start(c: &mut Chipset, cpu: u8) {
    icr(c, 0, cpu, 0xC500);
    icr(c, 0, cpu, 0x0600 | 0x10);
    assert_eq!(c.take_startup(usize::from(cpu)), Some(0x10));
}

fn requested(c: &Chipset, cpu: usize, v: u8) -> bool {
    c.lapic(cpu).unwrap().requested(v)
}

/// 11.6.1 / 11.6.2.1: a fixed IPI to a physical APIC ID reaches that vCPU
/// only, and kicks it.
#[test]
fn fixed_physical_ipi_reaches_the_named_vcpu() {
    let mut c = enabled_chip(4);
    icr(&mut c, 0, 2, 0x40);
    assert!(requested(&c, 2, 0x40));
    assert!(c.interrupt_pending_on(2));
    assert!(!requested(&c, 1, 0x40) && !requested(&c, 3, 0x40) && !requested(&c, 0, 0x40));
    assert_eq!(c.take_kicks(), 1 << 2);
    assert_eq!(c.acknowledge_on(2), Some(0x40));
    assert_eq!(c.take_kicks(), 0);
}

/// 11.4.7.2: a software-disabled APIC (an AP before its driver runs)
/// does not take fixed interrupts; the message counts as undelivered.
#[test]
fn fixed_ipi_to_a_disabled_apic_is_undelivered() {
    let mut c = chip(2);
    icr(&mut c, 0, 1, 0x40);
    assert!(!requested(&c, 1, 0x40));
    assert_eq!(c.router_counters().undelivered, 1);
    assert_eq!(c.take_kicks(), 0);
}

/// 11.6.1: the self shorthand is served by the sender's APIC alone.
#[test]
fn self_shorthand_stays_home() {
    let mut c = enabled_chip(3);
    icr(&mut c, 1, 0, 0x41 | 1 << 18);
    assert!(requested(&c, 1, 0x41));
    assert!(!requested(&c, 0, 0x41) && !requested(&c, 2, 0x41));
    assert_eq!(c.take_kicks(), 0);
}

/// 11.6.1: all-including-self and all-excluding-self.
#[test]
fn all_shorthands() {
    let mut c = enabled_chip(3);
    icr(&mut c, 1, 0, 0x42 | 2 << 18);
    assert!((0..3).all(|cpu| requested(&c, cpu, 0x42)));
    assert_eq!(c.take_kicks(), 0b101, "the sender is not kicked");
    icr(&mut c, 1, 0, 0x43 | 3 << 18);
    assert!(requested(&c, 0, 0x43) && requested(&c, 2, 0x43) && !requested(&c, 1, 0x43));
    assert_eq!(c.take_kicks(), 0b101);
}

/// 11.6.2.1: physical destination 0xFF is a broadcast, the sender included.
#[test]
fn physical_broadcast() {
    let mut c = enabled_chip(3);
    icr(&mut c, 2, 0xFF, 0x44);
    assert!((0..3).all(|cpu| requested(&c, cpu, 0x44)));
    assert_eq!(c.take_kicks(), 0b011);
}

/// 11.6.2.2 flat model: the logical destination is a bitmap over LDRs,
/// and may include the sender.
#[test]
fn logical_flat_ipi() {
    let mut c = flat_chip(4);
    c.take_kicks();
    icr(&mut c, 0, 0b1001, 0x45 | 1 << 11);
    assert!(requested(&c, 0, 0x45) && requested(&c, 3, 0x45));
    assert!(!requested(&c, 1, 0x45) && !requested(&c, 2, 0x45));
    assert_eq!(c.take_kicks(), 0b1000);
}

/// 11.6.2.2 cluster model: cluster in bits 7:4, members in 3:0.
#[test]
fn logical_cluster_ipi() {
    let mut c = chip(4);
    for cpu in 0..4 {
        enable(&mut c, cpu);
        c.lapic_mmio_write(cpu, DFR, 0x0FFF_FFFF, 0);
        let (cluster, member) = (1 + cpu as u32 / 2, 1u32 << (cpu % 2));
        c.lapic_mmio_write(cpu, LDR, cluster << 28 | member << 24, 0);
    }
    icr(&mut c, 0, 0x23, 0x46 | 1 << 11);
    assert!(requested(&c, 2, 0x46) && requested(&c, 3, 0x46));
    assert!(!requested(&c, 0, 0x46) && !requested(&c, 1, 0x46));
}

/// Switches every vCPU's APIC to x2APIC mode and software-enables it.
fn x2apic(c: &mut Chipset) {
    for cpu in 0..c.vcpus() {
        let base = c.msr_read_on(cpu, 0x1B, 0).unwrap().unwrap();
        c.msr_write_on(cpu, 0x1B, base | 1 << 10, 0).unwrap().unwrap();
        c.msr_write_on(cpu, 0x80F, 0x1FF, 0).unwrap().unwrap();
    }
    c.take_kicks();
}

/// 11.12.9: the x2APIC ICR is one 64-bit MSR with a 32-bit destination;
/// 0xFFFF_FFFF broadcasts.
#[test]
fn x2apic_physical_and_broadcast() {
    let mut c = chip(3);
    x2apic(&mut c);
    c.msr_write_on(0, 0x830, 2 << 32 | 0x47, 0).unwrap().unwrap();
    assert!(requested(&c, 2, 0x47) && !requested(&c, 1, 0x47));
    assert_eq!(c.take_kicks(), 0b100);
    c.msr_write_on(1, 0x830, 0xFFFF_FFFF << 32 | 0x48, 0).unwrap().unwrap();
    assert!((0..3).all(|cpu| requested(&c, cpu, 0x48)));
    assert_eq!(c.take_kicks(), 0b101);
    // 0xFF is just an ID in x2APIC mode: nobody has it.
    c.msr_write_on(0, 0x830, 0xFF << 32 | 0x49, 0).unwrap().unwrap();
    assert!((0..3).all(|cpu| !requested(&c, cpu, 0x49)));
}

/// 11.12.10.2: x2APIC logical destinations use the LDR derived from the
/// ID (cluster id >> 4, bit 1 << (id & 0xF)).
#[test]
fn x2apic_cluster_ipi() {
    let mut c = chip(4);
    x2apic(&mut c);
    assert_eq!(c.msr_read_on(3, 0x80D, 0).unwrap().unwrap(), 0b1000);
    c.msr_write_on(0, 0x830, 0b0110 << 32 | 1 << 11 | 0x4A, 0).unwrap().unwrap();
    assert!(requested(&c, 1, 0x4A) && requested(&c, 2, 0x4A));
    assert!(!requested(&c, 0, 0x4A) && !requested(&c, 3, 0x4A));
    // Cluster 1 holds no vCPU here.
    c.msr_write_on(0, 0x830, 0x0001_000F << 32 | 1 << 11 | 0x4B, 0).unwrap().unwrap();
    assert!((0..4).all(|cpu| !requested(&c, cpu, 0x4B)));
}

/// 11.6.2.4: lowest priority goes to one target, the lowest arbitration
/// priority, ties to the lowest vCPU.
#[test]
fn lowest_priority_picks_one() {
    let mut c = flat_chip(3);
    icr(&mut c, 0, 0b110, 0x4C | 1 << 8 | 1 << 11);
    assert!(requested(&c, 1, 0x4C) && !requested(&c, 2, 0x4C));
    c.lapic_mmio_write(1, TPR, 0x80, 0);
    icr(&mut c, 0, 0b110, 0x4D | 1 << 8 | 1 << 11);
    assert!(requested(&c, 2, 0x4D) && !requested(&c, 1, 0x4D));
}

/// 11.6.1: NMI reaches a running vCPU; one waiting for its SIPI has NMIs
/// blocked.
#[test]
fn nmi_ipi() {
    let mut c = chip(3);
    start(&mut c, 1);
    c.take_kicks();
    icr(&mut c, 0, 1, 0x400);
    assert!(c.lapic(1).unwrap().nmi_pending());
    assert_eq!(c.take_kicks(), 0b10);
    assert!(c.take_nmi_on(1));
    icr(&mut c, 0, 2, 0x400);
    assert!(!c.lapic(2).unwrap().nmi_pending());
    assert_eq!(c.router_counters().undelivered, 1);
}

/// 9.4.4 / 11.6.1: the bring-up sequence Linux's
/// wakeup_secondary_cpu_via_init() uses: ICR high then low, INIT assert
/// (level), INIT de-assert, then two SIPIs.
#[test]
fn init_sipi_sipi_brings_up_an_ap() {
    let mut c = chip(2);
    assert_eq!(c.run_state(0), Some(VcpuRunState::Running));
    assert_eq!(c.run_state(1), Some(VcpuRunState::WaitForSipi));
    c.take_kicks();
    icr(&mut c, 0, 1, 0xC500); // level-triggered INIT assert
    assert_eq!(c.run_state(1), Some(VcpuRunState::WaitForSipi));
    assert_eq!(c.take_kicks(), 0b10);
    assert!(!c.take_init(1), "the AP was not running");
    icr(&mut c, 0, 1, 0x8500); // INIT level de-assert
    assert_eq!(c.router_counters().init_deasserts, 1);
    assert_eq!(c.take_kicks(), 0);
    icr(&mut c, 0, 1, 0x069A); // SIPI, start page 0x9A000
    assert_eq!(c.run_state(1), Some(VcpuRunState::Startup { vector: 0x9A }));
    assert_eq!(c.take_kicks(), 0b10);
    icr(&mut c, 0, 1, 0x069A); // the second SIPI
    assert_eq!(c.take_startup(1), Some(0x9A));
    assert_eq!(c.take_startup(1), None);
    assert_eq!(c.run_state(1), Some(VcpuRunState::Running));
    assert_eq!(c.router_counters().sipis_ignored, 1);
    // A SIPI to a running vCPU is ignored.
    icr(&mut c, 0, 1, 0x0610);
    assert_eq!(c.run_state(1), Some(VcpuRunState::Running));
    assert_eq!(c.router_counters().sipis_ignored, 2);
}

/// 11.4.7.3: INIT to a running AP resets its APIC and stops it; the
/// hypervisor learns it once.
#[test]
fn init_stops_a_running_ap() {
    let mut c = chip(2);
    start(&mut c, 1);
    enable(&mut c, 1);
    c.lapic_mmio_write(1, ICR_HIGH, 0, 0);
    icr(&mut c, 0, 1, 0xC500);
    assert!(c.take_init(1));
    assert!(!c.take_init(1));
    assert_eq!(c.run_state(1), Some(VcpuRunState::WaitForSipi));
    assert!(!c.lapic(1).unwrap().accepts_fixed(), "SVR is back at its reset value");
    assert_eq!(c.lapic(1).unwrap().id(), 1);
}

/// SMIs are not modelled: counted, nothing delivered.
#[test]
fn smi_is_ignored() {
    let mut c = chip(2);
    start(&mut c, 1);
    c.take_kicks();
    icr(&mut c, 0, 1, 0x200);
    assert_eq!(c.router_counters().smis, 1);
    assert_eq!(c.take_kicks(), 0);
    assert_eq!(c.run_state(1), Some(VcpuRunState::Running));
}

/// The router serves as many vCPUs as a VM config may ask for.
#[test]
fn router_size_matches_the_config_limit() {
    assert_eq!(MAX_VCPUS as u32, vmm_config::config::MAX_VCPUS);
    assert_eq!(chip(vmm_config::config::MAX_VCPUS).vcpus(), MAX_VCPUS);
    assert_eq!(chip(100).vcpus(), MAX_VCPUS, "clamped");
    assert_eq!(chip(0).vcpus(), 1, "clamped");
}

/// An IPI to a vCPU that does not exist is counted, as before SMP.
#[test]
fn ipi_to_a_missing_vcpu_is_undelivered() {
    let mut c = Chipset::new(TscRate::new(HZ), 0, 0, 64 << 20, 0);
    enable(&mut c, 0);
    icr(&mut c, 0, 5, 0x40);
    assert_eq!(c.router_counters().undelivered, 1);
    assert_eq!(c.vcpus(), 1);
}

/// Programs IOAPIC pin `pin`: `low` the entry's low dword, `dest` its
/// destination byte.
fn ioapic_pin(c: &mut Chipset, pin: u32, low: u32, dest: u8) {
    c.ioapic.mmio_write(0x00, 0x10 + 2 * pin);
    c.ioapic.mmio_write(0x10, low);
    c.ioapic.mmio_write(0x00, 0x10 + 2 * pin + 1);
    c.ioapic.mmio_write(0x10, u32::from(dest) << 24);
}

/// IOAPIC messages are resolved like IPIs: physical APIC ID 2 is vCPU 2,
/// whom the device interrupt kicks; its EOI clears the level pin's remote IRR.
#[test]
fn ioapic_routes_to_a_nonzero_apic_id() {
    let mut c = enabled_chip(3);
    ioapic_pin(&mut c, 5, 0x50, 2);
    c.set_gsi(5, true);
    assert!(requested(&c, 2, 0x50) && !requested(&c, 0, 0x50));
    assert_eq!(c.take_kicks(), 0b100);
    c.set_gsi(5, false);
    // Level-triggered, vector 0x51: remote IRR until vCPU 2's EOI.
    ioapic_pin(&mut c, 6, 0x51 | 1 << 15, 2);
    c.set_gsi(6, true);
    assert_eq!(c.ioapic.redirection(6) & 1 << 14, 1 << 14);
    assert_eq!(c.acknowledge_on(2), Some(0x51));
    // Still asserted at the EOI: the IOAPIC sends it again, to vCPU 2.
    c.lapic_mmio_write(2, 0xB0, 0, 0);
    assert!(requested(&c, 2, 0x51));
    assert_eq!(c.acknowledge_on(2), Some(0x51));
    c.set_gsi(6, false);
    c.lapic_mmio_write(2, 0xB0, 0, 0);
    assert_eq!(c.ioapic.redirection(6) & 1 << 14, 0);
    // Logical flat destination to vCPU 1.
    c.lapic_mmio_write(1, LDR, 0x0200_0000, 0);
    ioapic_pin(&mut c, 7, 0x52 | 1 << 11, 0x02);
    c.set_gsi(7, true);
    assert!(requested(&c, 1, 0x52));
    assert_eq!(c.counters.messages_dropped, 0);
}

/// A local APIC timer expiring on another vCPU while vCPU 0 advances the
/// clock kicks that vCPU.
#[test]
fn a_timer_on_another_vcpu_kicks_it() {
    let mut c = chip(2);
    start(&mut c, 1);
    enable(&mut c, 1);
    c.lapic_mmio_write(1, 0x3E0, 0xB, 0); // divide by 1
    c.lapic_mmio_write(1, 0x320, 0x60, 0); // one-shot, vector 0x60
    c.lapic_mmio_write(1, 0x380, 1000, 0);
    c.take_kicks();
    let due = c.next_deadline_on(1, 0).unwrap();
    assert_eq!(c.next_deadline(0), Some(due));
    c.advance(due);
    assert!(c.interrupt_pending_on(1));
    assert_eq!(c.take_kicks(), 0b10);
}

/// Builds `n` APICs in assorted states from `bits`: x2APIC or not,
/// software-enabled or not, LDR, DFR model.
fn assorted_router(n: usize, bits: &[u32]) -> IpiRouter {
    let rate = TscRate::new(HZ);
    let apics = (0..n)
        .map(|i| {
            let b = bits.get(i).copied().unwrap_or(0);
            let mut a = LocalApic::new(i as u32, i == 0, HZ, rate);
            if b & 1 != 0 {
                a.mmio_write(SVR, 0x1FF, 0);
            }
            a.mmio_write(LDR, b & 0xFF00_0000, 0);
            a.mmio_write(DFR, if b & 2 != 0 { 0x0FFF_FFFF } else { 0xFFFF_FFFF }, 0);
            if b & 4 != 0 {
                let base = a.apic_base();
                a.set_apic_base(base | 1 << 10).unwrap();
            }
            if b & 8 != 0 {
                a.set_apic_base(0).unwrap();
            }
            a
        })
        .collect();
    IpiRouter::new(apics)
}

fn arb_mode() -> impl Strategy<Value = DeliveryMode> {
    prop_oneof![
        Just(DeliveryMode::Fixed),
        Just(DeliveryMode::LowestPriority),
        Just(DeliveryMode::Smi),
        Just(DeliveryMode::Nmi),
        Just(DeliveryMode::Init),
        Just(DeliveryMode::StartUp),
        Just(DeliveryMode::ExtInt),
    ]
}

fn arb_shorthand() -> impl Strategy<Value = Shorthand> {
    prop_oneof![
        Just(Shorthand::None),
        Just(Shorthand::SelfOnly),
        Just(Shorthand::AllIncludingSelf),
        Just(Shorthand::AllExcludingSelf),
    ]
}

proptest! {
    /// (a) Routing any message from any sender never panics and only ever
    /// reaches, kicks or changes vCPUs that exist.
    #[test]
    fn routing_targets_only_existing_vcpus(
        n in 1usize..=MAX_VCPUS,
        bits in proptest::collection::vec(any::<u32>(), MAX_VCPUS),
        sender in proptest::option::of(0usize..12),
        vector: u8,
        mode in arb_mode(),
        shorthand in arb_shorthand(),
        dest in prop_oneof![0u32..16, Just(0xFF), Just(u32::MAX), any::<u32>()],
        logical: bool,
        x2: bool,
        level_assert: bool,
        level: bool,
    ) {
        let mut r = assorted_router(n, &bits);
        let width = if x2 { DestWidth::X2apic } else { DestWidth::Xapic };
        let m = Message { vector, mode, dest: Destination { dest, logical, width }, shorthand, level_assert, level };
        let existing: CpuMask = (1 << n) - 1;
        let took = r.deliver(sender, m);
        prop_assert_eq!(took & !existing, 0);
        prop_assert_eq!(r.take_kicks() & !existing, 0);
        if mode == DeliveryMode::LowestPriority {
            prop_assert!(took.count_ones() <= 1);
        }
        prop_assert_eq!(r.vcpus(), n);
        for cpu in n..MAX_VCPUS {
            prop_assert!(r.run_state(cpu).is_none());
        }
    }

    /// (b) Whatever ICRs random vCPUs write, in xAPIC or x2APIC mode, with
    /// or without the chipset routing in between, no APIC queue exceeds
    /// its bound and a settled chipset holds no IPI.
    #[test]
    fn queues_stay_bounded(
        n in 1u32..=MAX_VCPUS as u32,
        ops in proptest::collection::vec((0usize..MAX_VCPUS, any::<u32>(), any::<u32>(), 0u8..4), 1..300),
    ) {
        let mut c = chip(n);
        for (cpu, low, high, how) in ops {
            match how {
                0 => {
                    c.lapic_mmio_write(cpu, ICR_HIGH, high, 0);
                    c.lapic_mmio_write(cpu, ICR_LOW, low, 0);
                }
                1 => {
                    // Straight into the APIC: queued, not yet routed.
                    if let Some(a) = c.lapic_mut(cpu) {
                        a.mmio_write(ICR_LOW, low, 0);
                    }
                }
                2 => {
                    let _ = c.msr_write_on(cpu, 0x830, u64::from(high) << 32 | u64::from(low), 0);
                }
                _ => {
                    let base = c.msr_read_on(cpu, 0x1B, 0).and_then(Result::ok).unwrap_or(0);
                    let _ = c.msr_write_on(cpu, 0x1B, base | 1 << 10, 0);
                    let _ = c.msr_write_on(cpu, 0x80F, 0x1FF, 0);
                }
            }
            for cpu in 0..c.vcpus() {
                prop_assert!(c.lapic(cpu).unwrap().queued_ipis() <= IPI_QUEUE_MAX);
            }
            prop_assert_eq!(c.take_kicks() >> n, 0);
        }
        c.advance(1);
        for cpu in 0..c.vcpus() {
            prop_assert_eq!(c.lapic(cpu).unwrap().queued_ipis(), 0);
        }
    }

    /// (c) A self-only shorthand never kicks another vCPU, whatever the
    /// delivery mode, vector or destination field.
    #[test]
    fn self_shorthand_never_kicks(
        n in 1u32..=MAX_VCPUS as u32,
        sender in 0usize..MAX_VCPUS,
        low: u32,
        dest: u8,
        enabled in proptest::collection::vec(any::<bool>(), MAX_VCPUS),
    ) {
        let mut c = chip(n);
        for (cpu, on) in enabled.iter().enumerate() {
            if *on {
                enable(&mut c, cpu);
            }
        }
        c.take_kicks();
        icr(&mut c, sender, dest, (low & !(3 << 18)) | 1 << 18);
        prop_assert_eq!(c.take_kicks(), 0);
    }
}
