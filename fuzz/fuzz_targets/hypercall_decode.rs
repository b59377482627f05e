//! Fuzzes hypercall decoding on registers taken from the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_config::hypercall::{decode, Hypercall, HypercallRegs, CONSOLE_WRITE_MAX};

fn word(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (j, v) in b.iter_mut().enumerate() {
        *v = data.get(i * 8 + j).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let regs = HypercallRegs { rax: word(data, 0), rdi: word(data, 1), rsi: word(data, 2), rdx: word(data, 3) };
    let long_mode = data.get(32).is_some_and(|b| b & 1 == 1);
    if let Ok(Hypercall::ConsoleWrite { buf, len } | Hypercall::VmInfo { buf, len }) = decode(regs, long_mode) {
        assert!(len <= CONSOLE_WRITE_MAX);
        assert!(buf.checked_add(len).is_some());
        if !long_mode {
            assert!(buf <= u32::MAX as u64 && len <= u32::MAX as u64);
        }
    }
});
