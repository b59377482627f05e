//! The register file and state machine of one virtio-mmio device.

use alloc::vec::Vec;

use super::regs::*;
use super::{DeviceBackend, MmioOutcome};
use crate::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use crate::memory::GuestMemory;
use crate::queue::{QueueError, QueueLayout, QueueOptions, Virtqueue};

/// Status bits a driver may set itself.
const DRIVER_BITS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;

/// A virtio-mmio device: transport registers plus a device backend.
///
/// The hypervisor forwards every guest access inside the device's
/// [`WINDOW_SIZE`] window to [`Self::read`] / [`Self::write`], and after any
/// call that may touch queues checks [`Self::take_interrupt`].
#[derive(Debug)]
pub struct MmioDevice<B: DeviceBackend> {
    backend: B,
    queues: Vec<Virtqueue>,
    /// Layout written by the driver for each queue, applied on QueueReady.
    layouts: Vec<QueueLayout>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    irq_raised: bool,
    last_error: Option<QueueError>,
    error_count: u64,
}

/// Replaces the low (`high == false`) or high half of `v`.
fn set_half(v: u64, high: bool, half: u32) -> u64 {
    if high {
        (v & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (v & !0xffff_ffff) | u64::from(half)
    }
}

impl<B: DeviceBackend> MmioDevice<B> {
    /// A device in reset state, as the guest first finds it.
    pub fn new(backend: B) -> Self {
        let n = backend.queue_count();
        Self {
            backend,
            queues: (0..n).map(|_| Virtqueue::disabled()).collect(),
            layouts: (0..n).map(|_| QueueLayout::default()).collect(),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            irq_raised: false,
            last_error: None,
            error_count: 0,
        }
    }

    /// The device type, e.g. to drain its output.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device type, mutable.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The queues, for inspection (the backend gets them on notify).
    pub fn queues(&self) -> &[Virtqueue] {
        &self.queues
    }

    /// The queues, mutable; prefer [`Self::run_backend`], which handles errors and interrupts.
    pub fn queues_mut(&mut self) -> &mut [Virtqueue] {
        &mut self.queues
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    /// The driver finished setup and the device has no pending error: queues are live.
    pub fn is_running(&self) -> bool {
        self.status & (DRIVER_OK | FEATURES_OK) == (DRIVER_OK | FEATURES_OK)
            && self.status & (DEVICE_NEEDS_RESET | FAILED) == 0
    }

    /// The last protocol violation that put the device into DEVICE_NEEDS_RESET.
    pub fn last_error(&self) -> Option<QueueError> {
        self.last_error
    }

    /// How many times the device entered DEVICE_NEEDS_RESET.
    pub fn error_count(&self) -> u64 {
        self.error_count
    }

    /// InterruptStatus is non-zero: a level-triggered line should be asserted.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Whether an interrupt cause was raised since the last call: inject an
    /// edge-triggered interrupt when this returns true.
    pub fn take_interrupt(&mut self) -> bool {
        core::mem::take(&mut self.irq_raised)
    }

    /// The device configuration changed (e.g. link status): bump ConfigGeneration, tell the driver.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    fn raise(&mut self, cause: u32) {
        self.interrupt_status |= cause;
        self.irq_raised = true;
    }

    /// Enters DEVICE_NEEDS_RESET: the device does nothing more until the driver resets it.
    fn fail(&mut self, e: QueueError) {
        self.status |= DEVICE_NEEDS_RESET;
        self.last_error = Some(e);
        self.error_count += 1;
        if self.status & DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.irq_raised = false;
        self.queues.iter_mut().for_each(|q| *q = Virtqueue::disabled());
        self.layouts.iter_mut().for_each(|l| *l = QueueLayout::default());
        self.backend.reset();
    }

    /// Runs `f` on the backend and queues if the device is live, then raises
    /// the used-buffer interrupt where the driver wants one. Returns `Ok(None)`
    /// when the device is not live; an error enters DEVICE_NEEDS_RESET.
    pub fn run_backend<T>(
        &mut self,
        mem: &dyn GuestMemory,
        f: impl FnOnce(&mut B, &mut [Virtqueue], &dyn GuestMemory) -> Result<T, QueueError>,
    ) -> Result<Option<T>, QueueError> {
        if !self.is_running() {
            return Ok(None);
        }
        let result = f(&mut self.backend, &mut self.queues, mem).and_then(|v| {
            let mut wanted = false;
            for q in self.queues.iter_mut() {
                wanted |= q.needs_interrupt(mem)?;
            }
            Ok((v, wanted))
        });
        match result {
            Ok((v, wanted)) => {
                if wanted {
                    self.raise(INT_USED_BUFFER);
                }
                Ok(Some(v))
            }
            Err(e) => {
                self.fail(e);
                Err(e)
            }
        }
    }

    /// Offers every enabled queue to the backend again, e.g. after the
    /// hypervisor drained output that had made the backend stop early.
    pub fn poll(&mut self, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        self.run_backend(mem, |b, queues, mem| {
            for i in 0..queues.len() {
                let ready = queues.get(i).is_some_and(Virtqueue::is_ready);
                if let (true, Ok(q)) = (ready, u16::try_from(i)) {
                    b.notify(q, queues, mem)?;
                }
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// A guest read of `size` bytes at `offset` in the register window.
    /// Registers below Config are 32-bit only; other sizes read 0, as does
    /// anything unknown or write-only.
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        if offset >= CONFIG {
            return self.read_config(offset, size);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        let sel = usize::try_from(self.queue_sel).ok();
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.backend.device_id(),
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.backend.features() as u32,
                1 => (self.backend.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => match sel {
                Some(i) if i < self.queues.len() => u32::from(self.backend.queue_max()),
                _ => 0,
            },
            QUEUE_READY => sel.and_then(|i| self.queues.get(i)).map_or(0, |q| u32::from(q.is_ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn read_config(&self, offset: u64, size: u8) -> u32 {
        let mut buf = [0u8; 4];
        let len = usize::from(size);
        if offset >= WINDOW_SIZE || !matches!(size, 1 | 2 | 4) {
            return 0;
        }
        if let Some(part) = buf.get_mut(..len) {
            self.backend.read_config(offset - CONFIG, part);
        }
        u32::from_le_bytes(buf)
    }

    /// A guest write of `size` bytes of `value` at `offset` in the register
    /// window. A queue notification runs the backend here, on `mem`.
    pub fn write(&mut self, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory) -> MmioOutcome {
        let mut out = MmioOutcome::default();
        if offset >= CONFIG {
            if offset < WINDOW_SIZE && matches!(size, 1 | 2 | 4) {
                let bytes = value.to_le_bytes();
                if let Some(part) = bytes.get(..usize::from(size)) {
                    self.backend.write_config(offset - CONFIG, part);
                }
            }
            return out;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return out;
        }
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES
                // Features are frozen once FEATURES_OK is set; only halves 0 and 1 exist.
                if self.status & FEATURES_OK == 0 && self.driver_features_sel <= 1 => {
                    self.driver_features = set_half(self.driver_features, self.driver_features_sel == 1, value);
                }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => self.with_layout(|l| l.size = u16::try_from(value).unwrap_or(0)),
            QUEUE_DESC_LOW => self.with_layout(|l| l.desc = set_half(l.desc, false, value)),
            QUEUE_DESC_HIGH => self.with_layout(|l| l.desc = set_half(l.desc, true, value)),
            QUEUE_DRIVER_LOW => self.with_layout(|l| l.avail = set_half(l.avail, false, value)),
            QUEUE_DRIVER_HIGH => self.with_layout(|l| l.avail = set_half(l.avail, true, value)),
            QUEUE_DEVICE_LOW => self.with_layout(|l| l.used = set_half(l.used, false, value)),
            QUEUE_DEVICE_HIGH => self.with_layout(|l| l.used = set_half(l.used, true, value)),
            QUEUE_READY => out.error = self.write_queue_ready(value),
            QUEUE_NOTIFY => return self.notify(value, mem),
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => out.reset = self.write_status(value),
            _ => {}
        }
        out
    }

    /// Applies `f` to the selected queue's layout, unless that queue is enabled.
    fn with_layout(&mut self, f: impl FnOnce(&mut QueueLayout)) {
        let Ok(i) = usize::try_from(self.queue_sel) else { return };
        if self.queues.get(i).is_some_and(Virtqueue::is_ready) {
            return;
        }
        if let Some(l) = self.layouts.get_mut(i) {
            f(l);
        }
    }

    fn queue_options(&self, queue: u16) -> QueueOptions {
        QueueOptions {
            max_size: self.backend.queue_max(),
            event_idx: self.driver_features & EVENT_IDX != 0,
            indirect: self.driver_features & INDIRECT_DESC != 0,
            max_chain_bytes: self.backend.max_chain_bytes(queue),
        }
    }

    /// Enables (checking the layout) or disables the selected queue.
    fn write_queue_ready(&mut self, value: u32) -> Option<QueueError> {
        let i = usize::try_from(self.queue_sel).ok()?;
        let q = u16::try_from(i).ok()?;
        let layout = *self.layouts.get(i)?;
        if value == 0 {
            *self.queues.get_mut(i)? = Virtqueue::disabled();
            return None;
        }
        if self.status & FEATURES_OK == 0 || self.status & (DEVICE_NEEDS_RESET | FAILED) != 0 {
            return None;
        }
        if self.queues.get(i)?.is_ready() {
            return None;
        }
        match Virtqueue::new(layout, self.queue_options(q)) {
            Ok(vq) => {
                *self.queues.get_mut(i)? = vq;
                None
            }
            Err(e) => {
                self.fail(e);
                Some(e)
            }
        }
    }

    fn notify(&mut self, value: u32, mem: &dyn GuestMemory) -> MmioOutcome {
        let mut out = MmioOutcome::default();
        let queue = (value & 0xffff) as u16;
        if usize::from(queue) >= self.queues.len() {
            return out;
        }
        match self.run_backend(mem, |b, queues, mem| b.notify(queue, queues, mem)) {
            Ok(Some(())) => out.notified = Some(queue),
            Ok(None) => {}
            Err(e) => out.error = Some(e),
        }
        out
    }

    /// Status write (spec 2.1, 3.1.1); returns whether it was a reset.
    fn write_status(&mut self, value: u32) -> bool {
        if value == 0 {
            self.reset();
            return true;
        }
        let old = self.status;
        let mut new = (value & DRIVER_BITS) | (old & (FEATURES_OK | DEVICE_NEEDS_RESET));
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
            let offered = self.backend.features();
            let acceptable = self.driver_features & !offered == 0 && self.driver_features & VERSION_1 != 0;
            if acceptable {
                self.backend.activate(self.driver_features);
            } else {
                new &= !FEATURES_OK;
            }
        }
        if new & FEATURES_OK == 0 {
            new &= !DRIVER_OK;
        }
        self.status = new;
        false
    }
}
