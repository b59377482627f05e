//! The per-vCPU local APIC (xAPIC MMIO and x2APIC MSRs, timer, priorities).
//!
//! A model of the local APIC described in the Intel SDM vol. 3 ch. 11, one
//! per vCPU. It holds the interrupt request/in-service state, computes the
//! processor priority, runs the APIC timer (one-shot, periodic and
//! TSC-deadline) against the guest TSC passed in as `now`, and turns ICR
//! writes into [`Ipi`]s for the VM's interrupt router. The hypervisor asks it
//! which vector to inject ([`LocalApic::pending_vector`],
//! [`LocalApic::acknowledge`]) and when to wake a halted vCPU
//! ([`LocalApic::next_deadline`]).
//!
//! Time never runs backwards inside the model: a `now` older than one seen
//! before is taken as the newest one seen, so a deadline computed from it
//! can never lie before an earlier `advance`.
//!
//! Simplifications against the SDM (none of which Linux or common firmware
//! relies on):
//! - an interrupt arriving at a software-disabled APIC (SVR bit 8 = 0) is
//!   dropped; SDM 11.4.7.2 only promises that INIT, NMI, SMI and SIPI are
//!   handled normally and that what already sits in IRR/ISR is held, and
//!   real parts (and KVM) refuse new fixed interrupts then. Held IRR bits
//!   are still delivered. [`LocalApic::accepts_fixed`] lets a router know.
//! - no spurious-vector delivery: when a TPR raise hides the winner,
//!   [`LocalApic::acknowledge`] simply returns `None`;
//! - the APR reads 0, RRD reads 0, delivery-status bits read 0 (delivery is
//!   instant), focus checking and lowest-priority arbitration are the
//!   router's business, EOI-broadcast suppression is not offered;
//! - a divide-configuration write takes effect at the next arming of the
//!   timer, not mid-count;
//! - accesses to unimplemented xAPIC offsets read 0 and do not set ESR
//!   bit 7 (illegal register address);
//! - in x2APIC mode a write with bits 63:32 set (any register but the ICR),
//!   a nonzero EOI or ESR write, a TPR above 0xFF and a SELF IPI above 0xFF
//!   raise #GP; other reserved bits are silently masked off as in xAPIC.

use alloc::collections::VecDeque;

use crate::time::TscRate;

/// Where firmware expects the xAPIC page after reset (IA32_APIC_BASE default).
pub const APIC_BASE_DEFAULT: u64 = 0xFEE0_0000;
/// Size of the xAPIC MMIO window, for the caller's bus mapping.
pub const XAPIC_WINDOW: u64 = 0x1000;
/// Shortest period the periodic timer runs at, 100 µs: a guest asking for
/// less gets this, so a tiny initial count cannot flood its vCPU with exits
/// (Linux never programs periodic ticks faster than 10 kHz).
pub const MIN_PERIOD_NS: u64 = 100_000;
/// IPIs held for the router before further ones are dropped, so a guest
/// spamming the ICR cannot grow host memory.
pub const IPI_QUEUE_MAX: usize = 64;

/// IA32_APIC_BASE bit 8: this is the bootstrap processor.
const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode.
const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC globally enabled.
const BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE address bits 45:12 (MAXPHYADDR 46).
const BASE_ADDR_MASK: u64 = ((1 << 46) - 1) & !0xFFF;

/// Version register: version 0x14, max LVT entry 6 (7 LVTs with CMCI), no
/// directed EOI (bit 24 = 0).
const VERSION: u32 = 0x0006_0014;

/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
const LVT_CMCI: usize = 0;
const LVT_TIMER: usize = 1;
const LVT_THERMAL: usize = 2;
const LVT_PERF: usize = 3;
const LVT_LINT0: usize = 4;
const LVT_LINT1: usize = 5;
const LVT_ERROR: usize = 6;
/// Writable bits of each LVT, by index (vector, delivery mode, polarity,
/// trigger, mask, timer mode; never delivery status or remote IRR).
const LVT_WRITABLE: [u32; 7] = [
    0x0001_07FF, // CMCI
    0x0007_00FF, // timer: vector, mask, mode 18:17
    0x0001_07FF, // thermal
    0x0001_07FF, // perf
    0x0001_A7FF, // LINT0
    0x0001_A7FF, // LINT1
    0x0001_00FF, // error
];

/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// SVR writable bits: vector, enable, focus (bit 12, EOI-broadcast
/// suppression, is not offered).
const SVR_WRITABLE: u32 = 0x3FF;

/// ESR bit 5: this APIC tried to send an illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
/// ESR bit 6: this APIC received (or generated locally) an illegal vector.
const ESR_RECV_ILLEGAL: u32 = 1 << 6;

/// ICR low writable bits: vector, delivery mode, destination mode, level,
/// trigger, shorthand.
const ICR_WRITABLE: u32 = 0x000C_CFFF;

/// The access must raise #GP in the guest (bad MSR, bad value, bad mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicFault;

/// The APIC's global mode, from IA32_APIC_BASE EN and EXTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Hardware-disabled: the CPU behaves as if it had no APIC.
    Disabled,
    /// Registers in the MMIO page.
    XApic,
    /// Registers in MSRs 0x800-0x8FF.
    X2Apic,
}

/// An interprocessor interrupt the guest sent that this APIC cannot serve
/// alone; the VM's router delivers it to the other vCPUs.
///
/// Whatever this APIC already delivered to itself is excluded: an
/// all-including-self Fixed or NMI IPI (shorthand or physical broadcast) is
/// queued with [`Shorthand::AllExcludingSelf`]. INIT level de-assert
/// (`mode: Init, level_assert: false`) is queued too; routers ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// Vector (Fixed, LowestPriority; the start page for StartUp).
    pub vector: u8,
    /// How the targets take it.
    pub mode: DeliveryMode,
    /// Destination field: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub dest: u32,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// Destination shorthand, which overrides `dest` when not `None`.
    pub shorthand: Shorthand,
    /// ICR level bit (0 only for INIT level de-assert).
    pub level_assert: bool,
    /// ICR trigger-mode bit (level = true).
    pub trigger_level: bool,
}

/// Delivery mode of an IPI or LVT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, to every target.
    Fixed,
    /// The vector, to the lowest-priority target (router's choice).
    LowestPriority,
    /// System management interrupt.
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT (reset the target vCPU into wait-for-SIPI).
    Init,
    /// Start-up IPI: begin at `vector << 12`.
    StartUp,
    /// External (8259) interrupt; LVT LINT0 only.
    ExtInt,
}

/// ICR destination shorthand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    /// This APIC only.
    SelfOnly,
    /// Every APIC, this one included.
    AllIncludingSelf,
    /// Every APIC but this one.
    AllExcludingSelf,
}

/// Timer mode from LVT timer bits 18:17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// A register, by index (`offset >> 4`, or `msr - 0x800`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Id,
    Version,
    Tpr,
    Apr,
    Ppr,
    Eoi,
    Rrd,
    Ldr,
    Dfr,
    Svr,
    Isr(usize),
    Tmr(usize),
    Irr(usize),
    Esr,
    Lvt(usize),
    IcrLow,
    IcrHigh,
    InitCount,
    CurCount,
    Divide,
    SelfIpi,
}

impl Reg {
    fn decode(index: u32) -> Option<Reg> {
        let word = |base: u32| usize::try_from(index - base).unwrap_or(0);
        Some(match index {
            0x02 => Reg::Id,
            0x03 => Reg::Version,
            0x08 => Reg::Tpr,
            0x09 => Reg::Apr,
            0x0A => Reg::Ppr,
            0x0B => Reg::Eoi,
            0x0C => Reg::Rrd,
            0x0D => Reg::Ldr,
            0x0E => Reg::Dfr,
            0x0F => Reg::Svr,
            0x10..=0x17 => Reg::Isr(word(0x10)),
            0x18..=0x1F => Reg::Tmr(word(0x18)),
            0x20..=0x27 => Reg::Irr(word(0x20)),
            0x28 => Reg::Esr,
            0x2F => Reg::Lvt(LVT_CMCI),
            0x30 => Reg::IcrLow,
            0x31 => Reg::IcrHigh,
            0x32 => Reg::Lvt(LVT_TIMER),
            0x33 => Reg::Lvt(LVT_THERMAL),
            0x34 => Reg::Lvt(LVT_PERF),
            0x35 => Reg::Lvt(LVT_LINT0),
            0x36 => Reg::Lvt(LVT_LINT1),
            0x37 => Reg::Lvt(LVT_ERROR),
            0x38 => Reg::InitCount,
            0x39 => Reg::CurCount,
            0x3E => Reg::Divide,
            0x3F => Reg::SelfIpi,
            _ => return None,
        })
    }
}

/// A 256-bit vector bitmap (IRR, ISR, TMR and the EOI report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VecMap([u32; 8]);

impl VecMap {
    fn get(&self, v: u8) -> bool {
        self.0.get(usize::from(v >> 5)).is_some_and(|w| (w >> (v & 31)) & 1 == 1)
    }
    fn set(&mut self, v: u8) {
        if let Some(w) = self.0.get_mut(usize::from(v >> 5)) {
            *w |= 1 << (v & 31);
        }
    }
    fn clear(&mut self, v: u8) {
        if let Some(w) = self.0.get_mut(usize::from(v >> 5)) {
            *w &= !(1 << (v & 31));
        }
    }
    fn word(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }
    fn highest(&self) -> Option<u8> {
        let (i, w) = self.0.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        u8::try_from(i * 32 + 31 - w.leading_zeros() as usize).ok()
    }
    fn lowest(&self) -> Option<u8> {
        let (i, w) = self.0.iter().enumerate().find(|(_, w)| **w != 0)?;
        u8::try_from(i * 32 + w.trailing_zeros() as usize).ok()
    }
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct LocalApic {
    /// The hardware (initial, x2APIC) APIC ID.
    hw_id: u32,
    /// The xAPIC ID register's value (guest-writable in xAPIC mode).
    xapic_id: u8,
    bsp: bool,
    timer_hz: u64,
    rate: TscRate,
    /// IA32_APIC_BASE address bits.
    base: u64,
    mode: ApicMode,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VecMap,
    tmr: VecMap,
    irr: VecMap,
    /// ESR as the guest reads it (latched at the last ESR write).
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    lvt: [u32; 7],
    icr_low: u32,
    /// ICR destination: 8 bits in xAPIC mode, 32 in x2APIC mode.
    icr_dest: u32,
    initial_count: u32,
    divide: u32,
    /// TSC ticks of one count-down (clamped to MIN_PERIOD_NS if periodic).
    period: u64,
    /// TSC tick the current count-down started at (ideal, not the tick an
    /// advance happened to see).
    count_start: u64,
    /// TSC tick the running one-shot/periodic count reaches 0.
    expiry: Option<u64>,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    deadline: u64,
    nmi: bool,
    /// Level-triggered vectors EOI'd and not yet taken by the IOAPIC.
    eoi_done: VecMap,
    ipis: VecDeque<Ipi>,
    /// IPIs dropped because the queue held [`IPI_QUEUE_MAX`] already, for
    /// the VM's counters.
    pub ipis_dropped: u64,
    /// The newest `now` seen.
    last_now: u64,
}

impl LocalApic {
    /// An APIC in its power-on state: xAPIC mode at the default base,
    /// software-disabled, every LVT masked.
    pub fn new(apic_id: u32, bsp: bool, timer_hz: u64, rate: TscRate) -> Self {
        let mut a = LocalApic {
            hw_id: apic_id,
            xapic_id: apic_id as u8,
            bsp,
            timer_hz: timer_hz.max(1),
            rate,
            base: APIC_BASE_DEFAULT,
            mode: ApicMode::XApic,
            tpr: 0,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            isr: VecMap::default(),
            tmr: VecMap::default(),
            irr: VecMap::default(),
            esr: 0,
            esr_pending: 0,
            lvt: [LVT_MASKED; 7],
            icr_low: 0,
            icr_dest: 0,
            initial_count: 0,
            divide: 0,
            period: 0,
            count_start: 0,
            expiry: None,
            deadline: 0,
            nmi: false,
            eoi_done: VecMap::default(),
            ipis: VecDeque::new(),
            ipis_dropped: 0,
            last_now: 0,
        };
        a.reset();
        a
    }

    /// INIT: every register back to its power-on value (SDM 11.4.7.1, 11.4.7.3),
    /// except IA32_APIC_BASE (so the mode, x2APIC included, survives) and the
    /// APIC ID. IPIs already queued and EOI reports stay for the router.
    pub fn reset(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.isr = VecMap::default();
        self.tmr = VecMap::default();
        self.irr = VecMap::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; 7];
        self.icr_low = 0;
        self.icr_dest = 0;
        self.initial_count = 0;
        self.divide = 0;
        self.period = 0;
        self.count_start = 0;
        self.expiry = None;
        self.deadline = 0;
        self.nmi = false;
    }

    /// The hardware APIC ID (x2APIC ID; the xAPIC ID starts as its low byte).
    pub fn id(&self) -> u32 {
        self.hw_id
    }

    /// IA32_APIC_BASE as RDMSR returns it.
    pub fn apic_base(&self) -> u64 {
        let mut v = self.base;
        if self.bsp {
            v |= BASE_BSP;
        }
        match self.mode {
            ApicMode::Disabled => {}
            ApicMode::XApic => v |= BASE_EN,
            ApicMode::X2Apic => v |= BASE_EN | BASE_EXTD,
        }
        v
    }

    /// WRMSR IA32_APIC_BASE, with the mode transitions of SDM 11.12.5: the
    /// BSP bit is read-only here, x2APIC can only be entered from xAPIC and
    /// left only by disabling, and disabling resets the APIC.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), ApicFault> {
        if value & !(BASE_ADDR_MASK | BASE_BSP | BASE_EXTD | BASE_EN) != 0 {
            return Err(ApicFault);
        }
        let new = match (value & BASE_EN != 0, value & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(ApicFault),
        };
        match (self.mode, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => return Err(ApicFault),
            _ => {}
        }
        self.base = value & BASE_ADDR_MASK;
        if new == ApicMode::Disabled && self.mode != ApicMode::Disabled {
            self.reset();
            self.xapic_id = self.hw_id as u8;
        }
        if new == ApicMode::X2Apic && self.mode == ApicMode::XApic {
            // The x2APIC ID is the hardware one; the destination field widens.
            self.icr_dest = 0;
        }
        self.mode = new;
        Ok(())
    }

    /// The global mode, for the exit handlers (MMIO vs MSR access).
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// Whether a new fixed interrupt would be accepted into IRR now (the
    /// APIC is enabled in hardware and software), so a router can tell a
    /// dropped level-triggered interrupt from a delivered one.
    pub fn accepts_fixed(&self) -> bool {
        self.mode != ApicMode::Disabled && self.svr & SVR_ENABLE != 0
    }

    /// A 32-bit read of the xAPIC page at `offset`.
    pub fn mmio_read(&mut self, offset: u64, now: u64) -> u32 {
        if self.mode != ApicMode::XApic || offset & 0xF != 0 || offset >= XAPIC_WINDOW {
            return 0;
        }
        let now = self.clock(now);
        self.advance(now);
        let Some(reg) = u32::try_from(offset >> 4).ok().and_then(Reg::decode) else {
            return 0;
        };
        match reg {
            Reg::Id => u32::from(self.xapic_id) << 24,
            Reg::Ldr => self.ldr,
            Reg::Dfr => self.dfr | 0x0FFF_FFFF,
            Reg::IcrLow => self.icr_low,
            Reg::IcrHigh => self.icr_dest << 24,
            Reg::SelfIpi => 0,
            r => self.read_common(r, now),
        }
    }

    /// A 32-bit write to the xAPIC page at `offset`.
    pub fn mmio_write(&mut self, offset: u64, value: u32, now: u64) {
        if self.mode != ApicMode::XApic || offset & 0xF != 0 || offset >= XAPIC_WINDOW {
            return;
        }
        let now = self.clock(now);
        self.advance(now);
        let Some(reg) = u32::try_from(offset >> 4).ok().and_then(Reg::decode) else {
            return;
        };
        match reg {
            Reg::Id => self.xapic_id = (value >> 24) as u8,
            Reg::Ldr => self.ldr = value & 0xFF00_0000,
            Reg::Dfr => self.dfr = (value & 0xF000_0000) | 0x0FFF_FFFF,
            Reg::IcrLow => {
                self.icr_low = value & ICR_WRITABLE;
                self.send_ipi();
            }
            Reg::IcrHigh => self.icr_dest = value >> 24,
            Reg::SelfIpi => {}
            r => self.write_common(r, value, now),
        }
    }

    /// RDMSR of an x2APIC register (0x800-0x8FF).
    pub fn msr_read(&mut self, msr: u32, now: u64) -> Result<u64, ApicFault> {
        let reg = self.x2apic_reg(msr)?;
        let now = self.clock(now);
        self.advance(now);
        Ok(match reg {
            Reg::Eoi | Reg::SelfIpi => return Err(ApicFault),
            Reg::Id => u64::from(self.hw_id),
            Reg::Ldr => u64::from(self.x2apic_ldr()),
            Reg::IcrLow => (u64::from(self.icr_dest) << 32) | u64::from(self.icr_low),
            r => u64::from(self.read_common(r, now)),
        })
    }

    /// WRMSR of an x2APIC register (0x800-0x8FF).
    pub fn msr_write(&mut self, msr: u32, value: u64, now: u64) -> Result<(), ApicFault> {
        let reg = self.x2apic_reg(msr)?;
        let now = self.clock(now);
        self.advance(now);
        if reg == Reg::IcrLow {
            self.icr_dest = (value >> 32) as u32;
            self.icr_low = (value as u32) & ICR_WRITABLE;
            self.send_ipi();
            return Ok(());
        }
        let low = u32::try_from(value).map_err(|_| ApicFault)?;
        match reg {
            Reg::Id | Reg::Version | Reg::Ppr | Reg::Ldr | Reg::Isr(_) | Reg::Tmr(_) | Reg::Irr(_) | Reg::CurCount => {
                Err(ApicFault)
            }
            Reg::Eoi | Reg::Esr if low != 0 => Err(ApicFault),
            Reg::Tpr | Reg::SelfIpi if low > 0xFF => Err(ApicFault),
            Reg::SelfIpi => {
                self.self_ipi(low as u8);
                Ok(())
            }
            r => {
                self.write_common(r, low, now);
                Ok(())
            }
        }
    }

    /// IA32_TSC_DEADLINE as RDMSR returns it.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (or with 0 disarms) the deadline when
    /// the LVT timer is in TSC-deadline mode; otherwise ignored (SDM 11.5.4.1).
    pub fn set_tsc_deadline(&mut self, value: u64, now: u64) {
        let now = self.clock(now);
        self.advance(now);
        if self.mode != ApicMode::Disabled && self.timer_mode() == TimerMode::TscDeadline {
            self.deadline = value;
        }
    }

    /// A fixed interrupt arriving from the IOAPIC, an MSI or the router
    /// (another vCPU's IPI). Vectors 0-15 are refused with ESR bit 6; a
    /// disabled APIC (hardware or software, see the module doc) drops it.
    pub fn deliver(&mut self, vector: u8, level_triggered: bool) {
        if self.mode == ApicMode::Disabled {
            return;
        }
        if vector < 16 {
            self.raise_error(ESR_RECV_ILLEGAL);
            return;
        }
        self.accept(vector, level_triggered);
    }

    /// An NMI for this vCPU (LINT1 in NMI mode, an NMI IPI, the watchdog).
    pub fn deliver_nmi(&mut self) {
        self.nmi = true;
    }

    /// Takes the pending NMI, for injection.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// An edge on LINT0 (`pin` 0) or LINT1 (`pin` 1), delivered as its LVT
    /// says: Fixed sets the vector, NMI latches an NMI; ExtINT is read
    /// through [`LocalApic::accepts_extint`] instead. With the APIC
    /// hardware-disabled LINT1 is the CPU's NMI pin.
    pub fn lint_edge(&mut self, pin: u8) {
        let idx = match pin {
            0 => LVT_LINT0,
            1 => LVT_LINT1,
            _ => return,
        };
        if self.mode == ApicMode::Disabled {
            if pin == 1 {
                self.nmi = true;
            }
            return;
        }
        let lvt = self.lvt_get(idx);
        if lvt & LVT_MASKED != 0 {
            return;
        }
        match (lvt >> 8) & 7 {
            0 => self.fire_lvt(idx),
            4 => self.nmi = true,
            _ => {}
        }
    }

    /// Puts the APIC in the virtual-wire state a PC BIOS leaves it in (MP
    /// spec 3.6.2.2): software-enabled, LINT0 ExtINT, LINT1 NMI, so the
    /// 8259 reaches a guest booted without firmware.
    pub fn enable_virtual_wire(&mut self) {
        if self.mode == ApicMode::Disabled {
            return;
        }
        self.svr = SVR_ENABLE | 0xFF;
        self.lvt_set(LVT_LINT0, 0x700);
        self.lvt_set(LVT_LINT1, 0x400);
    }

    /// Whether the 8259's INTR reaches the CPU: with the APIC hardware-
    /// disabled it does directly, otherwise only through LINT0 in ExtINT mode.
    pub fn accepts_extint(&self) -> bool {
        if self.mode == ApicMode::Disabled {
            return true;
        }
        let lint0 = self.lvt_get(LVT_LINT0);
        lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7
    }

    /// The vector the CPU would take now: the highest requested one whose
    /// priority class is above the processor priority's (SDM 11.8.3).
    pub fn pending_vector(&self) -> Option<u8> {
        if self.mode == ApicMode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        ((v >> 4) > (self.ppr() >> 4)).then_some(v)
    }

    /// The CPU takes [`LocalApic::pending_vector`]: it moves from IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// Runs the timer up to `now`: sets the timer vector in IRR for each
    /// expiry passed (a periodic timer's missed periods coalesce into one).
    pub fn advance(&mut self, now: u64) {
        let now = self.clock(now);
        if let Some(e) = self.expiry {
            if now >= e {
                if self.timer_mode() == TimerMode::Periodic && self.period > 0 {
                    let behind = (now - e) / self.period;
                    let start = u128::from(e) + u128::from(behind) * u128::from(self.period);
                    self.count_start = u64::try_from(start).unwrap_or(now);
                    self.expiry = Some(self.count_start.saturating_add(self.period));
                } else {
                    self.expiry = None;
                }
                self.fire_lvt(LVT_TIMER);
            }
        }
        if self.deadline != 0 && now >= self.deadline && self.timer_mode() == TimerMode::TscDeadline {
            self.deadline = 0;
            self.fire_lvt(LVT_TIMER);
        }
    }

    /// The TSC tick at which [`LocalApic::advance`] will next set an IRR
    /// bit, so a halted vCPU sleeps exactly that long. Never before the
    /// newest `now` seen, except a TSC deadline the guest set in the past.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.mode == ApicMode::Disabled || self.lvt_get(LVT_TIMER) & LVT_MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.deadline != 0).then_some(self.deadline),
            _ => self.expiry,
        }
    }

    /// A level-triggered vector the guest EOI'd, for the IOAPIC to clear its
    /// remote IRR. Each EOI is reported once.
    pub fn take_eoi(&mut self) -> Option<u8> {
        let v = self.eoi_done.lowest()?;
        self.eoi_done.clear(v);
        Some(v)
    }

    /// The next IPI for the router to deliver to other vCPUs.
    pub fn take_ipi(&mut self) -> Option<Ipi> {
        self.ipis.pop_front()
    }

    /// The xAPIC ID register's APIC ID (bits 31:24; the guest may change
    /// it in xAPIC mode), which physical xAPIC destinations are matched
    /// against (SDM 11.6.2.1).
    pub fn xapic_id(&self) -> u8 {
        self.xapic_id
    }

    /// The logical destination register as logical destinations are
    /// matched against it: the guest-written LDR in xAPIC mode, the LDR
    /// derived from the x2APIC ID in x2APIC mode (SDM 11.12.10.2).
    pub fn logical_destination(&self) -> u32 {
        match self.mode {
            ApicMode::X2Apic => self.x2apic_ldr(),
            _ => self.ldr,
        }
    }

    /// The destination format register (bits 31:28: 1111b flat, 0000b
    /// cluster model, SDM 11.6.2.2), for xAPIC logical destinations.
    pub fn destination_format(&self) -> u32 {
        self.dfr
    }

    /// The arbitration priority (APR, SDM 11.6.2.4) the router ranks
    /// lowest-priority targets by; the APR register itself reads 0 (see
    /// the module doc).
    pub fn arbitration_priority(&self) -> u8 {
        let tpr = self.tpr >> 4;
        let irrv = self.irr.highest().unwrap_or(0) >> 4;
        let isrv = self.isr.highest().unwrap_or(0) >> 4;
        if tpr >= irrv && tpr > isrv {
            self.tpr
        } else {
            // The SDM's formula, literally: max(TPR[7:4] AND ISRV[7:4], IRRV[7:4]).
            (tpr & isrv).max(irrv) << 4
        }
    }

    /// Whether an NMI waits for injection, so a router can report it.
    pub fn nmi_pending(&self) -> bool {
        self.nmi
    }

    /// IPIs queued for the router, never more than [`IPI_QUEUE_MAX`].
    pub fn queued_ipis(&self) -> usize {
        self.ipis.len()
    }

    /// ESR as the guest would read it (errors latched by its last write).
    pub fn error_status(&self) -> u32 {
        self.esr
    }

    /// The processor priority (PPR, SDM 11.8.3.1), for the injection logic
    /// and the debug log.
    pub fn processor_priority(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// Whether `vector` is in service, for the debug log and tests.
    pub fn in_service(&self, vector: u8) -> bool {
        self.isr.get(vector)
    }

    /// Whether `vector` is requested (IRR), for the debug log and tests.
    pub fn requested(&self, vector: u8) -> bool {
        self.irr.get(vector)
    }

    // ---- internals ----

    fn clock(&mut self, now: u64) -> u64 {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn ppr(&self) -> u8 {
        self.processor_priority()
    }

    fn lvt_get(&self, i: usize) -> u32 {
        self.lvt.get(i).copied().unwrap_or(LVT_MASKED)
    }

    fn lvt_set(&mut self, i: usize, value: u32) {
        let writable = LVT_WRITABLE.get(i).copied().unwrap_or(0);
        let mut v = value & writable;
        if self.svr & SVR_ENABLE == 0 {
            v |= LVT_MASKED;
        }
        if let Some(slot) = self.lvt.get_mut(i) {
            *slot = v;
        }
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt_get(LVT_TIMER) >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            // 11b is reserved; it counts as one-shot.
            _ => TimerMode::OneShot,
        }
    }

    fn divisor(&self) -> u64 {
        let v = (self.divide & 3) | ((self.divide >> 1) & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    fn x2apic_ldr(&self) -> u32 {
        ((self.hw_id >> 4) << 16) | (1 << (self.hw_id & 0xF))
    }

    /// The register an x2APIC MSR names, or #GP (wrong mode, not an x2APIC
    /// register, or an xAPIC-only one).
    fn x2apic_reg(&self, msr: u32) -> Result<Reg, ApicFault> {
        if self.mode != ApicMode::X2Apic || !(0x800..=0x8FF).contains(&msr) {
            return Err(ApicFault);
        }
        match Reg::decode(msr - 0x800) {
            None | Some(Reg::Apr | Reg::Rrd | Reg::Dfr | Reg::IcrHigh) => Err(ApicFault),
            Some(r) => Ok(r),
        }
    }

    /// Reads of registers that look the same in both modes.
    fn read_common(&self, reg: Reg, now: u64) -> u32 {
        match reg {
            Reg::Version => VERSION,
            Reg::Tpr => u32::from(self.tpr),
            Reg::Ppr => u32::from(self.ppr()),
            Reg::Svr => self.svr,
            Reg::Isr(i) => self.isr.word(i),
            Reg::Tmr(i) => self.tmr.word(i),
            Reg::Irr(i) => self.irr.word(i),
            Reg::Esr => self.esr,
            Reg::Lvt(i) => self.lvt_get(i),
            Reg::InitCount => self.initial_count,
            Reg::CurCount => self.current_count(now),
            Reg::Divide => self.divide,
            // APR, RRD, EOI and the mode-specific ones.
            _ => 0,
        }
    }

    /// Writes of registers that behave the same in both modes (read-only
    /// ones are ignored here; x2APIC faults on them before).
    fn write_common(&mut self, reg: Reg, value: u32, now: u64) {
        match reg {
            Reg::Tpr => self.tpr = value as u8,
            Reg::Eoi => self.eoi(),
            Reg::Svr => {
                self.svr = value & SVR_WRITABLE;
                if self.svr & SVR_ENABLE == 0 {
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            Reg::Esr => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            Reg::Lvt(LVT_TIMER) => {
                let old = self.timer_mode();
                self.lvt_set(LVT_TIMER, value);
                if self.timer_mode() != old {
                    // SDM 11.5.4.1: changing the mode disarms the timer.
                    self.expiry = None;
                    self.deadline = 0;
                    self.initial_count = 0;
                }
            }
            Reg::Lvt(i) => self.lvt_set(i, value),
            Reg::InitCount => self.arm(value, now),
            Reg::Divide => self.divide = value & 0xB,
            _ => {}
        }
    }

    fn arm(&mut self, count: u32, now: u64) {
        let mode = self.timer_mode();
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = count;
        if count == 0 {
            self.expiry = None;
            return;
        }
        let natural = self.rate.from_device(u64::from(count).saturating_mul(self.divisor()), self.timer_hz);
        let period =
            if mode == TimerMode::Periodic { natural.max(self.rate.from_ns(MIN_PERIOD_NS)) } else { natural }.max(1);
        self.period = period;
        self.count_start = now;
        self.expiry = Some(now.saturating_add(period));
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.expiry.is_none() || self.period == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let mut elapsed = now.saturating_sub(self.count_start);
        if self.timer_mode() == TimerMode::Periodic {
            elapsed %= self.period;
        } else if elapsed >= self.period {
            return 0;
        }
        // Scaled to the (possibly clamped) period, so the count reaches 0
        // exactly when the timer fires.
        let done = u128::from(elapsed) * u128::from(self.initial_count) / u128::from(self.period);
        self.initial_count.saturating_sub(u32::try_from(done).unwrap_or(u32::MAX))
    }

    /// Sets `vector` in IRR if the APIC takes fixed interrupts now.
    fn accept(&mut self, vector: u8, level: bool) {
        if !self.accepts_fixed() {
            return;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// A locally generated interrupt from LVT `i`, if unmasked.
    fn fire_lvt(&mut self, i: usize) {
        let lvt = self.lvt_get(i);
        if lvt & LVT_MASKED != 0 || self.mode == ApicMode::Disabled {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.raise_error(ESR_RECV_ILLEGAL);
            return;
        }
        let level = i != LVT_TIMER && i != LVT_ERROR && lvt & (1 << 15) != 0;
        self.accept(vector, level);
    }

    /// Records an error and raises the error LVT (once: an illegal error
    /// vector only adds ESR bit 6).
    fn raise_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt_get(LVT_ERROR);
        if lvt & LVT_MASKED != 0 {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.esr_pending |= ESR_RECV_ILLEGAL;
        } else {
            self.accept(vector, false);
        }
    }

    fn eoi(&mut self) {
        if let Some(v) = self.isr.highest() {
            self.isr.clear(v);
            if self.tmr.get(v) {
                self.eoi_done.set(v);
            }
        }
    }

    fn self_ipi(&mut self, vector: u8) {
        if vector < 16 {
            self.raise_error(ESR_SEND_ILLEGAL);
        } else {
            self.accept(vector, false);
        }
    }

    fn queue_ipi(&mut self, ipi: Ipi) {
        if self.ipis.len() >= IPI_QUEUE_MAX {
            self.ipis_dropped = self.ipis_dropped.saturating_add(1);
        } else {
            self.ipis.push_back(ipi);
        }
    }

    /// Serves `mode` locally if this APIC can; false for what the router
    /// (or the vCPU loop: INIT, SIPI, SMI) must handle.
    fn deliver_local(&mut self, mode: DeliveryMode, vector: u8) -> bool {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(vector, false);
                true
            }
            DeliveryMode::Nmi => {
                self.nmi = true;
                true
            }
            _ => false,
        }
    }

    /// The ICR was written: send what it holds (SDM 11.6.1).
    fn send_ipi(&mut self) {
        let low = self.icr_low;
        let vector = low as u8;
        let mode = match (low >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            // 011b and 111b are reserved in the ICR: nothing is sent.
            _ => return,
        };
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.raise_error(ESR_SEND_ILLEGAL);
            return;
        }
        let logical = low & (1 << 11) != 0;
        let shorthand = match (low >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let dest = self.icr_dest;
        let mut ipi = Ipi {
            vector,
            mode,
            dest,
            logical,
            shorthand,
            level_assert: low & (1 << 14) != 0,
            trigger_level: low & (1 << 15) != 0,
        };
        let (broadcast, me) = match self.mode {
            ApicMode::X2Apic => (u32::MAX, self.hw_id),
            _ => (0xFF, u32::from(self.xapic_id)),
        };
        let everyone =
            shorthand == Shorthand::AllIncludingSelf || (shorthand == Shorthand::None && !logical && dest == broadcast);
        match shorthand {
            Shorthand::SelfOnly => {
                self.deliver_local(mode, vector);
            }
            Shorthand::AllExcludingSelf => self.queue_ipi(ipi),
            _ if everyone => {
                if self.deliver_local(mode, vector) {
                    ipi.shorthand = Shorthand::AllExcludingSelf;
                }
                self.queue_ipi(ipi);
            }
            _ if !logical && dest == me => {
                if !self.deliver_local(mode, vector) {
                    self.queue_ipi(ipi);
                }
            }
            _ => self.queue_ipi(ipi),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 1 GHz TSC and timer: one tick is one nanosecond.
    const HZ: u64 = 1_000_000_000;

    fn apic() -> LocalApic {
        let mut a = LocalApic::new(0, true, HZ, TscRate::new(HZ));
        a.mmio_write(0xF0, 0x1FF, 0);
        a
    }

    fn x2apic(id: u32) -> LocalApic {
        let mut a = LocalApic::new(id, false, HZ, TscRate::new(HZ));
        a.set_apic_base(APIC_BASE_DEFAULT | BASE_EN | BASE_EXTD).unwrap();
        a.msr_write(0x80F, 0x1FF, 0).unwrap();
        a
    }

    #[test]
    fn power_on_state() {
        let mut a = LocalApic::new(3, false, HZ, TscRate::new(HZ));
        assert_eq!(a.apic_base(), APIC_BASE_DEFAULT | BASE_EN);
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.mmio_read(0x20, 0), 3 << 24);
        assert_eq!(a.mmio_read(0x30, 0), 0x0006_0014);
        assert_eq!(a.mmio_read(0xF0, 0), 0xFF);
        assert_eq!(a.mmio_read(0xE0, 0), 0xFFFF_FFFF);
        for off in [0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(a.mmio_read(off, 0), LVT_MASKED);
        }
        assert!(!a.accepts_extint());
        assert_eq!(a.mmio_read(0x24, 0), 0, "unaligned reads 0");
        assert_eq!(a.mmio_read(0x40, 0), 0, "reserved reads 0");
        let b = LocalApic::new(0, true, HZ, TscRate::new(HZ));
        assert_eq!(b.apic_base(), APIC_BASE_DEFAULT | BASE_EN | BASE_BSP);
    }

    #[test]
    fn one_shot_fires_once_at_the_right_tick_with_divides() {
        // divide config -> divisor
        for (dcr, div) in [(0xB, 1), (0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128)] {
            let mut a = apic();
            a.mmio_write(0x3E0, dcr, 0);
            a.mmio_write(0x320, 0x30, 1000);
            a.mmio_write(0x380, 100, 1000);
            let fire = 1000 + 100 * div;
            assert_eq!(a.next_deadline(), Some(fire));
            a.advance(fire - 1);
            assert_eq!(a.pending_vector(), None);
            assert_eq!(a.mmio_read(0x390, fire - 1), 1);
            a.advance(fire);
            assert_eq!(a.acknowledge(), Some(0x30));
            a.mmio_write(0xB0, 0, fire);
            assert_eq!(a.next_deadline(), None);
            assert_eq!(a.mmio_read(0x390, fire), 0);
            a.advance(fire * 10);
            assert_eq!(a.pending_vector(), None, "one-shot fires once");
        }
    }

    #[test]
    fn timer_with_a_slower_input_clock() {
        // 25 MHz crystal, 2.5 GHz TSC: one timer tick is 100 TSC ticks.
        let mut a = LocalApic::new(0, true, 25_000_000, TscRate::new(2_500_000_000));
        a.mmio_write(0xF0, 0x1FF, 0);
        a.mmio_write(0x3E0, 0xB, 0);
        a.mmio_write(0x320, 0x40, 0);
        a.mmio_write(0x380, 1000, 0);
        assert_eq!(a.next_deadline(), Some(100_000));
        assert_eq!(a.mmio_read(0x390, 50_000), 500);
        a.advance(99_999);
        assert!(a.pending_vector().is_none());
        a.advance(100_000);
        assert_eq!(a.pending_vector(), Some(0x40));
    }

    #[test]
    fn current_count_counts_down() {
        let mut a = apic();
        a.mmio_write(0x3E0, 0x0, 0); // divide by 2
        a.mmio_write(0x320, 0x30, 0);
        a.mmio_write(0x380, 1000, 0);
        assert_eq!(a.mmio_read(0x380, 0), 1000);
        assert_eq!(a.mmio_read(0x390, 0), 1000);
        assert_eq!(a.mmio_read(0x390, 1), 1000);
        assert_eq!(a.mmio_read(0x390, 2), 999);
        assert_eq!(a.mmio_read(0x390, 1000), 500);
        assert_eq!(a.mmio_read(0x390, 2000), 0);
        // Writing 0 stops the timer.
        a.mmio_write(0x380, 500, 3000);
        a.mmio_write(0x380, 0, 3100);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(0x390, 3200), 0);
    }

    #[test]
    fn periodic_rearms_and_coalesces_after_a_long_gap() {
        let mut a = apic();
        a.mmio_write(0x3E0, 0xB, 0);
        a.mmio_write(0x320, 0x31 | (1 << 17), 0);
        a.mmio_write(0x380, 1_000_000, 0); // 1 ms
        assert_eq!(a.next_deadline(), Some(1_000_000));
        a.advance(1_000_000);
        assert_eq!(a.acknowledge(), Some(0x31));
        a.mmio_write(0xB0, 0, 1_000_000);
        assert_eq!(a.next_deadline(), Some(2_000_000));
        // A long gap: many periods missed, one IRR bit, re-armed on the grid.
        a.advance(10_500_000);
        assert_eq!(a.acknowledge(), Some(0x31));
        assert_eq!(a.acknowledge(), None);
        assert_eq!(a.next_deadline(), Some(11_000_000));
        assert_eq!(a.mmio_read(0x390, 10_750_000), 250_000);
        a.mmio_write(0xB0, 0, 10_750_000);
        a.advance(11_000_000);
        assert_eq!(a.pending_vector(), Some(0x31));
    }

    #[test]
    fn periodic_period_is_clamped() {
        let mut a = apic();
        a.mmio_write(0x3E0, 0xB, 0);
        a.mmio_write(0x320, 0x31 | (1 << 17), 0);
        a.mmio_write(0x380, 1000, 0); // 1 µs asked
        assert_eq!(a.next_deadline(), Some(MIN_PERIOD_NS));
        // One-shot is not clamped.
        let mut b = apic();
        b.mmio_write(0x3E0, 0xB, 0);
        b.mmio_write(0x320, 0x31, 0);
        b.mmio_write(0x380, 1000, 0);
        assert_eq!(b.next_deadline(), Some(1000));
    }

    #[test]
    fn masked_timer_counts_but_sets_nothing() {
        let mut a = apic();
        a.mmio_write(0x3E0, 0xB, 0);
        a.mmio_write(0x320, 0x31 | LVT_MASKED, 0);
        a.mmio_write(0x380, 1000, 0);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(0x390, 500), 500);
        a.advance(2000);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.mmio_read(0x390, 2000), 0);
    }

    #[test]
    fn tsc_deadline_arm_fire_disarm() {
        let mut a = apic();
        a.set_tsc_deadline(5000, 0);
        assert_eq!(a.tsc_deadline(), 0, "ignored outside deadline mode");
        a.mmio_write(0x320, 0x50 | (2 << 17), 0);
        a.mmio_write(0x380, 100, 0);
        assert_eq!(a.mmio_read(0x380, 0), 0, "initial count ignored in deadline mode");
        a.set_tsc_deadline(5000, 10);
        assert_eq!(a.tsc_deadline(), 5000);
        assert_eq!(a.next_deadline(), Some(5000));
        a.advance(4999);
        assert_eq!(a.pending_vector(), None);
        a.advance(5000);
        assert_eq!(a.pending_vector(), Some(0x50));
        assert_eq!(a.tsc_deadline(), 0);
        assert_eq!(a.next_deadline(), None);
        // 0 disarms.
        a.set_tsc_deadline(9000, 6000);
        a.set_tsc_deadline(0, 6000);
        assert_eq!(a.next_deadline(), None);
        // A past deadline is reported as is and fires at the next advance.
        a.acknowledge();
        a.mmio_write(0xB0, 0, 6000);
        a.set_tsc_deadline(100, 7000);
        assert_eq!(a.next_deadline(), Some(100));
        a.advance(7000);
        assert_eq!(a.pending_vector(), Some(0x50));
        // A mode switch disarms.
        a.set_tsc_deadline(20_000, 7000);
        a.mmio_write(0x320, 0x50, 7000);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.tsc_deadline(), 0);
        a.mmio_write(0x320, 0x50 | (2 << 17), 7000);
        assert_eq!(a.tsc_deadline(), 0);
    }

    #[test]
    fn mode_switch_disarms_the_count() {
        let mut a = apic();
        a.mmio_write(0x320, 0x30, 0);
        a.mmio_write(0x380, 1000, 0);
        a.mmio_write(0x320, 0x30 | (1 << 17), 10);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(0x390, 20), 0);
        // Unmasking/masking without a mode change keeps it running.
        a.mmio_write(0x380, 1_000_000, 20);
        a.mmio_write(0x320, 0x31 | (1 << 17), 30);
        assert_eq!(a.next_deadline(), Some(20 + 2_000_000));
    }

    #[test]
    fn tpr_and_ppr_mask_lower_classes() {
        let mut a = apic();
        a.deliver(0x45, false);
        a.mmio_write(0x80, 0x50, 0);
        assert_eq!(a.mmio_read(0xA0, 0), 0x50);
        assert_eq!(a.pending_vector(), None);
        a.mmio_write(0x80, 0x45, 0);
        assert_eq!(a.pending_vector(), None, "same class is masked");
        a.mmio_write(0x80, 0x3F, 0);
        assert_eq!(a.pending_vector(), Some(0x45));
        assert_eq!(a.acknowledge(), Some(0x45));
        assert_eq!(a.mmio_read(0xA0, 0), 0x40, "ISR class wins over TPR");
        assert_eq!(a.mmio_read(0x80, 0), 0x3F);
    }

    #[test]
    fn nested_isr_and_eoi_order() {
        let mut a = apic();
        a.deliver(0x30, false);
        assert_eq!(a.acknowledge(), Some(0x30));
        a.deliver(0x31, false);
        assert_eq!(a.pending_vector(), None, "same class as in service");
        a.deliver(0x60, false);
        assert_eq!(a.acknowledge(), Some(0x60));
        assert_eq!(a.mmio_read(0x100 + 0x10 * 3, 0), 1 << 0, "ISR word 3 has 0x60");
        assert_eq!(a.mmio_read(0x100 + 0x10, 0), 1 << 16, "ISR word 1 has 0x30");
        assert_eq!(a.mmio_read(0x200 + 0x10, 0), 1 << 17, "IRR word 1 has 0x31");
        a.mmio_write(0xB0, 0, 0);
        assert!(!a.in_service(0x60));
        assert!(a.in_service(0x30));
        assert_eq!(a.pending_vector(), None);
        a.mmio_write(0xB0, 0, 0);
        assert_eq!(a.acknowledge(), Some(0x31));
    }

    #[test]
    fn eoi_with_nothing_in_service_is_harmless() {
        let mut a = apic();
        a.deliver(0x40, true);
        a.mmio_write(0xB0, 0, 0);
        assert_eq!(a.take_eoi(), None);
        assert!(a.requested(0x40));
        let mut x = x2apic(1);
        x.msr_write(0x80B, 0, 0).unwrap();
        assert_eq!(x.take_eoi(), None);
    }

    #[test]
    fn level_eoi_is_reported_once() {
        let mut a = apic();
        a.deliver(0x41, true);
        a.deliver(0x52, false);
        assert_eq!(a.mmio_read(0x180 + 0x20, 0), 1 << 1, "TMR word 2 has 0x41");
        assert_eq!(a.acknowledge(), Some(0x52));
        a.mmio_write(0xB0, 0, 0);
        assert_eq!(a.take_eoi(), None, "edge vector not reported");
        assert_eq!(a.acknowledge(), Some(0x41));
        a.mmio_write(0xB0, 0, 0);
        assert_eq!(a.take_eoi(), Some(0x41));
        assert_eq!(a.take_eoi(), None);
    }

    #[test]
    fn illegal_vectors_set_esr_and_raise_the_error_lvt() {
        let mut a = apic();
        a.mmio_write(0x370, 0xFE, 0);
        a.deliver(5, false);
        assert!(!a.requested(5));
        assert_eq!(a.pending_vector(), Some(0xFE));
        assert_eq!(a.error_status(), 0, "latched only by an ESR write");
        a.mmio_write(0x280, 0, 0);
        assert_eq!(a.mmio_read(0x280, 0), ESR_RECV_ILLEGAL);
        a.mmio_write(0x280, 0, 0);
        assert_eq!(a.mmio_read(0x280, 0), 0);
        // Sending an illegal vector: bit 5.
        a.mmio_write(0x300, 0x0004_0003, 0); // self shorthand, vector 3
        a.mmio_write(0x280, 0, 0);
        assert_eq!(a.error_status(), ESR_SEND_ILLEGAL);
        assert!(a.take_ipi().is_none());
        // x2APIC SELF IPI with an illegal vector.
        let mut x = x2apic(2);
        x.msr_write(0x83F, 7, 0).unwrap();
        x.msr_write(0x828, 0, 0).unwrap();
        assert_eq!(x.msr_read(0x828, 0).unwrap(), u64::from(ESR_SEND_ILLEGAL));
        // Masked error LVT: ESR only.
        let mut b = apic();
        b.deliver(1, false);
        assert_eq!(b.pending_vector(), None);
        // An illegal LVT timer vector: received illegal vector.
        let mut c = apic();
        c.mmio_write(0x320, 0x05, 0);
        c.mmio_write(0x380, 10, 0);
        c.advance(100);
        c.mmio_write(0x280, 0, 100);
        assert_eq!(c.error_status(), ESR_RECV_ILLEGAL);
    }

    #[test]
    fn self_ipis() {
        let mut a = apic();
        a.mmio_write(0x300, 0x0004_0061, 0); // self shorthand
        assert_eq!(a.pending_vector(), Some(0x61));
        assert!(a.take_ipi().is_none());
        // Physical destination = own ID.
        a.mmio_write(0x310, 0, 0);
        a.mmio_write(0x300, 0x72, 0);
        assert!(a.requested(0x72));
        assert!(a.take_ipi().is_none());
        // All including self: local plus one for the others.
        a.mmio_write(0x300, 0x0008_0083, 0);
        assert!(a.requested(0x83));
        let ipi = a.take_ipi().unwrap();
        assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
        assert_eq!(ipi.vector, 0x83);
        // x2APIC SELF IPI register.
        let mut x = x2apic(9);
        x.msr_write(0x83F, 0x99, 0).unwrap();
        assert_eq!(x.pending_vector(), Some(0x99));
        assert_eq!(x.msr_write(0x83F, 0x100, 0), Err(ApicFault));
        assert_eq!(x.msr_read(0x83F, 0), Err(ApicFault));
        // x2APIC ICR to own 32-bit ID.
        x.msr_write(0x830, (9u64 << 32) | 0xA0, 0).unwrap();
        assert!(x.requested(0xA0));
        assert!(x.take_ipi().is_none());
    }

    #[test]
    fn ipis_to_others_are_queued_and_bounded() {
        let mut a = apic();
        a.mmio_write(0x310, 5 << 24, 0);
        a.mmio_write(0x300, 0x4500 | (1 << 14), 0); // INIT assert to 5
        assert_eq!(a.mmio_read(0x300, 0) & (1 << 12), 0, "delivery status idle");
        let ipi = a.take_ipi().unwrap();
        assert_eq!(
            ipi,
            Ipi {
                vector: 0,
                mode: DeliveryMode::Init,
                dest: 5,
                logical: false,
                shorthand: Shorthand::None,
                level_assert: true,
                trigger_level: false,
            }
        );
        a.mmio_write(0x300, 0x0006_0610, 0); // SIPI to self: nothing to serve locally, dropped
        assert!(a.take_ipi().is_none());
        a.mmio_write(0x300, 0x000C_0610, 0);
        let ipi = a.take_ipi().unwrap();
        assert_eq!(ipi.mode, DeliveryMode::StartUp);
        assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
        // Logical destinations go to the router.
        a.mmio_write(0x300, 0x0840, 0);
        assert!(a.take_ipi().unwrap().logical);
        for _ in 0..IPI_QUEUE_MAX + 10 {
            a.mmio_write(0x300, 0x40, 0);
        }
        assert_eq!(a.ipis_dropped, 10);
        let mut n = 0;
        while a.take_ipi().is_some() {
            n += 1;
        }
        assert_eq!(n, IPI_QUEUE_MAX);
        // x2APIC destinations are 32 bits.
        let mut x = x2apic(1);
        x.msr_write(0x830, (0x1234u64 << 32) | 0x40, 0).unwrap();
        assert_eq!(x.msr_read(0x830, 0).unwrap(), (0x1234u64 << 32) | 0x40);
        assert_eq!(x.take_ipi().unwrap().dest, 0x1234);
    }

    #[test]
    fn x2apic_msr_faults() {
        let mut a = apic();
        assert_eq!(a.msr_read(0x802, 0), Err(ApicFault), "xAPIC mode");
        assert_eq!(a.msr_write(0x808, 0, 0), Err(ApicFault));
        let mut x = x2apic(0x123);
        assert_eq!(x.msr_read(0x802, 0).unwrap(), 0x123);
        assert_eq!(x.msr_read(0x80D, 0).unwrap(), (0x12 << 16) | (1 << 3));
        assert_eq!(x.msr_read(0x803, 0).unwrap(), 0x0006_0014);
        for ro in [0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x839] {
            assert_eq!(x.msr_write(ro, 0, 0), Err(ApicFault), "{ro:#x}");
        }
        for wo in [0x80B, 0x83F] {
            assert_eq!(x.msr_read(wo, 0), Err(ApicFault), "{wo:#x}");
        }
        for missing in [0x800, 0x809, 0x80C, 0x80E, 0x831, 0x840, 0x8FF, 0x7FF, 0x900] {
            assert_eq!(x.msr_read(missing, 0), Err(ApicFault), "{missing:#x}");
            assert_eq!(x.msr_write(missing, 0, 0), Err(ApicFault), "{missing:#x}");
        }
        assert_eq!(x.msr_write(0x80B, 1, 0), Err(ApicFault));
        assert_eq!(x.msr_write(0x828, 1, 0), Err(ApicFault));
        assert_eq!(x.msr_write(0x808, 0x100, 0), Err(ApicFault));
        assert_eq!(x.msr_write(0x832, 1 << 32, 0), Err(ApicFault));
        x.msr_write(0x808, 0x20, 0).unwrap();
        assert_eq!(x.msr_read(0x808, 0).unwrap(), 0x20);
        assert_eq!(x.mmio_read(0x80, 0), 0, "no MMIO in x2APIC mode");
        x.mmio_write(0x80, 0x70, 0);
        assert_eq!(x.msr_read(0x808, 0).unwrap(), 0x20);
    }

    #[test]
    fn apic_base_transitions() {
        let mut a = LocalApic::new(4, true, HZ, TscRate::new(HZ));
        let x = APIC_BASE_DEFAULT | BASE_EN;
        let x2 = x | BASE_EXTD;
        let off = APIC_BASE_DEFAULT;
        assert_eq!(a.set_apic_base(x | 1), Err(ApicFault), "reserved bit 0");
        assert_eq!(a.set_apic_base(x | (1 << 9)), Err(ApicFault), "reserved bit 9");
        assert_eq!(a.set_apic_base(x | (1 << 46)), Err(ApicFault), "above MAXPHYADDR");
        assert_eq!(a.set_apic_base(APIC_BASE_DEFAULT | BASE_EXTD), Err(ApicFault), "EXTD without EN");
        a.mmio_write(0x20, 7 << 24, 0);
        a.mmio_write(0xF0, 0x1FF, 0);
        a.deliver(0x80, false);
        a.set_apic_base(x2).unwrap();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.apic_base(), x2 | BASE_BSP);
        assert_eq!(a.msr_read(0x802, 0).unwrap(), 4, "x2APIC ID is the hardware one");
        assert!(a.requested(0x80), "state kept on xAPIC -> x2APIC");
        assert_eq!(a.set_apic_base(x), Err(ApicFault), "x2APIC -> xAPIC directly");
        a.set_apic_base(off).unwrap();
        assert_eq!(a.mode(), ApicMode::Disabled);
        assert!(!a.requested(0x80), "disabling resets");
        assert!(a.accepts_extint());
        assert_eq!(a.set_apic_base(x2), Err(ApicFault), "disabled -> x2APIC");
        a.deliver(0x90, false);
        assert_eq!(a.pending_vector(), None);
        // The base is guest-settable.
        a.set_apic_base(0xFED0_0000 | BASE_EN).unwrap();
        assert_eq!(a.apic_base(), 0xFED0_0000 | BASE_EN | BASE_BSP);
        assert_eq!(a.mmio_read(0x20, 0), 4 << 24);
        assert_eq!(a.mmio_read(0xF0, 0), 0xFF);
        // INIT keeps the mode.
        a.set_apic_base(0xFED0_0000 | BASE_EN | BASE_EXTD).unwrap();
        a.reset();
        assert_eq!(a.mode(), ApicMode::X2Apic);
    }

    #[test]
    fn software_disable_masks_lvts() {
        let mut a = apic();
        a.mmio_write(0x320, 0x30, 0);
        a.mmio_write(0x350, 0x700, 0);
        assert!(a.accepts_extint());
        a.deliver(0x40, false);
        a.mmio_write(0xF0, 0xFF, 0);
        assert_eq!(a.mmio_read(0x320, 0), 0x30 | LVT_MASKED);
        assert!(!a.accepts_extint());
        assert!(!a.accepts_fixed());
        a.mmio_write(0x320, 0x30, 0);
        assert_eq!(a.mmio_read(0x320, 0), 0x30 | LVT_MASKED, "stays masked");
        a.deliver(0x50, false);
        assert!(!a.requested(0x50), "dropped while software-disabled");
        assert_eq!(a.pending_vector(), Some(0x40), "held IRR still delivered");
        a.mmio_write(0xF0, 0x1FF, 0);
        assert_eq!(a.mmio_read(0x320, 0), 0x30 | LVT_MASKED, "masked until rewritten");
        a.mmio_write(0x320, 0x30, 0);
        assert_eq!(a.mmio_read(0x320, 0), 0x30);
        // SVR vector bits 3:0 read as written.
        a.mmio_write(0xF0, 0x1F3 | (1 << 12), 0);
        assert_eq!(a.mmio_read(0xF0, 0), 0x1F3);
    }

    #[test]
    fn lint_and_nmi() {
        let mut a = apic();
        a.enable_virtual_wire();
        assert!(a.accepts_extint());
        a.lint_edge(1);
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        a.mmio_write(0x360, 0x400 | LVT_MASKED, 0);
        a.lint_edge(1);
        assert!(!a.take_nmi());
        a.mmio_write(0x350, 0x33, 0);
        a.lint_edge(0);
        assert_eq!(a.pending_vector(), Some(0x33));
        // NMI IPI to self.
        a.mmio_write(0x300, 0x0004_0400, 0);
        assert!(a.take_nmi());
    }

    #[test]
    fn xapic_registers_read_back() {
        let mut a = apic();
        a.mmio_write(0xD0, 0xFFFF_FFFF, 0);
        assert_eq!(a.mmio_read(0xD0, 0), 0xFF00_0000);
        a.mmio_write(0xE0, 0x0000_0000, 0);
        assert_eq!(a.mmio_read(0xE0, 0), 0x0FFF_FFFF);
        a.mmio_write(0x3E0, 0xFFFF_FFFF, 0);
        assert_eq!(a.mmio_read(0x3E0, 0), 0xB);
        a.mmio_write(0x310, 0xFFFF_FFFF, 0);
        assert_eq!(a.mmio_read(0x310, 0), 0xFF00_0000);
        a.mmio_write(0x350, 0xFFFF_FFFF, 0);
        assert_eq!(a.mmio_read(0x350, 0), 0x0001_A7FF);
        a.mmio_write(0x90, 5, 0);
        assert_eq!(a.mmio_read(0x90, 0), 0);
        assert_eq!(a.mmio_read(0xB0, 0), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Mmio(u16, u32),
        MmioRead(u16),
        Msr(u16, u64),
        MsrRead(u16),
        Base(u64),
        Advance(u64),
        Deliver(u8, bool),
        Ack,
        Deadline(u64),
        Lint(u8),
        TakeIpi,
        TakeEoi,
    }

    fn op() -> impl Strategy<Value = Op> {
        let interesting_offsets = prop_oneof![
            Just(0x80u16),
            Just(0xB0),
            Just(0xF0),
            Just(0x280),
            Just(0x300),
            Just(0x310),
            Just(0x320),
            Just(0x370),
            Just(0x380),
            Just(0x3E0),
            (0u16..0x40).prop_map(|i| i << 4),
            0u16..0x1000,
        ];
        let lvt_values = prop_oneof![any::<u32>(), (0u32..4, any::<u8>()).prop_map(|(m, v)| (m << 17) | u32::from(v))];
        prop_oneof![
            (interesting_offsets.clone(), lvt_values.clone()).prop_map(|(o, v)| Op::Mmio(o, v)),
            interesting_offsets.prop_map(Op::MmioRead),
            (0u16..0x100, prop_oneof![lvt_values.prop_map(u64::from), any::<u64>()]).prop_map(|(m, v)| Op::Msr(m, v)),
            (0u16..0x100).prop_map(Op::MsrRead),
            prop_oneof![
                Just(APIC_BASE_DEFAULT),
                Just(APIC_BASE_DEFAULT | BASE_EN),
                Just(APIC_BASE_DEFAULT | BASE_EN | BASE_EXTD),
                any::<u64>()
            ]
            .prop_map(Op::Base),
            prop_oneof![0u64..2000, 0u64..10_000_000, any::<u64>()].prop_map(Op::Advance),
            (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Deliver(v, l)),
            Just(Op::Ack),
            prop_oneof![0u64..20_000_000, any::<u64>()].prop_map(Op::Deadline),
            (0u8..3).prop_map(Op::Lint),
            Just(Op::TakeIpi),
            Just(Op::TakeEoi),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_arbitrary_sequences(
            ops in proptest::collection::vec(op(), 1..200),
            timer_hz in prop_oneof![Just(HZ), 1u64..u64::MAX],
            tsc_hz in prop_oneof![Just(HZ), 0u64..u64::MAX],
        ) {
            let mut a = LocalApic::new(1, true, timer_hz, TscRate::new(tsc_hz));
            let mut now = 0u64;
            let mut guest_deadline = None;
            for op in ops {
                match op {
                    Op::Mmio(o, v) => a.mmio_write(u64::from(o), v, now),
                    Op::MmioRead(o) => { a.mmio_read(u64::from(o), now); }
                    Op::Msr(m, v) => { let _ = a.msr_write(0x800 + u32::from(m), v, now); }
                    Op::MsrRead(m) => { let _ = a.msr_read(0x800 + u32::from(m), now); }
                    Op::Base(v) => { let _ = a.set_apic_base(v); }
                    Op::Advance(d) => {
                        now = now.saturating_add(d);
                        a.advance(now);
                    }
                    Op::Deliver(v, l) => a.deliver(v, l),
                    Op::Ack => {
                        if let Some(v) = a.acknowledge() {
                            prop_assert!(a.in_service(v));
                            prop_assert!(!a.requested(v));
                        }
                    }
                    Op::Deadline(v) => {
                        a.set_tsc_deadline(v, now);
                        guest_deadline = Some(v);
                    }
                    Op::Lint(p) => a.lint_edge(p),
                    Op::TakeIpi => { a.take_ipi(); }
                    Op::TakeEoi => { a.take_eoi(); }
                }
                if let Some(v) = a.pending_vector() {
                    prop_assert!(v >> 4 > a.processor_priority() >> 4);
                }
                if let Some(d) = a.next_deadline() {
                    prop_assert!(d >= now || Some(d) == guest_deadline, "deadline {d} before {now}");
                }
                prop_assert!(a.ipis.len() <= IPI_QUEUE_MAX);
            }
        }

        #[test]
        fn next_deadline_is_exact(
            timer_hz in 1u64..10_000_000_000,
            tsc_hz in 1u64..10_000_000_000,
            dcr in 0u32..16,
            count in 1u32..u32::MAX,
            mode in 0u32..2,
            start in 0u64..1_000_000_000_000,
            gaps in proptest::collection::vec(0u64..100_000_000_000, 1..8),
        ) {
            let mut a = LocalApic::new(0, true, timer_hz, TscRate::new(tsc_hz));
            a.mmio_write(0xF0, 0x1FF, 0);
            a.mmio_write(0x3E0, dcr, 0);
            a.mmio_write(0x320, 0x30 | (mode << 17), 0);
            a.mmio_write(0x380, count, start);
            let mut now = start;
            for g in gaps {
                let Some(d) = a.next_deadline() else { break };
                prop_assert!(d > now);
                a.advance(d - 1);
                prop_assert!(a.pending_vector().is_none(), "fired early");
                a.advance(d);
                prop_assert_eq!(a.acknowledge(), Some(0x30));
                a.mmio_write(0xB0, 0, d);
                now = d.saturating_add(g);
                a.advance(now);
                a.acknowledge();
                a.mmio_write(0xB0, 0, now);
            }
        }
    }
}
