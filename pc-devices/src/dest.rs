//! Which of a VM's local APICs an interrupt message addresses.
//!
//! One set of rules serves IPIs and IOAPIC messages alike, so a device
//! interrupt and an IPI with the same destination reach the same vCPUs
//! (Intel SDM vol. 3A 11.6.2 "Determining IPI Destination", 11.12.9-10 for
//! x2APIC). Everything here is a pure function of the APICs' registers.
//!
//! Mixed modes (an xAPIC-width message to an APIC in x2APIC mode, or the
//! reverse) are outside the SDM; like KVM we take the destination field as
//! it is and match it by the target's own mode, except that the 8-bit
//! broadcast 0xFF of an xAPIC-width message (the IOAPIC's) addresses every
//! APIC whatever its mode.

use crate::lapic::{ApicMode, LocalApic, Shorthand};

/// A set of vCPUs by index, bit `i` = vCPU `i`; wide enough for
/// the most vCPUs a VM has (8).
pub type CpuMask = u32;

/// DFR bits 31:28 for the flat model (SDM 11.6.2.2).
const DFR_FLAT: u32 = 0xF;
/// DFR bits 31:28 for the cluster model.
const DFR_CLUSTER: u32 = 0x0;

/// How wide the destination field of a message is, which decides its
/// broadcast value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestWidth {
    /// 8 bits: an xAPIC-mode ICR or an IOAPIC redirection entry; 0xFF broadcasts.
    Xapic,
    /// 32 bits: an x2APIC-mode ICR; 0xFFFF_FFFF broadcasts (SDM 11.12.9).
    X2apic,
}

impl DestWidth {
    /// The width of the ICR of an APIC in `mode` (x2APIC widens it to 32 bits).
    pub fn of(mode: ApicMode) -> DestWidth {
        match mode {
            ApicMode::X2Apic => DestWidth::X2apic,
            _ => DestWidth::Xapic,
        }
    }

    /// The all-ones destination that addresses every APIC.
    pub fn broadcast(self) -> u32 {
        match self {
            DestWidth::Xapic => 0xFF,
            DestWidth::X2apic => u32::MAX,
        }
    }
}

/// A message's destination field and mode, without shorthand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The destination field: an APIC ID (physical) or a logical address.
    pub dest: u32,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// The width the field was written in.
    pub width: DestWidth,
}

impl Destination {
    /// Whether the field is all ones (broadcast in either destination mode:
    /// SDM 11.6.2.1 for physical, 11.6.2.2 for flat and cluster logical).
    pub fn is_broadcast(&self) -> bool {
        self.dest == self.width.broadcast()
    }
}

/// Whether `apic` is addressed by `d`. A hardware-disabled APIC is
/// addressed by nothing (the CPU behaves as if it had none, SDM 11.4.3).
pub fn addressed(apic: &LocalApic, d: Destination) -> bool {
    let mode = apic.mode();
    if mode == ApicMode::Disabled {
        return false;
    }
    if d.is_broadcast() {
        return true;
    }
    match (mode, d.logical) {
        // SDM 11.12.9: physical x2APIC destinations are the 32-bit x2APIC ID.
        (ApicMode::X2Apic, false) => d.dest == apic.id(),
        // SDM 11.12.10.2: cluster (bits 31:16) must equal, and the member
        // bitmap (15:0) must share a bit.
        (ApicMode::X2Apic, true) => {
            let ldr = apic.logical_destination();
            d.dest >> 16 == ldr >> 16 && d.dest & ldr & 0xFFFF != 0
        }
        // SDM 11.6.2.1: the 8-bit ID in the xAPIC ID register.
        (_, false) => d.dest == u32::from(apic.xapic_id()),
        (_, true) => xapic_logical(apic, d.dest),
    }
}

/// SDM 11.6.2.2: an 8-bit logical destination against the LDR's logical
/// APIC ID (bits 31:24), in the model the DFR selects. A field wider than
/// 8 bits addresses no xAPIC-mode APIC.
fn xapic_logical(apic: &LocalApic, dest: u32) -> bool {
    let Ok(mda) = u8::try_from(dest) else { return false };
    let id = (apic.logical_destination() >> 24) as u8;
    match apic.destination_format() >> 28 {
        // Flat: the 8 bits are a bitmap of up to 8 APICs.
        DFR_FLAT => mda & id != 0,
        // Cluster: bits 7:4 the cluster, bits 3:0 a bitmap of its members.
        DFR_CLUSTER => mda >> 4 == id >> 4 && mda & id & 0x0F != 0,
        // Other models are reserved: nothing matches.
        _ => false,
    }
}

/// The vCPUs a message from `sender` (`None` for the IOAPIC, which has no
/// shorthands) addresses: SDM 11.6.1 for the shorthands, [`addressed`]
/// for the destination field. Only indices below `apics.len()` (and below
/// 32) are ever set.
pub fn resolve(apics: &[LocalApic], sender: Option<usize>, shorthand: Shorthand, d: Destination) -> CpuMask {
    let bit = |i: usize| u32::try_from(i).ok().and_then(|i| 1u32.checked_shl(i)).unwrap_or(0);
    let enabled = |a: &LocalApic| a.mode() != ApicMode::Disabled;
    let me = sender.filter(|&s| apics.get(s).is_some_and(enabled)).map_or(0, bit);
    let all = apics.iter().enumerate().filter(|(_, a)| enabled(a)).fold(0, |m, (i, _)| m | bit(i));
    match shorthand {
        Shorthand::SelfOnly => me,
        Shorthand::AllIncludingSelf => all,
        Shorthand::AllExcludingSelf => all & !me,
        Shorthand::None => apics.iter().enumerate().filter(|(_, a)| addressed(a, d)).fold(0, |m, (i, _)| m | bit(i)),
    }
}

/// The vCPU among `targets` a lowest-priority message goes to: the lowest
/// arbitration priority (SDM 11.6.2.4), ties to the lowest index, among
/// the APICs that take fixed interrupts now. Focus-processor checking is
/// not modelled (the SDM makes it model specific), so the choice depends
/// on the priorities only and is deterministic.
pub fn lowest_priority(apics: &[LocalApic], targets: CpuMask) -> Option<usize> {
    apics
        .iter()
        .enumerate()
        .filter(|(i, a)| i < &32 && targets >> i & 1 == 1 && a.accepts_fixed())
        .min_by_key(|(i, a)| (a.arbitration_priority(), *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::time::TscRate;
    use alloc::vec::Vec;

    fn apics(n: u32) -> Vec<LocalApic> {
        let rate = TscRate::new(1_000_000_000);
        (0..n)
            .map(|i| {
                let mut a = LocalApic::new(i, i == 0, 1_000_000_000, rate);
                a.mmio_write(0xF0, 0x1FF, 0);
                a
            })
            .collect()
    }

    fn phys(dest: u32) -> Destination {
        Destination { dest, logical: false, width: DestWidth::Xapic }
    }

    fn logical(dest: u32) -> Destination {
        Destination { dest, logical: true, width: DestWidth::Xapic }
    }

    fn x2(dest: u32, logical: bool) -> Destination {
        Destination { dest, logical, width: DestWidth::X2apic }
    }

    /// SDM 11.6.2.1: a physical destination names one APIC ID; 0xFF all.
    #[test]
    fn physical_xapic() {
        let a = apics(4);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, phys(2)), 0b0100);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, phys(7)), 0);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, phys(0xFF)), 0b1111);
    }

    /// The xAPIC ID register is writable; physical destinations follow it.
    #[test]
    fn physical_xapic_follows_the_id_register() {
        let mut a = apics(2);
        a[1].mmio_write(0x20, 5 << 24, 0);
        assert_eq!(resolve(&a, None, Shorthand::None, phys(5)), 0b10);
        assert_eq!(resolve(&a, None, Shorthand::None, phys(1)), 0);
    }

    /// SDM 11.6.1: the three shorthands ignore the destination field.
    #[test]
    fn shorthands() {
        let a = apics(3);
        assert_eq!(resolve(&a, Some(1), Shorthand::SelfOnly, phys(0)), 0b010);
        assert_eq!(resolve(&a, Some(1), Shorthand::AllIncludingSelf, phys(0)), 0b111);
        assert_eq!(resolve(&a, Some(1), Shorthand::AllExcludingSelf, phys(0)), 0b101);
        // The IOAPIC has no self.
        assert_eq!(resolve(&a, None, Shorthand::AllExcludingSelf, phys(0)), 0b111);
        assert_eq!(resolve(&a, None, Shorthand::SelfOnly, phys(0)), 0);
    }

    /// SDM 11.6.2.2, flat model: the 8 destination bits are ANDed with
    /// each LDR's logical ID.
    #[test]
    fn logical_flat() {
        let mut a = apics(3);
        for (i, apic) in a.iter_mut().enumerate() {
            apic.mmio_write(0xE0, 0xFFFF_FFFF, 0);
            apic.mmio_write(0xD0, 1 << (24 + i), 0);
        }
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0b011)), 0b011);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0b100)), 0b100);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0b1000)), 0);
        // All ones broadcasts, even to an APIC whose LDR is still 0.
        a[2].mmio_write(0xD0, 0, 0);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0xFF)), 0b111);
    }

    /// SDM 11.6.2.2, cluster model: bits 7:4 the cluster, 3:0 its members.
    #[test]
    fn logical_cluster() {
        let mut a = apics(4);
        for (i, apic) in a.iter_mut().enumerate() {
            apic.mmio_write(0xE0, 0x0FFF_FFFF, 0);
            // Clusters 1 and 2, two members each.
            let (cluster, member) = (1 + i / 2, 1u32 << (i % 2));
            apic.mmio_write(0xD0, ((cluster as u32) << 28) | (member << 24), 0);
        }
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0x13)), 0b0011);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0x22)), 0b1000);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0x31)), 0);
        // Flat interpretation would match 0x11 & LDR 0x21 here; cluster must not.
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0x11)), 0b0001);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, logical(0xFF)), 0b1111);
    }

    /// A DFR model other than flat or cluster is reserved: nothing matches.
    #[test]
    fn logical_reserved_model_matches_nothing() {
        let mut a = apics(1);
        a[0].mmio_write(0xE0, 0x5000_0000, 0);
        a[0].mmio_write(0xD0, 0x0100_0000, 0);
        assert_eq!(resolve(&a, None, Shorthand::None, logical(0x01)), 0);
    }

    fn x2apics(n: u32) -> Vec<LocalApic> {
        let mut a = apics(n);
        for apic in &mut a {
            apic.set_apic_base(apic.apic_base() | 1 << 10).unwrap();
        }
        a
    }

    /// SDM 11.12.9: x2APIC physical destinations are 32 bits, all ones broadcasts.
    #[test]
    fn physical_x2apic() {
        let a = x2apics(3);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(1, false)), 0b010);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(0x100 | 1, false)), 0);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(0xFF, false)), 0, "0xFF is an ID in x2APIC mode");
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(u32::MAX, false)), 0b111);
    }

    /// SDM 11.12.10.2: the x2APIC LDR is derived from the ID (cluster =
    /// id >> 4 in bits 31:16, bit id & 0xF in bits 15:0).
    #[test]
    fn logical_x2apic_cluster() {
        let rate = TscRate::new(1_000_000_000);
        let mut a: Vec<LocalApic> =
            [0u32, 1, 0x11].iter().map(|&id| LocalApic::new(id, id == 0, 1_000_000_000, rate)).collect();
        for apic in &mut a {
            apic.set_apic_base(apic.apic_base() | 1 << 10).unwrap();
        }
        assert_eq!(a[2].logical_destination(), 0x0001_0002);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(0x0000_0003, true)), 0b011);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(0x0001_0002, true)), 0b100);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(0x0001_0001, true)), 0, "wrong cluster for id 0");
        assert_eq!(resolve(&a, Some(0), Shorthand::None, x2(u32::MAX, true)), 0b111);
    }

    /// An IOAPIC message (8-bit) broadcast reaches x2APIC-mode APICs too,
    /// and its physical ID matches an x2APIC ID below 256.
    #[test]
    fn xapic_width_messages_reach_x2apic_targets() {
        let a = x2apics(2);
        assert_eq!(resolve(&a, None, Shorthand::None, phys(0xFF)), 0b11);
        assert_eq!(resolve(&a, None, Shorthand::None, phys(1)), 0b10);
    }

    /// A hardware-disabled APIC is addressed by nothing, shorthands included.
    #[test]
    fn disabled_apics_are_never_addressed() {
        let mut a = apics(2);
        a[1].set_apic_base(0).unwrap();
        assert_eq!(resolve(&a, Some(0), Shorthand::AllIncludingSelf, phys(0)), 0b01);
        assert_eq!(resolve(&a, Some(0), Shorthand::None, phys(0xFF)), 0b01);
        assert_eq!(resolve(&a, Some(1), Shorthand::SelfOnly, phys(0)), 0);
    }

    /// SDM 11.6.2.4: the lowest arbitration priority wins, ties to the
    /// lowest index; an APIC refusing fixed interrupts is skipped.
    #[test]
    fn lowest_priority_choice() {
        let mut a = apics(3);
        assert_eq!(lowest_priority(&a, 0b110), Some(1));
        a[1].mmio_write(0x80, 0x40, 0);
        assert_eq!(a[1].arbitration_priority(), 0x40);
        assert_eq!(lowest_priority(&a, 0b110), Some(2));
        a[2].mmio_write(0xF0, 0xFF, 0); // software-disabled
        assert_eq!(lowest_priority(&a, 0b110), Some(1));
        assert_eq!(lowest_priority(&a, 0), None);
        // A pending vector above the TPR raises the APR to its class.
        let mut b = apics(2);
        b[0].deliver(0x61, false);
        assert_eq!(b[0].arbitration_priority(), 0x60);
        assert_eq!(lowest_priority(&b, 0b11), Some(1));
    }
}
