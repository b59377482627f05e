//! Whether a vCPU runs, waits for a start-up IPI, or was just started:
//! the INIT / SIPI state machine of the MP initialization protocol (Intel
//! SDM vol. 3A 9.4 and 11.6.1), as pure logic the hypervisor drives.
//!
//! The hypervisor runs a vCPU only while it is [`VcpuRunState::Running`].
//! An INIT stops a vCPU ([`RunState::take_init`] tells the hypervisor to
//! take it off its CPU); a start-up IPI to a stopped vCPU makes it
//! [`VcpuRunState::Startup`] until the hypervisor takes the vector
//! ([`RunState::take_startup`]) and resets the vCPU to real mode at
//! CS = vector << 8, IP = 0.

/// What the hypervisor should do with a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Executing guest code (or halted in it).
    Running,
    /// Reset by INIT (or never started, an AP at power-on): only a
    /// start-up IPI moves it on (SDM 9.4.2, 11.4.7.3).
    WaitForSipi,
    /// A start-up IPI arrived; the hypervisor starts the vCPU in real mode
    /// at `vector << 12` (CS = vector << 8, IP = 0).
    Startup {
        /// The SIPI's vector: the 4 KiB page the vCPU starts in.
        vector: u8,
    },
}

/// One vCPU's run state plus the not-yet-reported INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunState {
    state: VcpuRunState,
    /// An INIT stopped the vCPU while it was running and the hypervisor
    /// has not yet been told.
    init: bool,
}

impl RunState {
    /// The power-on state: the BSP runs, application processors wait for
    /// a SIPI (SDM 9.4.1).
    pub fn power_on(bsp: bool) -> RunState {
        RunState { state: if bsp { VcpuRunState::Running } else { VcpuRunState::WaitForSipi }, init: false }
    }

    /// The current state.
    pub fn state(&self) -> VcpuRunState {
        self.state
    }

    /// Whether the hypervisor should execute this vCPU.
    pub fn is_running(&self) -> bool {
        self.state == VcpuRunState::Running
    }

    /// INIT (level assert): the vCPU is reset into wait-for-SIPI whatever it
    /// was doing; one that was running reports it through
    /// [`RunState::take_init`]. The caller resets its local APIC.
    pub fn init(&mut self) {
        if self.state == VcpuRunState::Running {
            self.init = true;
        }
        self.state = VcpuRunState::WaitForSipi;
    }

    /// Start-up IPI: taken only in wait-for-SIPI (SDM 9.4.4: a second SIPI
    /// after the first started the vCPU is ignored); false when ignored.
    pub fn startup(&mut self, vector: u8) -> bool {
        if self.state != VcpuRunState::WaitForSipi {
            return false;
        }
        self.state = VcpuRunState::Startup { vector };
        true
    }

    /// The vector of a start-up the hypervisor has not yet performed; the
    /// vCPU counts as running from here on.
    pub fn take_startup(&mut self) -> Option<u8> {
        let VcpuRunState::Startup { vector } = self.state else { return None };
        self.state = VcpuRunState::Running;
        Some(vector)
    }

    /// Whether an INIT stopped the running vCPU since the last call (the
    /// hypervisor must stop executing it and wait for its start-up).
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.init)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_on_states() {
        assert_eq!(RunState::power_on(true).state(), VcpuRunState::Running);
        assert_eq!(RunState::power_on(false).state(), VcpuRunState::WaitForSipi);
    }

    /// SDM 9.4.4: INIT, then SIPI, then a second SIPI that is ignored.
    #[test]
    fn init_sipi_sipi() {
        let mut r = RunState::power_on(false);
        r.init();
        assert!(!r.take_init(), "an AP that was not running has nothing to stop");
        assert!(r.startup(0x9A));
        assert!(!r.startup(0x9B), "second SIPI before the start");
        assert_eq!(r.take_startup(), Some(0x9A));
        assert_eq!(r.take_startup(), None);
        assert!(r.is_running());
        assert!(!r.startup(0x9A), "second SIPI while running");
        assert!(r.is_running());
    }

    #[test]
    fn init_stops_a_running_vcpu_once() {
        let mut r = RunState::power_on(true);
        r.init();
        assert_eq!(r.state(), VcpuRunState::WaitForSipi);
        assert!(r.take_init());
        assert!(!r.take_init());
    }

    #[test]
    fn init_cancels_a_start_not_yet_taken() {
        let mut r = RunState::power_on(false);
        assert!(r.startup(0x10));
        r.init();
        assert_eq!(r.take_startup(), None);
        assert!(!r.take_init());
        assert_eq!(r.state(), VcpuRunState::WaitForSipi);
    }
}
