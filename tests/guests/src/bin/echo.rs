//! `echo`: reads lines typed on its console (COM1 receive path, polled) and
//! prints `echo: <line>` for each; exits 0 on `quit`. Tests that console
//! input from the management plane reaches the guest.
#![no_std]
#![no_main]

use test_guests::{hypercall, port, println, BootInfo};

test_guests::entry!(main);

const COM1: u16 = 0x3F8;

fn main(_info: &BootInfo) -> u32 {
    println!("echo ready");
    let mut line = [0u8; 128];
    let mut len = 0usize;
    loop {
        if port::inb(COM1 + 5) & 1 == 0 {
            let _ = hypercall::yield_now();
            continue;
        }
        let b = port::inb(COM1);
        match b {
            b'\r' | b'\n' => {
                let text = core::str::from_utf8(line.get(..len).unwrap_or(&[])).unwrap_or("<not utf-8>");
                if text == "quit" {
                    println!("echo done");
                    return 0;
                }
                if len > 0 {
                    println!("echo: {}", text);
                }
                len = 0;
            }
            _ if len < line.len() => {
                if let Some(slot) = line.get_mut(len) {
                    *slot = b;
                }
                len += 1;
            }
            _ => {}
        }
    }
}
