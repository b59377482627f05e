//! The guest's CPU identity and MSRs as pure code: [`cpuid::guest_leaf`]
//! filters the host's CPUID through BMonitor's policy, and [`msr::MsrFile`]
//! holds the per-vCPU MSRs that need no hardware, so that every feature a
//! guest is told about has MSRs behaving as the SDM/APM say, and host tests
//! check that the two agree.
#![cfg_attr(not(test), no_std)]

pub mod cpuid;
pub mod msr;
pub mod pvclock;
