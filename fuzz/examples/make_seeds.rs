//! Writes the seed corpora in `fuzz/corpus/TARGET/`: a few small, valid
//! inputs per fuzz target, built with the crates' own encoders where they
//! have them, so every campaign starts past the magic numbers and length
//! fields. Each file is named after what it holds. Run from the repository
//! root (regenerate after changing a target's input layout):
//!
//! ```sh
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/corpus
//! ```
//!
//! The layouts are the ones documented at the top of each target; the
//! fixtures here (keys, seeds, volume contents) must match the targets'.

use std::fs;
use std::path::{Path, PathBuf};

use blockcrypt::metadata::{VolumeHeader, HEADER_LEN};
use blockcrypt::{DiskKey, KeySeed, LandlordKey, Layout, MemDevice, Volume, VolumeId, BLOCK_SIZE};
use mgmt_proto::msg::encode;
use mgmt_proto::*;

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let mut total = 0;
    for (target, seeds) in [
        ("hypercall_decode", hypercall_decode()),
        ("kernel_loader", kernel_loader()),
        ("bundle_parse", bundle_parse()),
        ("mmio_decode", mmio_decode()),
        ("virtqueue", virtqueue()),
        ("blk_request", blk_request()),
        ("frame_parse", frame_parse()),
        ("volume_metadata", volume_metadata()),
        ("nodedisk_header", nodedisk_header()),
        ("mgmt_message", mgmt_message()),
        ("mgmt_session", mgmt_session()),
        ("mgmt_snapshot", mgmt_snapshot()),
        ("tpm_response", tpm_response()),
        ("agent_ring", agent_ring()),
        ("agent_message", agent_message()),
        ("monitor_policy", monitor_policy()),
    ] {
        total += write(&root.join(target), seeds);
    }
    println!("{total} bytes of seeds in {}", root.display());
}

/// Replaces the directory's seeds with these.
fn write(dir: &Path, seeds: Vec<(&str, Vec<u8>)>) -> usize {
    if dir.exists() {
        fs::remove_dir_all(dir).expect("remove old seeds");
    }
    fs::create_dir_all(dir).expect("seed dir");
    let mut n = 0;
    for (name, bytes) in seeds {
        assert!(!bytes.is_empty(), "{name} is empty");
        n += bytes.len();
        fs::write(dir.join(name), bytes).expect("write seed");
    }
    n
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}
fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}
fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

// ---- hypercall_decode: rax, rdi, rsi, rdx (u64 LE), then a long-mode byte.

fn hypercall_decode() -> Vec<(&'static str, Vec<u8>)> {
    use vmm_config::hypercall::nr as call;
    let regs = |rax: u64, rdi: u64, rsi: u64, rdx: u64, long: u8| {
        [le64(rax), le64(rdi), le64(rsi), le64(rdx)].concat().into_iter().chain([long]).collect::<Vec<u8>>()
    };
    vec![
        ("console-write-long", regs(call::CONSOLE_WRITE, 0x1000, 64, 0, 1)),
        ("console-write-32bit", regs(call::CONSOLE_WRITE, 0xffff_f000, 0x1000, 0, 0)),
        ("vm-info", regs(call::VM_INFO, 0x2000, 256, 0, 1)),
        ("exit", regs(call::EXIT, 3, 0, 0, 1)),
        ("clock", regs(call::CLOCK, 0, 0, 0, 1)),
        ("abi-version", regs(call::ABI_VERSION, 0, 0, 0, 0)),
    ]
}

// ---- kernel_loader: a kernel image.

/// A 64-bit ELF kernel: one PT_LOAD at 1 MiB and, with `pvh`, a PT_NOTE
/// holding the Xen PVH entry note.
fn elf64(pvh: bool) -> Vec<u8> {
    let code = [0xf4u8, 0xeb, 0xfd]; // hlt; jmp $-1
    let note =
        [le32(4), le32(4), le32(18)].concat().into_iter().chain(*b"Xen\0").chain(le32(0x10_0000)).collect::<Vec<u8>>();
    let phnum: u16 = if pvh { 2 } else { 1 };
    let phoff = 64u64;
    let data_off = phoff + 56 * u64::from(phnum);
    let note_off = data_off + code.len() as u64;
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&le16(2)); // ET_EXEC
    b.extend_from_slice(&le16(62)); // x86-64
    b.extend_from_slice(&le32(1));
    b.extend_from_slice(&le64(0x10_0000)); // entry
    b.extend_from_slice(&le64(phoff));
    b.extend_from_slice(&le64(0)); // no section headers
    b.extend_from_slice(&le32(0));
    b.extend_from_slice(&le16(64));
    b.extend_from_slice(&le16(56));
    b.extend_from_slice(&le16(phnum));
    b.extend_from_slice(&le16(64));
    b.extend_from_slice(&le16(0));
    b.extend_from_slice(&le16(0));
    let phdr = |b: &mut Vec<u8>, typ: u32, off: u64, addr: u64, filesz: u64, memsz: u64, align: u64| {
        b.extend_from_slice(&le32(typ));
        b.extend_from_slice(&le32(5)); // R+X
        for v in [off, addr, addr, filesz, memsz, align] {
            b.extend_from_slice(&le64(v));
        }
    };
    phdr(&mut b, 1, data_off, 0x10_0000, code.len() as u64, 0x2000, 0x1000);
    if pvh {
        phdr(&mut b, 4, note_off, 0, note.len() as u64, 0, 4);
    }
    b.extend_from_slice(&code);
    if pvh {
        b.extend_from_slice(&note);
    }
    b
}

/// A 32-bit ELF kernel with a multiboot1 header (no address fields).
fn elf32_multiboot() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x01\x01\x01\0");
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&le16(2));
    b.extend_from_slice(&le16(3)); // i386
    b.extend_from_slice(&le32(1));
    b.extend_from_slice(&le32(0x10_0000)); // entry
    b.extend_from_slice(&le32(52)); // phoff
    b.extend_from_slice(&le32(0)); // shoff
    b.extend_from_slice(&le32(0));
    b.extend_from_slice(&le16(52));
    b.extend_from_slice(&le16(32));
    b.extend_from_slice(&le16(1));
    b.extend_from_slice(&le16(40));
    b.extend_from_slice(&le16(0));
    b.extend_from_slice(&le16(0));
    let data_off = 52u32 + 32;
    for v in [1, data_off, 0x10_0000, 0x10_0000, 24, 0x1000, 5, 0x1000] {
        b.extend_from_slice(&le32(v));
    }
    let flags = 0u32;
    b.extend_from_slice(&le32(0x1BAD_B002));
    b.extend_from_slice(&le32(flags));
    b.extend_from_slice(&le32(0u32.wrapping_sub(0x1BAD_B002 + flags)));
    b.extend_from_slice(&[0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90]);
    b
}

/// A flat multiboot1 kernel using the address fields.
fn multiboot_flat() -> Vec<u8> {
    let flags = 1u32 << 16;
    let mut b = Vec::new();
    b.extend_from_slice(&le32(0x1BAD_B002));
    b.extend_from_slice(&le32(flags));
    b.extend_from_slice(&le32(0u32.wrapping_sub(0x1BAD_B002u32.wrapping_add(flags))));
    // header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
    for v in [0x10_0000u32, 0x10_0000, 0x10_0040, 0x10_2000, 0x10_0020] {
        b.extend_from_slice(&le32(v));
    }
    b.resize(0x20, 0x90);
    b.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
    b.resize(0x40, 0);
    b
}

fn kernel_loader() -> Vec<(&'static str, Vec<u8>)> {
    for (name, k) in [("pvh", elf64(true)), ("mb-elf", elf32_multiboot()), ("mb-flat", multiboot_flat())] {
        assert!(guest_loader::parse_kernel(&k, guest_loader::Preference::Auto).is_ok(), "{name} kernel parses");
    }
    vec![
        ("elf64-pvh", elf64(true)),
        ("elf64-plain", elf64(false)),
        ("elf32-multiboot", elf32_multiboot()),
        ("multiboot-addresses", multiboot_flat()),
    ]
}

// ---- bundle_parse: a boot bundle.

fn bundle_parse() -> Vec<(&'static str, Vec<u8>)> {
    use vmm_config::bundle::{self, Bundle};
    use vmm_config::config::{NodeConfig, VmConfig};
    let kernel = elf64(true);
    let vm = |name: &str, kernel: &str| VmConfig {
        name: name.into(),
        memory_mib: 16,
        kernel: kernel.into(),
        cmdline: "console=ttyS0".into(),
        ..VmConfig::default()
    };
    let one = NodeConfig { vms: vec![vm("web-1", "hello")], ..NodeConfig::default() };
    let mut two = NodeConfig { vms: vec![vm("web-1", "hello"), vm("legacy", "mb")], ..NodeConfig::default() };
    two.vms[1].module = Some("initrd".into());
    let enc = |c: &NodeConfig| postcard::to_allocvec(c).expect("config encodes");
    let mb = multiboot_flat();
    let seeds = vec![
        ("one-vm", bundle::encode(&[(bundle::CONFIG_ENTRY, &enc(&one)), ("hello", &kernel)])),
        (
            "two-vms-module",
            bundle::encode(&[
                (bundle::CONFIG_ENTRY, &enc(&two)),
                ("hello", &kernel),
                ("mb", &mb),
                ("initrd", b"initrd"),
            ]),
        ),
    ];
    for (name, b) in &seeds {
        let parsed = Bundle::parse(b).expect("bundle parses");
        assert!(parsed.node_config().is_ok(), "{name}: config valid");
    }
    seeds
}

// ---- mmio_decode: selector byte, CR3 word, RIP/base word, instruction bytes.

fn mmio_decode() -> Vec<(&'static str, Vec<u8>)> {
    let insn = |sel: u8, bytes: &[u8]| {
        let mut v = vec![sel];
        v.extend_from_slice(&[0; 16]);
        v.extend_from_slice(bytes);
        v
    };
    // The selector picks the paging mode (selector % 6) and CS: 0x0a is
    // long mode with a 64-bit CS, 0x13 32-bit paging with a 32-bit CS, 0
    // real mode.
    let mut seeds = vec![
        ("long-mov-store", insn(0x0a, &[0x89, 0x07])), // mov [rdi], eax
        ("long-mov-load-rex", insn(0x0a, &[0x48, 0x8b, 0x47, 0x08])), // mov rax, [rdi+8]
        ("long-mov-imm", insn(0x0a, &[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12])), // mov dword [rax], imm32
        ("long-movzx", insn(0x0a, &[0x0f, 0xb6, 0x06])), // movzx eax, byte [rsi]
        ("long-cmp", insn(0x0a, &[0x3b, 0x07])),       // cmp eax, [rdi]
        ("long-test-imm", insn(0x0a, &[0xf7, 0x07, 1, 0, 0, 0])), // test dword [rdi], 1
        ("prot32-mov16", insn(0x13, &[0x66, 0x89, 0x03])), // mov [ebx], ax
        ("real-mov8", insn(0x00, &[0x88, 0x07])),      // mov [bx], al
    ];
    // A 4-level page walk inside the input: CR3 = 0x1000 (as an input
    // offset), PML4[0] -> 0x2000, PDPT[0] -> 0x3000, PD[0] a 2 MiB page at
    // 0; RIP 0x10 fetches "mov [rdi], eax" from the input itself.
    let mut walk = vec![0u8; 0x3008];
    walk[0] = 0x0a;
    let rest = &mut walk[1..];
    rest[0..8].copy_from_slice(&le64(0x1000));
    rest[8..16].copy_from_slice(&le64(0x10));
    rest[0x10..0x12].copy_from_slice(&[0x89, 0x07]);
    rest[0x1000..0x1008].copy_from_slice(&le64(0x2000 | 3));
    rest[0x2000..0x2008].copy_from_slice(&le64(0x3000 | 3));
    rest[0x3000..0x3007].copy_from_slice(&le64(0x83)[..7]);
    seeds.push(("long-page-walk", walk));
    seeds
}

// ---- virtqueue and blk_request: guest RAM seed (u16 length, bytes), then
// driver operations (see fuzz_targets/common/mmio_driver.rs).

/// A split-ring descriptor.
fn desc(ram: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let d = &mut ram[table + 16 * i..];
    d[0..8].copy_from_slice(&le64(addr));
    d[8..12].copy_from_slice(&le32(len));
    d[12..14].copy_from_slice(&le16(flags));
    d[14..16].copy_from_slice(&le16(next));
}

/// An available ring offering `heads`.
fn avail(ram: &mut [u8], at: usize, heads: &[u16]) {
    ram[at..at + 2].copy_from_slice(&le16(0));
    ram[at + 2..at + 4].copy_from_slice(&le16(heads.len() as u16));
    for (i, h) in heads.iter().enumerate() {
        ram[at + 4 + 2 * i..at + 6 + 2 * i].copy_from_slice(&le16(*h));
    }
}

/// Queue placement for the fuzzed driver's handshake: log2 size, then
/// descriptor table, driver and device area addresses.
fn queue(log2: u8, d: u16, a: u16, u: u16) -> Vec<u8> {
    [vec![log2], le16(d).to_vec(), le16(a).to_vec(), le16(u).to_vec()].concat()
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn blk_seed(ram_len: usize, fill: impl FnOnce(&mut [u8]), ops: &[u8]) -> Vec<u8> {
    let mut ram = vec![0u8; ram_len];
    fill(&mut ram);
    let mut v = le16(ram_len as u16).to_vec();
    v.extend_from_slice(&ram);
    v.extend_from_slice(&[19, 1]); // integrity failures past the disk only, writable
    v.extend_from_slice(ops);
    v
}

fn blk_request() -> Vec<(&'static str, Vec<u8>)> {
    // Queue 0: descriptors at 0x100, driver area 0x200, device area 0x300;
    // request header at 0x400, data at 0x600, status at 0x800.
    let setup = [&[6u8, 0][..], &queue(2, 0x100, 0x200, 0x300)].concat();
    let run = [&setup[..], &[7, 4, 8]].concat();
    let request = |typ: u32, sector: u64, data_flags: Option<u16>, len: u32| {
        move |ram: &mut [u8]| {
            ram[0x400..0x404].copy_from_slice(&le32(typ));
            ram[0x408..0x410].copy_from_slice(&le64(sector));
            ram[0x600..0x600 + 512].fill(0x5a);
            match data_flags {
                Some(f) => {
                    desc(ram, 0x100, 0, 0x400, 16, NEXT, 1);
                    desc(ram, 0x100, 1, 0x600, len, f | NEXT, 2);
                    desc(ram, 0x100, 2, 0x800, 1, WRITE, 0);
                }
                None => {
                    desc(ram, 0x100, 0, 0x400, 16, NEXT, 1);
                    desc(ram, 0x100, 1, 0x800, 1, WRITE, 0);
                }
            }
            avail(ram, 0x200, &[0]);
        }
    };
    vec![
        ("write-sector-3", blk_seed(0x810, request(1, 3, Some(0), 512), &run)),
        ("read-sector-3", blk_seed(0x810, request(0, 3, Some(WRITE), 512), &run)),
        ("flush", blk_seed(0x810, request(4, 0, None, 0), &run)),
        ("get-id", blk_seed(0x810, request(8, 0, Some(WRITE), 20), &run)),
        ("read-past-end", blk_seed(0x810, request(0, 15, Some(WRITE), 1024), &run)),
        // Parser alone (op 2) on a random-ish chain, then the device.
        (
            "parse-then-run",
            blk_seed(
                0x810,
                request(1, 0, Some(0), 512),
                &[&[2u8, 1, 0, 0x00, 0x04, 0x10, 1, 1, 0, 0x08, 0x01, 0, 0][..], &run].concat(),
            ),
        ),
    ]
}

/// An Ethernet/IPv4/TCP SYN from `src` to `dst` (last octets) in 10.0.0.0/24.
fn tcp_syn(src: u8, dst: u8, dport: u16) -> Vec<u8> {
    let mut f = eth(dst, src, 0x0800);
    let mut ip = ipv4(src, dst, 6, 20);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let sum = l4_checksum(&ip, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    f.extend_from_slice(&ip);
    f
}

fn eth(dst: u8, src: u8, ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src];
    if dst == 0xff {
        f[..6].fill(0xff);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(src: u8, dst: u8, proto: u8, payload: usize) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, src, 10, 0, 0, dst];
    ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

fn checksum(b: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn l4_checksum(ip: &[u8], seg: &[u8]) -> u16 {
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let mut s = 0u32;
    for c in pseudo.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    checksum(seg, s)
}

fn udp(src: u8, dst: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(dst, src, 0x0800);
    let mut ip = ipv4(src, dst, 17, 8 + payload.len());
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&5353u16.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let sum = l4_checksum(&ip, &u);
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&u);
    f.extend_from_slice(&ip);
    f
}

fn icmp_echo(src: u8, dst: u8) -> Vec<u8> {
    let mut f = eth(dst, src, 0x0800);
    let mut ip = ipv4(src, dst, 1, 16);
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    icmp.extend_from_slice(b"pingpong");
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    f.extend_from_slice(&ip);
    f
}

fn arp_request(src: u8, target: u8) -> Vec<u8> {
    let mut f = eth(0xff, src, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[2, 0, 0, 0, 0, src, 10, 0, 0, src]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, target]);
    f
}

fn frame_parse() -> Vec<(&'static str, Vec<u8>)> {
    let frames = vec![
        ("arp-request", arp_request(1, 2)),
        ("tcp-syn-refused", tcp_syn(1, 2, 22)),
        ("tcp-syn-other-cluster", tcp_syn(1, 3, 80)),
        ("udp", udp(2, 1, 53, b"query")),
        ("icmp-echo", icmp_echo(1, 2)),
    ];
    for (name, f) in &frames {
        assert!(vswitch::parse(f).is_ok(), "{name} parses");
    }
    frames
}

fn virtqueue() -> Vec<(&'static str, Vec<u8>)> {
    // RX (queue 0): descriptors 0x100, driver 0x180, device 0x1c0, buffer 0x1000.
    // TX (queue 1): descriptors 0x300, driver 0x380, device 0x3c0, header+frame at 0x800.
    let frame = udp(1, 2, 53, b"hello");
    let setup = [&[6u8, 0][..], &queue(1, 0x100, 0x180, 0x1c0), &queue(1, 0x300, 0x380, 0x3c0)].concat();
    let mut ram = vec![0u8; 0x800 + 12 + frame.len()];
    desc(&mut ram, 0x100, 0, 0x1000, 1526, WRITE, 0);
    avail(&mut ram, 0x180, &[0]);
    desc(&mut ram, 0x300, 0, 0x800, (12 + frame.len()) as u32, 0, 0);
    avail(&mut ram, 0x380, &[0]);
    ram[0x80c..].copy_from_slice(&frame);
    let seed = |ops: &[u8]| {
        let mut v = le16(ram.len() as u16).to_vec();
        v.extend_from_slice(&ram);
        v.extend_from_slice(&setup);
        v.extend_from_slice(ops);
        v
    };
    vec![
        ("tx-one-frame", seed(&[7, 0, 4, 5, 8])),
        ("rx-deliver", seed(&[7, 1, 2, 60, 0, 4, 8])),
        ("tx-rx-both", seed(&[7, 0, 7, 1, 4, 5, 2, 0x40, 0, 4, 8])),
    ]
}

// ---- volume_metadata: mode byte (bit 0: sector path), then bytes written
// over one block.

/// The volume_metadata target's fixture, rebuilt the same way.
fn volume() -> (DiskKey, MemDevice) {
    let key = DiskKey::derive(&LandlordKey::from_bytes([2; 32]), &[], VolumeId([1; 16])).expect("disk key");
    let layout = Layout::new(4).expect("layout");
    let dev = MemDevice::new(layout.total_blocks).expect("device");
    let mut vol = Volume::create(dev, key.clone(), 4, &KeySeed::from_random([3; KeySeed::LEN])).expect("create");
    vol.write_sector(0, &[7; BLOCK_SIZE]).expect("write 0");
    vol.write_sector(1, &[8; BLOCK_SIZE]).expect("write 1");
    (key, vol.into_device())
}

fn volume_metadata() -> Vec<(&'static str, Vec<u8>)> {
    let (key, dev) = volume();
    let img = dev.image();
    let header = |copy: usize| img[copy * BLOCK_SIZE..copy * BLOCK_SIZE + HEADER_LEN].to_vec();
    let newest = (0..2).max_by_key(|&c| VolumeHeader::decode(&header(c)).map_or(0, |h| h.generation)).expect("a copy");
    let with_mode = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    // Headers the MAC would vouch for: other states, sizes and generations.
    let variant = |f: &dyn Fn(&mut VolumeHeader)| {
        let mut h = VolumeHeader::decode(&header(newest)).expect("genuine header");
        f(&mut h);
        h.mac = key.header_mac(&h.mac_input()).expect("mac");
        h.encode().to_vec()
    };
    // A re-key cut short by a power loss leaves a Rekeying header with the
    // next key wrapped: the real thing, from the same fixture (the first
    // write budget that stops it there).
    let rekeying = (1..12).find_map(|writes| {
        let mut d = dev.clone();
        d.crash_after(writes, 0);
        let mut vol = Volume::open(d, key.clone(), 0).ok()?;
        let _ = vol.rekey(key.clone(), &KeySeed::from_random([4; KeySeed::LEN]));
        let img = vol.into_device().image().to_vec();
        (0..2)
            .map(|c| img[c * BLOCK_SIZE..c * BLOCK_SIZE + HEADER_LEN].to_vec())
            .find(|h| VolumeHeader::decode(h).is_ok_and(|h| h.next_key.is_some()))
    });
    let meta_start = Layout::new(4).expect("layout").meta_start as usize * BLOCK_SIZE;
    let mut seeds = vec![
        ("header-copy0", with_mode(0, &header(0))),
        ("header-copy1", with_mode(2, &header(1))),
        ("header-other-zeroed", with_mode(0x10, &header(0))),
        ("header-newest-macked", with_mode(4 | (newest as u8) << 1, &header(newest))),
        ("metadata-records", with_mode(0x11, &img[meta_start..meta_start + 64])),
        ("write-unwritten-sector", with_mode(0x61, &[])),
        ("data-block-rewrite", with_mode(0x43, &[0xaa; 64])),
        ("rollback", with_mode(0x08 | (newest as u8) << 1, &header(newest))),
        ("initialising-macked", with_mode(4, &variant(&|h| h.state = blockcrypt::VolumeState::Initialising))),
        ("older-generation-macked", with_mode(6, &variant(&|h| h.generation -= 1))),
    ];
    if let Some(h) = rekeying {
        seeds.push(("rekeying-macked", with_mode(4, &h)));
    }
    seeds
}

// ---- nodedisk_header: mode byte, then bytes.

fn nodedisk_header() -> Vec<(&'static str, Vec<u8>)> {
    use nodedisk::keystore::{KeyStore, TenantEntry};
    use nodedisk::table::{VolumeEntry, VolumeTable};
    use nodedisk::{LeaseId, NodeDisk, SealKey, RANDOM_LEN};
    let dev = nodedisk::MemDevice::new(48).expect("device");
    let mut n = NodeDisk::format(dev, SealKey::from_bytes([0x42; 32]), &[1; RANDOM_LEN]).expect("format");
    n.set_tenant_key(LeaseId(2), &[3; RANDOM_LEN]).expect("tenant");
    n.create_volume("a", LeaseId(2), 16, &[2; RANDOM_LEN]).expect("create a");
    let header = *n.header();
    let dev = n.into_device().expect("close");
    let img = dev.image();
    let region = |start: u64, blocks: u32| &img[start as usize * BLOCK_SIZE..][..blocks as usize * BLOCK_SIZE];
    let store = (0..2)
        .filter_map(|c| KeyStore::decode(region(header.keystore_copy(c), header.keystore_blocks)).ok())
        .max_by_key(|s| s.generation)
        .expect("store");
    let table = (0..2)
        .filter_map(|c| VolumeTable::decode(region(header.table_copy(c), header.table_blocks)).ok())
        .max_by_key(|t| t.generation)
        .expect("table");
    // Small regions: the decoders take any length with the MAC at the end.
    let small_store = KeyStore {
        tenants: vec![store.tenants[0], TenantEntry { lease: LeaseId(7), epoch: 1, key: store.landlord }],
        ..store.clone()
    };
    let mut two = table.clone();
    let e = &table.entries[0];
    two.entries.push(VolumeEntry {
        name: "b.disk-2".into(),
        start_block: e.start_block + e.blocks,
        id: VolumeId([9; 16]),
        ..e.clone()
    });
    let m = |mode: u8, b: &[u8]| [&[mode][..], b].concat();
    let mut with_tail = two.encode(512).expect("table fits");
    with_tail.extend_from_slice(&header.encode());
    vec![
        ("header-copy0", m(0x00, &img[..256])),
        ("header-copy1", m(0x08, &img[BLOCK_SIZE..BLOCK_SIZE + 256])),
        ("header-other-zeroed", m(0x10, &img[..256])),
        ("header-wrong-seal", m(0x20, &img[..256])),
        ("keystore", m(0x01, &store.encode(256).expect("store fits"))),
        ("keystore-three-tenants", m(0x01, &small_store.encode(384).expect("store fits"))),
        ("table", m(0x02, &table.encode(256).expect("table fits"))),
        ("table-two-then-header", m(0x02, &with_tail)),
        ("table-magic-prefixed", m(0x06, &table.encode(256).expect("table fits")[8..])),
    ]
}

// ---- mgmt_message: mode byte, then bytes.

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("node-status", Request::NodeStatus),
        ("create-lease", Request::CreateLease { tenant_console_key: PublicKey([5; 32]), cluster: ClusterId(1) }),
        (
            "upload-begin",
            Request::UploadImageBegin {
                name: "web.img".into(),
                size: 4096,
                sha256: Some([1; 32]),
                signature: None,
                lease: Some(LeaseId(1)),
            },
        ),
        ("upload-chunk", Request::UploadImageChunk { upload: UploadId(1), offset: 0, bytes: vec![0x7f; 24] }),
        (
            "create-vm",
            Request::CreateVm {
                spec: VmSpec {
                    lease: LeaseId(1),
                    name: "web-1".into(),
                    vcpus: 1,
                    memory_mib: 64,
                    disk_mib: 0,
                    image: "web.img".into(),
                    cluster: ClusterId(1),
                    cmdline: "console=ttyS0".into(),
                    ip: Some([10, 0, 0, 11]),
                    initrd: None,
                },
            },
        ),
        ("start-vm-1", Request::StartVm { vm: VmId(1) }),
        ("console-write", Request::ConsoleWrite { vm: VmId(1), bytes: b"ls\n".to_vec() }),
        (
            "set-boundary",
            Request::SetClusterBoundary {
                cluster: ClusterId(1),
                rules: vec![BoundaryRule {
                    action: Action::Allow,
                    proto: Proto::Tcp,
                    peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 24 },
                    ports: Some(PortRange { lo: 80, hi: 443 }),
                }],
            },
        ),
        ("read-audit", Request::ReadAudit { from: 0 }),
        ("list-images", Request::ListImages { verify: true }),
        ("fleet-vm-health", Request::FleetVmHealth { vm: VmId(1) }),
        (
            "fleet-set-image",
            Request::FleetSetImage {
                vm: VmId(1),
                image: "web-2.img".into(),
                initrd: Some("web-2.initrd".into()),
                cmdline: "console=ttyS0".into(),
            },
        ),
    ]
}

fn mgmt_message() -> Vec<(&'static str, Vec<u8>)> {
    let hello = encode(&Hello { version: PROTOCOL_VERSION, role: Role::Tenant(LeaseId(1)) }, 64).expect("hello");
    let mut hello_then_header = encode_frame(&hello).expect("frame");
    hello_then_header.extend_from_slice(&[0, 96]);
    let env = |seq: u64, body: Request| encode(&Envelope { seq, body }, MAX_MESSAGE).expect("envelope");
    let m = |mode: u8, b: &[u8]| [&[mode][..], b].concat();
    let mut seeds = vec![
        ("hello-frame", m(0, &hello_then_header)),
        (
            "hello-landlord-bytewise",
            m(
                1,
                &encode_frame(&encode(&Hello { version: 1, role: Role::Landlord }, 64).expect("hello")).expect("frame"),
            ),
        ),
        (
            "handshake-refused",
            m(1, &encode(&HandshakeReply::Refused(ErrorReply::new(ErrorCode::Busy, "busy")), 256).expect("reply")),
        ),
        (
            "reply-error",
            m(
                1,
                &encode(&Reply { seq: 3, body: Err(ErrorReply::new(ErrorCode::Denied, "not yours")) }, 256)
                    .expect("reply"),
            ),
        ),
        (
            "reply-vm-created",
            m(1, &encode(&Reply { seq: 4, body: Ok(Response::VmCreated { vm: VmId(1) }) }, 256).expect("reply")),
        ),
    ];
    for (name, req) in requests() {
        seeds.push((name, m(5, &env(7, req))));
    }
    seeds
}

// ---- mgmt_session: flags byte, then records (tag, length, payload).

/// FNV-1a as in the target.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn mgmt_session() -> Vec<(&'static str, Vec<u8>)> {
    let rec = |tag: u8, payload: &[u8]| {
        let mut v = vec![tag];
        if payload.len() > 255 {
            v[0] |= 0x80;
            v.extend_from_slice(&le16(payload.len() as u16));
        } else {
            v.push(payload.len() as u8);
        }
        v.extend_from_slice(payload);
        v
    };
    // An envelope record: the sequence step, then the request; the target
    // puts the varint sequence number in front, which is exactly
    // postcard's encoding of an Envelope.
    let step = |n: u8, req: &Request| {
        let body = postcard::to_allocvec(req).expect("request");
        let env = [&[n][..], &body].concat();
        assert_eq!(mgmt_proto::msg::decode::<Envelope>(&env, MAX_MESSAGE).expect("envelope").body, *req);
        [&[n][..], &body].concat()
    };
    let mut seeds = Vec::new();
    for (name, req) in requests() {
        let landlord = [vec![0u8], rec(0, &step(1, &req))].concat();
        seeds.push((name, landlord));
    }
    // A tenant asking for things, in order and out of order.
    let tenant =
        [vec![1u8], rec(0, &step(1, &Request::ListVms)), rec(0, &step(3, &Request::StartVm { vm: VmId(1) }))].concat();
    seeds.push(("tenant-two-requests", tenant));
    let whole = encode(&Envelope { seq: 9, body: Request::ReadCounters { vm: VmId(1) } }, 256).expect("envelope");
    seeds.push(("whole-plaintext", [vec![0u8], rec(1, &whole)].concat()));
    // Hostile endings (replayed number, undecodable plaintext, forged
    // ciphertext, bad frame length), each padded so the input's hash
    // selects it as one of the inputs allowed to end the session.
    let hostile: [(&str, Vec<u8>); 4] = [
        ("hostile-replay", [rec(0, &step(1, &Request::NodeStatus)), rec(0, &step(0, &Request::NodeStatus))].concat()),
        ("hostile-malformed", rec(1, &[0x01, 0xff, 0xff])),
        ("hostile-forged", rec(2, &[0x42; 40])),
        ("hostile-empty-frame", rec(3, &[0, 0])),
    ];
    for (name, body) in hostile {
        let base = [vec![0u8], body].concat();
        let padded = (0u32..)
            .map(|i| [&base[..], &[0xfe, 2], &i.to_le_bytes()[..2]].concat())
            .find(|v| fnv1a(v).is_multiple_of(512))
            .expect("a padding");
        seeds.push((name, padded));
    }
    seeds
}

// ---- mgmt_snapshot: a postcard-encoded state snapshot.

fn mgmt_snapshot() -> Vec<(&'static str, Vec<u8>)> {
    use node_logic::sim::SimNode;
    use node_logic::NodeState;
    let mut sim = SimNode::default();
    let mut node = NodeState::provision(Box::new(HashDrbg::new([5; 32])), PublicKey([6; 32])).expect("provision");
    let empty = postcard::to_allocvec(&node.snapshot()).expect("snapshot");
    let _ = node.handle(
        Role::Landlord,
        &Request::CreateLease { tenant_console_key: PublicKey([7; 32]), cluster: ClusterId(1) },
        &mut sim,
    );
    for (_, req) in requests() {
        let _ = node.handle(Role::Landlord, &req, &mut sim);
    }
    let busy = postcard::to_allocvec(&node.snapshot()).expect("snapshot");
    vec![("provisioned", empty), ("lease-and-requests", busy)]
}

// ---- tpm_response: the bytes as each response, then an op byte and a
// script of (u16 big-endian length, response) chunks.

fn tpm_frame(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
    let mut v = tag.to_be_bytes().to_vec();
    v.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(&rc.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn b2(data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

fn tpm_response() -> Vec<(&'static str, Vec<u8>)> {
    use tpm2_lite::{cmd, TPM_RH_OWNER, TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS};
    let ok_sessions = |handle: Option<u32>, params: &[u8]| {
        let mut body = Vec::new();
        if let Some(h) = handle {
            body.extend_from_slice(&h.to_be_bytes());
        }
        body.extend_from_slice(&(params.len() as u32).to_be_bytes());
        body.extend_from_slice(params);
        body.extend_from_slice(&[0, 0, 1, 0, 0]);
        tpm_frame(TPM_ST_SESSIONS, 0, &body)
    };
    let ok_plain = |params: &[u8]| tpm_frame(TPM_ST_NO_SESSIONS, 0, params);
    let creation = {
        let mut v = b2(&[7; 20]);
        v.extend(b2(&[8; 32]));
        v.extend_from_slice(&0x8021u16.to_be_bytes());
        v.extend_from_slice(&TPM_RH_OWNER.to_be_bytes());
        v.extend(b2(&[9; 32]));
        v
    };
    let primary = {
        let mut p = b2(&cmd::templates::storage_primary());
        p.extend(creation.clone());
        p.extend(b2(&[0xAA; 34]));
        ok_sessions(Some(0x8000_0000), &p)
    };
    let create = {
        let mut p = b2(&[0x11; 80]);
        p.extend(b2(&cmd::templates::sealed_object()));
        p.extend(creation);
        ok_sessions(None, &p)
    };
    let load = ok_sessions(Some(0x8000_0001), &b2(&[1; 34]));
    let unseal = ok_sessions(None, &b2(&[0x5A; 32]));
    let hmac = ok_sessions(None, &b2(&[0x77; 32]));
    let flush = ok_plain(&[]);
    let random = ok_plain(&b2(&[5; 3]));
    let script = |op: u8, resps: &[&Vec<u8>]| {
        let mut v = vec![op];
        for r in resps {
            v.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v.extend_from_slice(r);
        }
        v
    };
    assert!(cmd::parse_create(&create).is_ok() && cmd::parse_create_primary(&primary).is_ok());
    vec![
        ("seal", script(0, &[&primary, &create, &flush])),
        ("unseal", script(1, &[&primary, &load, &flush, &unseal, &flush])),
        ("node-seal-key", script(2, &[&tpm_frame(TPM_ST_NO_SESSIONS, 0x100, &[]), &primary, &hmac, &flush])),
        ("get-random", script(3, &[&random])),
        ("startup", script(4, &[&flush])),
        ("create-response", create.clone()),
    ]
}

// ---- the guest agent ------------------------------------------------------

fn agent_exec(argv: &[&str], stdin: bool) -> agent_proto::Op {
    agent_proto::Op::Exec(agent_proto::msg::ExecSpec {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec![("LANG".into(), "C".into())],
        cwd: Some("/root".into()),
        timeout_ms: 5000,
        stdin,
        pty: None,
    })
}

fn agent_encode<T: serde::Serialize>(m: &T) -> Vec<u8> {
    agent_proto::msg::encode(m, agent_proto::MAX_RECORD).expect("agent message")
}

/// Real messages both ways, and the console's agent requests and replies.
fn agent_message() -> Vec<(&'static str, Vec<u8>)> {
    use agent_proto::msg::{Event, FromAgent, GuestLoad, Input, RestartPolicy, ServiceOp, ServiceSpec, ToAgent};
    let svc = ServiceSpec {
        name: "web".into(),
        argv: vec!["httpd".into(), "-f".into(), "-p".into(), "8080".into()],
        env: vec![],
        restart: RestartPolicy::OnFailure,
        backoff_ms: 500,
        max_restarts: 5,
        window_secs: 60,
    };
    vec![
        ("to-open-exec", agent_encode(&ToAgent::Open { stream: 1, op: agent_exec(&["uname", "-r"], false) })),
        (
            "to-open-write",
            agent_encode(&ToAgent::Open {
                stream: 2,
                op: agent_proto::Op::WriteFile { path: "/root/f".into(), mode: 0o644, offset: 0, size: 65536 },
            }),
        ),
        (
            "to-open-service",
            agent_encode(&ToAgent::Open { stream: 3, op: agent_proto::Op::Service(ServiceOp::Define(svc)) }),
        ),
        ("to-input-data", agent_encode(&ToAgent::Input { stream: 1, input: Input::Data(b"hello\n".to_vec()) })),
        ("to-input-end", agent_encode(&ToAgent::Input { stream: 1, input: Input::End })),
        ("to-credit", agent_encode(&ToAgent::Credit { stream: 1, bytes: 4096 })),
        ("to-configure", agent_encode(&ToAgent::Configure { heartbeat_ms: 500 })),
        (
            "from-hello",
            agent_encode(&FromAgent::Hello {
                protocol: agent_proto::AGENT_PROTOCOL,
                agent_version: "0.1.0".into(),
                hostname: "tenant-vm".into(),
                kernel: "6.1.0-48-cloud-amd64".into(),
            }),
        ),
        (
            "from-heartbeat",
            agent_encode(&FromAgent::Heartbeat {
                seq: 7,
                uptime_ms: 12_345,
                load: GuestLoad {
                    load_milli: [10, 20, 30],
                    mem_available_kib: 200_000,
                    processes: 40,
                    services_running: 1,
                    services_failed: 0,
                },
            }),
        ),
        (
            "from-service",
            agent_encode(&FromAgent::ServiceEvent { name: "web".into(), what: "exited with status 1".into() }),
        ),
        ("from-stdout", agent_encode(&FromAgent::Event { stream: 1, event: Event::Stdout(b"6.1.0\n".to_vec()) })),
        (
            "from-exited",
            agent_encode(&FromAgent::Event {
                stream: 1,
                event: Event::Exited { code: Some(3), signal: None, timed_out: false },
            }),
        ),
        (
            "from-done",
            agent_encode(&FromAgent::Event {
                stream: 2,
                event: Event::Done { sha256: [0xab; 32], size: 65536, mode: 0o644 },
            }),
        ),
        (
            "req-agent-open",
            encode(&Request::AgentOpen { vm: VmId(1), op: agent_exec(&["true"], false) }, MAX_MESSAGE).expect("req"),
        ),
        (
            "req-agent-send",
            encode(&Request::AgentSend { vm: VmId(1), stream: 1, input: Input::Signal(2) }, MAX_MESSAGE).expect("req"),
        ),
        (
            "req-agent-poll",
            encode(&Request::AgentPoll { vm: VmId(2), stream: 1, max_bytes: 65536 }, MAX_MESSAGE).expect("req"),
        ),
        (
            "req-agent-heartbeat",
            encode(&Request::AgentHeartbeat { vm: VmId(1), period_ms: 500, timeout_ms: 3000 }, MAX_MESSAGE)
                .expect("req"),
        ),
        (
            "resp-agent-events",
            encode(
                &Response::AgentEvents { events: vec![Event::Stdout(b"hi".to_vec()), Event::Ok], finished: true },
                MAX_MESSAGE,
            )
            .expect("resp"),
        ),
    ]
}

/// agent_ring inputs: mode, region image, then operations (the layout in
/// fuzz_targets/agent_ring.rs).
fn agent_ring() -> Vec<(&'static str, Vec<u8>)> {
    use agent_proto::msg::{Event, FromAgent};
    // Opcodes (op % 14): 0 write, 1 raw record, 2 genuine message, 3 kick,
    // 4 open, 5 send, 6 poll, 7 tick, 8 heartbeat, 9 agent consumes,
    // 10 re-attach, 11 detach, 12 status/log, 13 doorbell.
    let record = |m: &FromAgent| {
        let b = agent_encode(m);
        let mut v = vec![1u8];
        v.extend_from_slice(&le16(b.len() as u16));
        v.extend_from_slice(&b);
        v
    };
    let hello = record(&FromAgent::Hello {
        protocol: agent_proto::AGENT_PROTOCOL,
        agent_version: "0.1.0".into(),
        hostname: "vm".into(),
        kernel: "6.1".into(),
    });
    let out = record(&FromAgent::Event { stream: 1, event: Event::Stdout(b"hello".to_vec()) });
    let exit =
        record(&FromAgent::Event { stream: 1, event: Event::Exited { code: Some(0), signal: None, timed_out: false } });
    let head = |mode: u8| vec![mode, 0, 0];
    let mut exec = head(0);
    exec.extend_from_slice(&[4, 1, 3, 9]);
    exec.extend_from_slice(&hello);
    exec.extend_from_slice(&out);
    exec.extend_from_slice(&exit);
    exec.extend_from_slice(&[3, 6, 0, 0, 0, 3, 9, 12, 0]);
    let mut small = head(1);
    for _ in 0..6 {
        small.extend_from_slice(&[4, 0]);
    }
    small.extend_from_slice(&[5, 0, 0, 0xff, 0x3f, 3, 2, 3, 0, 0xff, 0x7f, 2, 3, 0, 0xff, 0x7f, 3, 6, 0, 0, 0]);
    let mut hung = head(1);
    hung.extend_from_slice(&[8, 0xf4, 1, 0, 0, 0xb8, 0x0b, 0, 0, 3, 7, 0x20, 0x03, 12, 0]);
    // A region image: head published beyond the ring, then a kick.
    let mut hostile = vec![0u8, 24, 0];
    hostile.extend_from_slice(&le32(u32::from_le_bytes(*b"BMA1")));
    hostile.extend_from_slice(&[0; 12]);
    hostile.extend_from_slice(&le32(0x0002_0000));
    hostile.extend_from_slice(&le32(0));
    hostile.extend_from_slice(&[3, 12, 0]);
    let mut garbage = head(2);
    garbage.extend_from_slice(&[4, 0, 1, 3, 0, 0xff, 0xff, 0xff, 3, 6, 0, 0, 0]);
    vec![
        ("exec-round-trip", exec),
        ("small-limits-full", small),
        ("heartbeat-hung", hung),
        ("hostile-head", hostile),
        ("garbage-record", garbage),
    ]
}

// ---- monitor_policy: u16 LE policy length, a postcard Policy, then rounds
// (u16 LE time step in 100 ms, control byte, probe byte, per VM 1..=3 a
// flags byte, the heartbeat age when bit 2 is set, one name byte per
// service failure in bits 5-7).

fn monitor_policy() -> Vec<(&'static str, Vec<u8>)> {
    use mgmt_proto::monitor::{Condition, Policy, PolicyAction, PolicyRule, Probe};
    let rule = |name: &str, vm: Option<u32>, when: Condition, action: PolicyAction| PolicyRule {
        name: name.into(),
        vm: vm.map(VmId),
        when,
        action,
        notify: true,
        backoff_secs: 2,
        max_repeats: 3,
        window_secs: 60,
    };
    let seed = |rules: Vec<PolicyRule>, rounds: &[&[u8]]| {
        let policy = postcard::to_allocvec(&Policy { rules }).expect("policy");
        let mut out = le16(policy.len() as u16).to_vec();
        out.extend_from_slice(&policy);
        for r in rounds {
            out.extend_from_slice(r);
        }
        out
    };
    // Every VM running with an agent 40 s quiet; VM 2 stops abnormally;
    // the disk probe fails 3 (3 << 3 | 3) times in a row.
    let hung: &[u8] = &[10, 0, 0, 3 << 3 | 3, 0b0_0111, 40, 0b0_1111, 40, 0b0_0111, 40];
    let calm: &[u8] = &[10, 0, 0, 0, 0b0_0111, 0, 0b0_0011, 0b0_0111, 0];
    let restarted: &[u8] = &[30, 0, 1, 3 << 3 | 3, 0b1_0111, 40, 0b0_0011, 0b1_0111, 40];
    let landlord = seed(
        vec![
            rule("hb", None, Condition::HeartbeatMissed { secs: 30 }, PolicyAction::RestartVm),
            rule("disk", None, Condition::ProbeFailing { probe: Probe::Disk, count: 3 }, PolicyAction::RebootNode),
            rule("crash", Some(2), Condition::VmStoppedAbnormally, PolicyAction::Notify),
        ],
        &[hung, hung, calm, hung, restarted, hung],
    );
    // Services failing: web twice and db on VM 1, s200 on VM 3.
    let failing: &[u8] = &[5, 0, 0, 0, 0b0100_0011, 0, 0, 0b0010_0011, 1, 0b0010_0011, 200];
    let tenant = seed(
        vec![
            rule(
                "web",
                None,
                Condition::ServiceFailing { service: "web".into(), count: 2, window_secs: 60 },
                PolicyAction::RestartService,
            ),
            rule(
                "any",
                Some(1),
                Condition::ServiceFailing { service: "*".into(), count: 1, window_secs: 10 },
                PolicyAction::ReloadImage,
            ),
            rule("crash", None, Condition::VmStoppedAbnormally, PolicyAction::RestartVm),
        ],
        &[failing, failing, hung, failing, &[0, 1, 2, 0, 0, 0, 0]],
    );
    // Beyond everyone's powers: only validation and the engine's own checks stop it.
    let hostile = seed(
        vec![
            rule("boom", None, Condition::HeartbeatMissed { secs: 1 }, PolicyAction::RebootNode),
            rule("svc", None, Condition::HeartbeatMissed { secs: 1 }, PolicyAction::RestartService),
            rule("boom", Some(3), Condition::VmStoppedAbnormally, PolicyAction::ReloadImage),
        ],
        &[hung, &[0, 0, 4 | 1 << 3, 0, 0b0_1111, 50, 0b0_1111, 50, 0b0_1111, 50], hung],
    );
    vec![("landlord-hb-probe-crash", landlord), ("tenant-services", tenant), ("beyond-powers", hostile)]
}
