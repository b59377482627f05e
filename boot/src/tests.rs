//! Unit tests: TOML parsing errors, path resolution, entry naming, bundling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use vmm_config::config::BootProtocol;

fn node_toml(vms: &str) -> String {
    vms.to_string()
}

#[test]
fn typo_field_is_named() {
    let text = "[[vm]]\nname = \"a\"\nmemroy_mib = 64\nkernel = \"k.elf\"\n";
    let e = parse_config(text, Path::new("node.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("node.toml: "), "{msg}");
    assert!(msg.contains("memroy_mib"), "{msg}");
}

#[test]
fn validation_error_names_file_and_field() {
    let text = node_toml(
        "[[vm]]\nname = \"a\"\nmemory_mib = 64\nkernel = \"k\"\n\
         [[vm]]\nname = \"b\"\nmemory_mib = 4096\nkernel = \"k\"\n",
    );
    let e = parse_config(&text, Path::new("node.toml")).unwrap_err();
    assert_eq!(e.to_string(), "node.toml: vm[1].memory_mib: must be between 1 and 2048");
}

#[test]
fn all_fields_parse() {
    let text = "[[vm]]\nname = \"a\"\nmemory_mib = 64\nkernel = \"k\"\ncmdline = \"x y\"\n\
                module = \"m\"\nboot = \"multiboot1\"\ncpu_time_limit_ms = 500\ndebug_hypercalls = true\n\
                vcpus = 4\ncpus = [1, 2]\n\
                [[vm]]\nname = \"b\"\nmemory_mib = 8\nkernel = \"k\"\nboot = \"pvh\"\n";
    let c = parse_config(text, Path::new("n.toml")).unwrap();
    assert_eq!(c.vms[0].boot, BootProtocol::Multiboot1);
    assert_eq!(c.vms[0].module.as_deref(), Some("m"));
    assert_eq!(c.vms[0].cpu_time_limit_ms, Some(500));
    assert!(c.vms[0].debug_hypercalls);
    assert_eq!(c.vms[1].boot, BootProtocol::Pvh);
    assert_eq!(c.vms[1].cmdline, "");
    assert_eq!((c.vms[0].vcpus, c.vms[0].cpus.as_slice()), (4, &[1, 2][..]));
    assert_eq!((c.vms[1].vcpus, c.vms[1].cpus.len()), (1, 0), "defaults: one vCPU, any CPU");
    let too_many = "[[vm]]\nname = \"a\"\nmemory_mib = 64\nkernel = \"k\"\nvcpus = 9\n";
    assert_eq!(
        parse_config(too_many, Path::new("n.toml")).unwrap_err().to_string(),
        "n.toml: vm[0].vcpus: must be between 1 and 8"
    );
    let bad = "[[vm]]\nname = \"a\"\nmemory_mib = 64\nkernel = \"k\"\nboot = \"bios\"\n";
    assert!(parse_config(bad, Path::new("n.toml")).unwrap_err().to_string().contains("bios"));
    assert!(parse_config("", Path::new("n.toml")).is_err());
}

/// A minimal PVH ELF64 kernel: one PT_LOAD at 1 MiB and the Xen entry note.
fn pvh_kernel(tag: u8) -> Vec<u8> {
    let mut note = Vec::new();
    for v in [4u32, 8, 18] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&0x10_0000u64.to_le_bytes());
    let code = vec![tag; 16];
    let (phoff, n) = (64u64, 2u64);
    let code_off = phoff + 56 * n;
    let note_off = code_off + code.len() as u64;
    let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&62u16.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0x10_0000u64.to_le_bytes());
    h.extend_from_slice(&phoff.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, n as u16, 64, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    for (typ, off, addr, len) in [(1u32, code_off, 0x10_0000u64, 16u64), (4, note_off, 0, note.len() as u64)] {
        h.extend_from_slice(&typ.to_le_bytes());
        h.extend_from_slice(&5u32.to_le_bytes());
        for v in [off, addr, addr, len, len, 4] {
            h.extend_from_slice(&v.to_le_bytes());
        }
    }
    h.extend_from_slice(&code);
    h.extend_from_slice(&note);
    h
}

fn vm(name: &str, kernel: &str, module: Option<&str>) -> vmm_config::config::VmConfig {
    vmm_config::config::VmConfig {
        name: name.into(),
        memory_mib: 16,
        kernel: kernel.into(),
        cmdline: String::new(),
        module: module.map(Into::into),
        boot: BootProtocol::Auto,
        cpu_time_limit_ms: None,
        debug_hypercalls: false,
        ..Default::default()
    }
}

#[test]
fn resolve_relative_and_absolute() {
    assert_eq!(resolve(Path::new("/cfg"), "k.elf"), PathBuf::from("/cfg/k.elf"));
    assert_eq!(resolve(Path::new("/cfg"), "../x/k.elf"), PathBuf::from("/cfg/../x/k.elf"));
    assert_eq!(resolve(Path::new("/cfg"), "/abs/k.elf"), PathBuf::from("/abs/k.elf"));
}

#[test]
fn entry_names_dedup_and_disambiguate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("a")).unwrap();
    fs::create_dir_all(d.join("b")).unwrap();
    fs::write(d.join("a/kernel.elf"), b"1").unwrap();
    fs::write(d.join("b/kernel.elf"), b"2").unwrap();
    fs::write(d.join("initrd"), b"3").unwrap();
    fs::write(d.join("node.config"), b"4").unwrap();
    let abs = d.join("a/kernel.elf").to_string_lossy().into_owned();
    let mut config = NodeConfig {
        vms: vec![
            vm("v0", "a/kernel.elf", Some("initrd")),
            vm("v1", &abs, Some("./initrd")),
            vm("v2", "b/kernel.elf", None),
            vm("v3", "node.config", None),
        ],
        ..Default::default()
    };
    let entries = assign_entries(&mut config, d).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["kernel.elf", "initrd", "vm2.kernel.kernel.elf", "vm3.kernel.node.config"]);
    assert_eq!(config.vms[0].kernel, "kernel.elf");
    assert_eq!(config.vms[1].kernel, "kernel.elf");
    assert_eq!(config.vms[1].module.as_deref(), Some("initrd"));
    assert_eq!(config.vms[2].kernel, "vm2.kernel.kernel.elf");
    assert_eq!(entries[2].path, fs::canonicalize(d.join("b/kernel.elf")).unwrap());
}

#[test]
fn missing_file_names_vm_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig { vms: vec![vm("web", "nope.elf", None)], ..Default::default() };
    let e = assign_entries(&mut config, dir.path()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("vm[0] (web).kernel") && msg.contains("nope.elf"), "{msg}");
}

#[test]
fn bundle_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("k")).unwrap();
    fs::write(d.join("k/guest.elf"), pvh_kernel(1)).unwrap();
    fs::write(d.join("initrd.img"), b"initrd-bytes").unwrap();
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"k/guest.elf\"\nmodule = \"initrd.img\"\n\
                cmdline = \"hello\"\n[[vm]]\nname = \"two\"\nmemory_mib = 4\nkernel = \"k/guest.elf\"\nboot = \"pvh\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let bytes = build_bundle_with(&d.join("node.toml"), None).unwrap();
    let b = bundle::Bundle::parse(&bytes).unwrap();
    let c = b.node_config().unwrap();
    assert_eq!(c.vms[0].kernel, "guest.elf");
    assert_eq!(c.vms[1].kernel, "guest.elf");
    assert_eq!(c.vms[0].module.as_deref(), Some("initrd.img"));
    assert_eq!(c.vms[0].cmdline, "hello");
    assert_eq!(b.entries().count(), 3);
    assert_eq!(b.get("guest.elf"), Some(pvh_kernel(1).as_slice()));
    assert_eq!(b.get("initrd.img"), Some(&b"initrd-bytes"[..]));

    // Written through the command too.
    cmd_bundle(&d.join("node.toml"), &d.join("node.bundle"), None).unwrap();
    assert_eq!(fs::read(d.join("node.bundle")).unwrap(), bytes);
}

#[test]
fn preloaded_images_are_bundled_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("guest.elf"), pvh_kernel(3)).unwrap();
    // A gzip'd initramfs as far as the format sniffing goes.
    let initrd = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
    fs::write(d.join("initrd.img"), initrd).unwrap();
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"guest.elf\"\n\
                [[image]]\nname = \"k\"\nfile = \"guest.elf\"\n\
                [[image]]\nname = \"i\"\nfile = \"initrd.img\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let bytes = build_bundle_with(&d.join("node.toml"), None).unwrap();
    let b = bundle::Bundle::parse(&bytes).unwrap();
    let c = b.node_config().unwrap();
    assert_eq!(c.images[0].file, "guest.elf", "the VM's kernel entry is shared");
    assert_eq!(c.images[1].file, "initrd.img");
    assert_eq!(b.get(&c.images[1].file), Some(&initrd[..]));
    assert_eq!(b.entries().count(), 3);

    // Neither a kernel nor an initramfs.
    fs::write(d.join("junk.bin"), b"not an image").unwrap();
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"guest.elf\"\n\
                [[image]]\nname = \"junk\"\nfile = \"junk.bin\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let msg = format!("{:#}", build_bundle_with(&d.join("node.toml"), None).unwrap_err());
    assert!(msg.contains("image[0].file") && msg.contains("junk.bin"), "{msg}");

    // Above the per-image quota.
    let mut big = initrd.to_vec();
    big.resize((16 << 20) + 1, 0);
    fs::write(d.join("big.img"), big).unwrap();
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"guest.elf\"\n\
                [[image]]\nname = \"big\"\nfile = \"big.img\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let msg = format!("{:#}", build_bundle_with(&d.join("node.toml"), None).unwrap_err());
    assert!(msg.contains("image[0].file") && msg.contains("max_image_bytes"), "{msg}");

    // A missing file and a bad name name the field.
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"guest.elf\"\n\
                [[image]]\nname = \"gone\"\nfile = \"gone.img\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let msg = format!("{:#}", build_bundle_with(&d.join("node.toml"), None).unwrap_err());
    assert!(msg.contains("image[0] (gone).file") && msg.contains("gone.img"), "{msg}");
    let toml = "[[vm]]\nname = \"one\"\nmemory_mib = 16\nkernel = \"guest.elf\"\n\
                [[image]]\nname = \"a b\"\nfile = \"guest.elf\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let e = build_bundle_with(&d.join("node.toml"), None).unwrap_err();
    assert!(
        e.to_string().ends_with("node.toml: image[0].name: must be 1 to 32 characters of A-Z a-z 0-9 _ . -"),
        "{e}"
    );
}

#[test]
fn unloadable_kernel_names_vm_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("junk.bin"), b"not a kernel").unwrap();
    fs::write(d.join("pvh.elf"), pvh_kernel(2)).unwrap();
    let toml = "[[vm]]\nname = \"ok\"\nmemory_mib = 16\nkernel = \"pvh.elf\"\n\
                [[vm]]\nname = \"bad\"\nmemory_mib = 16\nkernel = \"junk.bin\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let e = build_bundle_with(&d.join("node.toml"), None).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("vm[1] (bad)") && msg.contains("junk.bin"), "{msg}");
    assert!(msg.contains("no PVH entry note and no multiboot1 header"), "{msg}");

    // Right file, wrong protocol.
    let toml = "[[vm]]\nname = \"mb\"\nmemory_mib = 16\nkernel = \"pvh.elf\"\nboot = \"multiboot1\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let msg = format!("{:#}", build_bundle_with(&d.join("node.toml"), None).unwrap_err());
    assert!(msg.contains("vm[0] (mb)") && msg.contains("multiboot1"), "{msg}");

    // A kernel that does not fit in 1 MiB of RAM.
    let toml = "[[vm]]\nname = \"tiny\"\nmemory_mib = 1\nkernel = \"pvh.elf\"\n";
    fs::write(d.join("node.toml"), toml).unwrap();
    let msg = format!("{:#}", build_bundle_with(&d.join("node.toml"), None).unwrap_err());
    assert!(msg.contains("vm[0] (tiny)"), "{msg}");
}

#[test]
fn config_errors_are_exit_code_2_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("node.toml"), "[[vm]]\nname = \"a b\"\nmemory_mib = 1\nkernel = \"k\"\n").unwrap();
    let e = build_bundle_with(&d.join("node.toml"), None).unwrap_err();
    assert!(e.downcast_ref::<ConfigFileError>().is_some());
    assert!(e.to_string().ends_with("node.toml: vm[0].name: must be 1 to 32 characters of A-Z a-z 0-9 _ . -"));
}

#[test]
fn grub_cfg_contents() {
    for line in [
        "set timeout=0",
        "set default=0",
        "multiboot2 /boot/bmonitor.elf",
        "module2 /boot/node.bundle node.bundle",
        "boot",
    ] {
        assert!(GRUB_CFG.contains(line), "{line}");
    }
}

#[test]
fn rule_crossing_a_cluster_boundary_is_refused_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[cluster]]
name = "a"
[[cluster]]
name = "b"
[[vm]]
name = "a1"
memory_mib = 8
kernel = "k"
cluster = "a"
[vm.nic]
ip = "10.0.0.1"
[[vm]]
name = "b1"
memory_mib = 8
kernel = "k"
cluster = "b"
[vm.nic]
ip = "10.0.0.2"
[[rule]]
cluster = "a"
from = ["a1"]
to = ["10.0.0.2"]
"#;
    let e = parse_config(toml, &dir.path().join("node.toml")).unwrap_err();
    assert!(e.message.starts_with("rule[0]: dst[0]"), "{}", e.message);
    assert!(e.message.contains("may not cross its cluster boundary"), "{}", e.message);
}

#[test]
fn disk_vms_get_a_persistent_seal_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = std::env::var("CARGO_MANIFEST_DIR").unwrap() + "/../target/x86_64-unknown-none/release/hello";
    if !Path::new(&kernel).exists() {
        return; // guests not built in this checkout; covered end to end
    }
    let toml = format!(
        "[[cluster]]\nname = \"t\"\n[[vm]]\nname = \"v\"\nmemory_mib = 8\nkernel = \"{kernel}\"\ncluster = \"t\"\n[vm.disk]\nsize_mib = 4\n"
    );
    fs::write(d.join("node.toml"), toml).unwrap();
    let b1 = build_bundle_with(&d.join("node.toml"), None).unwrap();
    let secret = fs::read(d.join("node.secret")).unwrap();
    assert_eq!(secret.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(d.join("node.secret")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let b2 = build_bundle_with(&d.join("node.toml"), None).unwrap();
    let get = |b: &[u8]| vmm_config::bundle::Bundle::parse(b).unwrap().get(SEAL_SECRET_ENTRY).unwrap().to_vec();
    assert_eq!(get(&b1), secret);
    assert_eq!(get(&b2), secret, "the secret is reused, not regenerated");
}
