//! Node configuration: which VMs a node runs and how each one boots.
//!
//! On the host the landlord writes it as TOML (`[[vm]]` tables, read by
//! `bmimage`); inside the hypervisor it arrives postcard-encoded in the boot
//! bundle (see [`crate::bundle`]). Both sides call [`NodeConfig::validate`],
//! so everything after the boundary can trust the values.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::net::{ClusterConfig, Endpoint, NicConfig, Protocol, RuleConfig, UplinkConfig};

/// Most VMs one node runs, bounding per-node tables in the hypervisor.
pub const MAX_VMS: usize = 16;
/// Largest guest RAM per VM, so the frame allocator and guest addresses stay below 4 GiB.
pub const MAX_VM_MEMORY_MIB: u32 = 2048;
/// Longest VM name, so names fit fixed-size console and hypercall buffers.
pub const MAX_NAME_LEN: usize = 32;
/// Longest kernel command line in bytes; it must fit the guest's boot-info area.
pub const MAX_CMDLINE_LEN: usize = 1024;
/// Most virtual CPUs one VM may have: bounds the per-VM local APIC table and
/// keeps a kick mask of all vCPUs in one machine word (the MADT also lists
/// APIC ids 0..vcpus, all below the xAPIC broadcast id 0xFF).
pub const MAX_VCPUS: u32 = 8;
/// Most entries in a VM's `cpus` pinning list, so the list is bounded
/// whatever the config says (one per physical CPU index below
/// [`MAX_PHYS_CPUS`]).
pub const MAX_CPUS_PINNED: usize = 64;
/// Physical CPU indices a `cpus` entry may name are below this: the
/// hypervisor keeps the set of CPUs a VM may run on in a 64-bit mask.
pub const MAX_PHYS_CPUS: u32 = 64;

/// Everything a node runs: the list of VMs, in boot order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node-wide options (`[node]`).
    #[serde(default)]
    pub node: NodeOptions,
    /// The VMs; spelled `[[vm]]` in TOML.
    #[serde(rename = "vm")]
    pub vms: Vec<VmConfig>,
    /// How the management address is obtained (`[uplink]`); DHCP by default.
    #[serde(default)]
    pub uplink: UplinkConfig,
    /// Tenant clusters (`[[cluster]]`): the landlord's boundaries.
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterConfig>,
    /// Tenant sub-boundaries (`[[rule]]`).
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Node disk key management (`[storage]`).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Images put into the node's image store at boot (`[[image]]`), so
    /// consoles can create VMs from them without uploading.
    #[serde(default, rename = "image")]
    pub images: Vec<ImageConfig>,
}

/// Most images a node config may preload.
pub const MAX_IMAGES: usize = 8;

/// An image preloaded into the node's image store at boot (`[[image]]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Image name in the store, 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// On the host: path to the file (relative to the config); inside a bundle: the entry name.
    pub file: String,
}

/// Key management for the node's encrypted disks, until the consoles can
/// do it at run time. Epochs make a rotation idempotent across reboots:
/// BMonitor remembers the epoch it last applied and acts only when the
/// config names a higher one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Raising it discards K_L: every volume on the node is crypto-erased.
    #[serde(default)]
    pub landlord_key_epoch: u32,
}

/// A VM's virtual disk (`[vm.disk]`): an encrypted volume on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Capacity in MiB (1 to [`MAX_DISK_MIB`]).
    pub size_mib: u32,
}

/// The node's management TCP port (the console protocol).
pub const MGMT_PORT: u16 = 7700;

/// Largest virtual disk.
pub const MAX_DISK_MIB: u32 = 64 * 1024;

/// Node-wide options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// Keep the node (and its management plane) up after every VM has
    /// stopped, instead of powering off.
    #[serde(default)]
    pub keep_running: bool,
    /// The landlord console's public key (64 hex digits, from `bmctl
    /// keygen`), registered at provisioning; without it the node serves no
    /// management sessions.
    #[serde(default)]
    pub landlord_console_key: Option<crate::net::ConsoleKey>,
}

/// Most clusters and most rules one node config may name.
pub const MAX_CLUSTERS: usize = 64;
/// Most tenant rules in a node config.
pub const MAX_RULES: usize = 4096;

/// How the hypervisor should enter a guest kernel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH entry note if the kernel has one, else its multiboot1 header,
    /// else its bzImage setup header (a plain Linux `vmlinuz`).
    #[default]
    Auto,
    /// Xen PVH entry (32-bit protected mode, EBX = `hvm_start_info`).
    Pvh,
    /// Multiboot1 (EAX = 0x2BADB002, EBX = multiboot info).
    Multiboot1,
    /// Linux bzImage, 32-bit boot protocol (ESI = zero page); `boot = "linux"`.
    Linux,
}

/// One VM: its resources, its kernel and how to boot it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Unique name, 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Guest RAM in MiB, 1 to [`MAX_VM_MEMORY_MIB`].
    pub memory_mib: u32,
    /// On the host: path to the kernel image; inside a bundle: the entry name.
    pub kernel: String,
    /// Kernel command line, at most [`MAX_CMDLINE_LEN`] bytes, no NUL.
    #[serde(default)]
    pub cmdline: String,
    /// Optional initrd/module, named like `kernel`.
    #[serde(default)]
    pub module: Option<String>,
    /// Boot protocol; `auto` picks PVH when the kernel supports it.
    #[serde(default)]
    pub boot: BootProtocol,
    /// Stop the VM after this much CPU time (milliseconds, at least 1).
    #[serde(default)]
    pub cpu_time_limit_ms: Option<u64>,
    /// Enables the test-only hypercalls (e.g. state corruption) for this VM.
    #[serde(default)]
    pub debug_hypercalls: bool,
    /// The tenant cluster this VM belongs to (required with a NIC).
    #[serde(default)]
    pub cluster: Option<String>,
    /// A virtual NIC (`[vm.nic]`), if the VM has one.
    #[serde(default)]
    pub nic: Option<NicConfig>,
    /// A virtual disk (`[vm.disk]`), if the VM has one; it belongs to the
    /// VM's cluster (its tenant), so a VM with a disk needs a cluster.
    #[serde(default)]
    pub disk: Option<DiskConfig>,
    /// Number of virtual CPUs, 1 to [`MAX_VCPUS`]; 1 when omitted. vCPU 0
    /// is the bootstrap processor, the others wait for INIT-SIPI-SIPI.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Physical CPU indices (each below [`MAX_PHYS_CPUS`], no duplicates, at
    /// most [`MAX_CPUS_PINNED`]) this VM's vCPUs may run on; empty means any.
    /// It lets the landlord keep noisy tenants off each other's cores.
    #[serde(default)]
    pub cpus: Vec<u32>,
}

fn default_vcpus() -> u32 {
    1
}

/// Written out because a VM has at least one vCPU: a derived default
/// (`vcpus: 0`) would fail validation for every `..Default::default()`.
impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: String::new(),
            memory_mib: 0,
            kernel: String::new(),
            cmdline: String::new(),
            module: None,
            boot: BootProtocol::default(),
            cpu_time_limit_ms: None,
            debug_hypercalls: false,
            cluster: None,
            nic: None,
            disk: None,
            vcpus: default_vcpus(),
            cpus: Vec::new(),
        }
    }
}

/// A config value that failed validation: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `vm[2].name`, or `vm` for the VM list itself.
    pub field: String,
    /// Human-readable reason, e.g. `must be between 1 and 2048`.
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl core::error::Error for ConfigError {}

impl NodeConfig {
    /// Checks the VM count, that names are unique, and every VM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vms.is_empty() {
            return Err(ConfigError::new("vm", "at least one VM is required"));
        }
        if self.vms.len() > MAX_VMS {
            return Err(ConfigError::new("vm", format!("at most {MAX_VMS} VMs are allowed, found {}", self.vms.len())));
        }
        for (i, vm) in self.vms.iter().enumerate() {
            vm.validate(i)?;
            if let Some(first) = self.vms.iter().take(i).position(|o| o.name == vm.name) {
                return Err(ConfigError::new(
                    format!("vm[{i}].name"),
                    format!("\"{}\" is already the name of vm[{first}]", vm.name),
                ));
            }
        }
        self.validate_images()?;
        self.validate_network()
    }

    fn validate_images(&self) -> Result<(), ConfigError> {
        if self.images.len() > MAX_IMAGES {
            return Err(ConfigError::new(
                "image",
                format!("at most {MAX_IMAGES} images are allowed, found {}", self.images.len()),
            ));
        }
        for (i, img) in self.images.iter().enumerate() {
            if !valid_name(&img.name) {
                return Err(ConfigError::new(
                    format!("image[{i}].name"),
                    format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"),
                ));
            }
            if let Some(first) = self.images.iter().take(i).position(|o| o.name == img.name) {
                return Err(ConfigError::new(
                    format!("image[{i}].name"),
                    format!("\"{}\" is already the name of image[{first}]", img.name),
                ));
            }
            if img.file.is_empty() {
                return Err(ConfigError::new(format!("image[{i}].file"), "must not be empty"));
            }
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        if let Some(port) = self.uplink.discard_port {
            if port == 0 || port == MGMT_PORT {
                return Err(ConfigError::new(
                    "uplink.discard_port",
                    format!("must be 1 to 65535 and not the management port {MGMT_PORT}"),
                ));
            }
        }
        if self.clusters.len() > MAX_CLUSTERS {
            return Err(ConfigError::new("cluster", format!("at most {MAX_CLUSTERS} clusters are allowed")));
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if !valid_name(&c.name) {
                return Err(ConfigError::new(
                    format!("cluster[{i}].name"),
                    format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"),
                ));
            }
            if self.clusters.iter().take(i).any(|o| o.name == c.name) {
                return Err(ConfigError::new(format!("cluster[{i}].name"), format!("\"{}\" is defined twice", c.name)));
            }
            if let Some(j) = c.remote.iter().position(|e| matches!(e, Endpoint::Vm(_))) {
                return Err(ConfigError::new(
                    format!("cluster[{i}].remote[{j}]"),
                    "must be an IPv4 or MAC address (VMs of this node join a cluster by their own `cluster` field)",
                ));
            }
        }
        let cluster_exists = |name: &str| self.clusters.iter().any(|c| c.name == name);
        for (i, vm) in self.vms.iter().enumerate() {
            if let Some(c) = &vm.cluster {
                if !cluster_exists(c) {
                    return Err(ConfigError::new(
                        format!("vm[{i}].cluster"),
                        format!("no [[cluster]] is named \"{c}\""),
                    ));
                }
            }
            if let Some(d) = &vm.disk {
                if !(1..=MAX_DISK_MIB).contains(&d.size_mib) {
                    return Err(ConfigError::new(
                        format!("vm[{i}].disk.size_mib"),
                        format!("must be between 1 and {MAX_DISK_MIB}"),
                    ));
                }
                if vm.cluster.is_none() {
                    return Err(ConfigError::new(
                        format!("vm[{i}].cluster"),
                        "a VM with a disk must belong to a cluster",
                    ));
                }
            }
            let Some(nic) = &vm.nic else { continue };
            if vm.cluster.is_none() {
                return Err(ConfigError::new(format!("vm[{i}].cluster"), "a VM with a NIC must belong to a cluster"));
            }
            for (j, other) in self.vms.iter().enumerate().take(i) {
                let Some(o) = &other.nic else { continue };
                if o.ip == nic.ip {
                    return Err(ConfigError::new(
                        format!("vm[{i}].nic.ip"),
                        format!("{} is already vm[{j}]'s", nic.ip),
                    ));
                }
                if nic.mac.is_some() && o.mac == nic.mac {
                    return Err(ConfigError::new(format!("vm[{i}].nic.mac"), "is already another VM's"));
                }
            }
            if nic.mac.is_some_and(|m| m.0[0] & 1 != 0 || m.0 == [0; 6]) {
                return Err(ConfigError::new(format!("vm[{i}].nic.mac"), "must be a unicast, non-zero address"));
            }
        }
        if self.rules.len() > MAX_RULES {
            return Err(ConfigError::new("rule", format!("at most {MAX_RULES} rules are allowed")));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !cluster_exists(&r.cluster) {
                return Err(ConfigError::new(
                    format!("rule[{i}].cluster"),
                    format!("no [[cluster]] is named \"{}\"", r.cluster),
                ));
            }
            for (side, list) in [("from", &r.from), ("to", &r.to)] {
                if list.is_empty() {
                    return Err(ConfigError::new(format!("rule[{i}].{side}"), "must name at least one endpoint"));
                }
                for (j, e) in list.iter().enumerate() {
                    if let Endpoint::Vm(name) = e {
                        match self.vms.iter().find(|v| &v.name == name) {
                            None => {
                                return Err(ConfigError::new(
                                    format!("rule[{i}].{side}[{j}]"),
                                    format!("no VM is named \"{name}\""),
                                ))
                            }
                            Some(v) if v.cluster.as_deref() != Some(r.cluster.as_str()) || v.nic.is_none() => {
                                return Err(ConfigError::new(
                                    format!("rule[{i}].{side}[{j}]"),
                                    format!("VM \"{name}\" has no NIC in cluster \"{}\"", r.cluster),
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            if r.ports.is_some() && r.protocol == Protocol::Icmp {
                return Err(ConfigError::new(format!("rule[{i}].ports"), "ICMP has no ports"));
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    crate::text::valid_name(name)
}

impl VmConfig {
    /// Checks this VM's fields; `index` is its position, used in error paths.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("vm[{index}].{name}");
        if !valid_name(&self.name) {
            return Err(ConfigError::new(
                field("name"),
                format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        if !(1..=MAX_VM_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::new(field("memory_mib"), format!("must be between 1 and {MAX_VM_MEMORY_MIB}")));
        }
        if self.kernel.is_empty() {
            return Err(ConfigError::new(field("kernel"), "must not be empty"));
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::new(
                field("cmdline"),
                format!("must be at most {MAX_CMDLINE_LEN} bytes, is {}", self.cmdline.len()),
            ));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::new(field("cmdline"), "must not contain NUL"));
        }
        if let Some(module) = &self.module {
            if module.is_empty() {
                return Err(ConfigError::new(field("module"), "must not be empty"));
            }
        }
        if self.cpu_time_limit_ms == Some(0) {
            return Err(ConfigError::new(field("cpu_time_limit_ms"), "must be at least 1"));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::new(field("vcpus"), format!("must be between 1 and {MAX_VCPUS}")));
        }
        self.validate_cpus(index)
    }

    /// Checks the pinning list: bounded length, indices in range, no repeats.
    fn validate_cpus(&self, index: usize) -> Result<(), ConfigError> {
        if self.cpus.len() > MAX_CPUS_PINNED {
            return Err(ConfigError::new(
                format!("vm[{index}].cpus"),
                format!("at most {MAX_CPUS_PINNED} CPUs may be listed, found {}", self.cpus.len()),
            ));
        }
        let mut seen: u64 = 0;
        for (j, &cpu) in self.cpus.iter().enumerate() {
            if cpu >= MAX_PHYS_CPUS {
                return Err(ConfigError::new(
                    format!("vm[{index}].cpus[{j}]"),
                    format!("CPU index {cpu} must be below {MAX_PHYS_CPUS}"),
                ));
            }
            let bit = 1u64 << cpu;
            if seen & bit != 0 {
                return Err(ConfigError::new(format!("vm[{index}].cpus[{j}]"), format!("CPU {cpu} is listed twice")));
            }
            seen |= bit;
        }
        Ok(())
    }
}

impl fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Pvh => "pvh",
            BootProtocol::Multiboot1 => "multiboot1",
            BootProtocol::Linux => "linux",
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn vm(name: &str) -> VmConfig {
        VmConfig {
            name: name.into(),
            memory_mib: 64,
            kernel: "kernel.elf".into(),
            cmdline: String::new(),
            module: None,
            boot: BootProtocol::Auto,
            cpu_time_limit_ms: None,
            debug_hypercalls: false,
            ..Default::default()
        }
    }

    fn err(field: &str, reason: &str) -> Result<(), ConfigError> {
        Err(ConfigError::new(field, reason))
    }

    #[test]
    fn valid_config_passes() {
        let c = NodeConfig { vms: vec![vm("a"), vm("b-1.x_y")], ..Default::default() };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn display_names_field() {
        let mut c = NodeConfig { vms: vec![vm("a"), vm("b"), vm("bad name")], ..Default::default() };
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "vm[2].name: must be 1 to 32 characters of A-Z a-z 0-9 _ . -");
        c.vms[2].name = "x".repeat(33);
        assert_eq!(c.validate().unwrap_err().field, "vm[2].name");
        c.vms[2].name = "x".repeat(32);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn count_errors() {
        assert_eq!(NodeConfig { vms: vec![], ..Default::default() }.validate().unwrap_err().field, "vm");
        let vms = (0..=MAX_VMS).map(|i| vm(&format!("v{i}"))).collect();
        assert_eq!(NodeConfig { vms, ..Default::default() }.validate().unwrap_err().field, "vm");
        let vms = (0..MAX_VMS).map(|i| vm(&format!("v{i}"))).collect();
        assert_eq!(NodeConfig { vms, ..Default::default() }.validate(), Ok(()));
    }

    #[test]
    fn duplicate_names() {
        let e = NodeConfig { vms: vec![vm("a"), vm("b"), vm("a")], ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.field, "vm[2].name");
        assert!(e.reason.contains("vm[0]"));
    }

    #[test]
    fn field_errors() {
        let mut v = vm("a");
        v.memory_mib = 0;
        assert_eq!(v.validate(1), err("vm[1].memory_mib", "must be between 1 and 2048"));
        v.memory_mib = MAX_VM_MEMORY_MIB + 1;
        assert_eq!(v.validate(1).unwrap_err().field, "vm[1].memory_mib");
        v.memory_mib = MAX_VM_MEMORY_MIB;
        assert_eq!(v.validate(1), Ok(()));

        let mut v = vm("a");
        v.kernel.clear();
        assert_eq!(v.validate(0), err("vm[0].kernel", "must not be empty"));

        let mut v = vm("a");
        v.cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert_eq!(v.validate(0), Ok(()));
        v.cmdline.push('x');
        assert_eq!(v.validate(0).unwrap_err().field, "vm[0].cmdline");
        v.cmdline = "a\0b".into();
        assert_eq!(v.validate(0), err("vm[0].cmdline", "must not contain NUL"));

        let mut v = vm("a");
        v.module = Some(String::new());
        assert_eq!(v.validate(0), err("vm[0].module", "must not be empty"));

        let mut v = vm("a");
        v.cpu_time_limit_ms = Some(0);
        assert_eq!(v.validate(0), err("vm[0].cpu_time_limit_ms", "must be at least 1"));
        v.cpu_time_limit_ms = Some(1);
        assert_eq!(v.validate(0), Ok(()));
    }

    #[test]
    fn vcpus_default_to_one_and_are_bounded() {
        assert_eq!(VmConfig::default().vcpus, 1);
        let mut v = vm("a");
        assert_eq!(v.validate(0), Ok(()));
        v.vcpus = 0;
        assert_eq!(v.validate(3), err("vm[3].vcpus", "must be between 1 and 8"));
        v.vcpus = MAX_VCPUS;
        assert_eq!(v.validate(3), Ok(()));
        v.vcpus = MAX_VCPUS + 1;
        assert_eq!(v.validate(3).unwrap_err().to_string(), "vm[3].vcpus: must be between 1 and 8");
        v.vcpus = u32::MAX;
        assert_eq!(v.validate(3).unwrap_err().field, "vm[3].vcpus");
    }

    #[test]
    fn cpu_pinning_is_checked() {
        let mut v = vm("a");
        assert!(v.cpus.is_empty());
        v.cpus = vec![0, 3, MAX_PHYS_CPUS - 1];
        assert_eq!(v.validate(0), Ok(()));
        v.cpus = vec![0, MAX_PHYS_CPUS];
        assert_eq!(v.validate(0), err("vm[0].cpus[1]", "CPU index 64 must be below 64"));
        v.cpus = vec![5, 2, 5];
        assert_eq!(v.validate(1), err("vm[1].cpus[2]", "CPU 5 is listed twice"));
        v.cpus = (0..MAX_PHYS_CPUS).collect();
        assert_eq!(v.cpus.len(), MAX_CPUS_PINNED);
        assert_eq!(v.validate(0), Ok(()));
        v.cpus.push(0);
        assert_eq!(v.validate(0), err("vm[0].cpus", "at most 64 CPUs may be listed, found 65"));
    }

    #[test]
    fn vcpus_and_pinning_round_trip_through_postcard() {
        let mut a = vm("a");
        a.vcpus = 4;
        a.cpus = vec![2, 3];
        let c = NodeConfig { vms: vec![a], ..Default::default() };
        assert_eq!(c.validate(), Ok(()));
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
    }

    fn image(name: &str) -> ImageConfig {
        ImageConfig { name: name.into(), file: "vmlinuz".into() }
    }

    #[test]
    fn preloaded_images_are_checked() {
        let mut c =
            NodeConfig { vms: vec![vm("a")], images: vec![image("k"), image("initrd.img")], ..Default::default() };
        assert_eq!(c.validate(), Ok(()));
        c.images[1].name = "bad name".into();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "image[1].name: must be 1 to 32 characters of A-Z a-z 0-9 _ . -"
        );
        c.images[1].name = "k".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "image[1].name");
        assert!(e.reason.contains("image[0]"), "{e}");
        c.images[1].name = "i".into();
        c.images[1].file.clear();
        assert_eq!(c.validate(), err("image[1].file", "must not be empty"));
        c.images = (0..=MAX_IMAGES).map(|i| image(&format!("i{i}"))).collect();
        assert_eq!(c.validate().unwrap_err().field, "image");
        c.images.pop();
        assert_eq!(c.validate(), Ok(()));
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
    }

    #[test]
    fn postcard_round_trip() {
        let mut b = vm("b");
        b.cmdline = "console=ttyS0 quiet".into();
        b.module = Some("initrd".into());
        b.boot = BootProtocol::Multiboot1;
        b.cpu_time_limit_ms = Some(5000);
        b.debug_hypercalls = true;
        let c = NodeConfig { vms: vec![vm("a"), b], ..Default::default() };
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
    }

    #[test]
    fn boot_protocol_names() {
        use serde::de::{value::StrDeserializer, Deserialize};
        for (p, name) in [
            (BootProtocol::Auto, "auto"),
            (BootProtocol::Pvh, "pvh"),
            (BootProtocol::Multiboot1, "multiboot1"),
            (BootProtocol::Linux, "linux"),
        ] {
            assert_eq!(p.to_string(), name);
            let de = StrDeserializer::<serde::de::value::Error>::new(name);
            assert_eq!(BootProtocol::deserialize(de).unwrap(), p);
        }
        let de = StrDeserializer::<serde::de::value::Error>::new("bzimage");
        assert!(BootProtocol::deserialize(de).is_err());
    }

    fn arb_vm() -> impl Strategy<Value = VmConfig> {
        (
            "[A-Za-z0-9_.-]{0,34}",
            0u32..3000,
            ".{0,20}",
            ".{0,40}",
            proptest::option::of(".{0,10}"),
            prop_oneof![
                Just(BootProtocol::Auto),
                Just(BootProtocol::Pvh),
                Just(BootProtocol::Multiboot1),
                Just(BootProtocol::Linux)
            ],
            proptest::option::of(0u64..u64::MAX),
            any::<bool>(),
            prop_oneof![0u32..=MAX_VCPUS + 1, any::<u32>()],
            proptest::collection::vec(prop_oneof![0u32..MAX_PHYS_CPUS + 2, any::<u32>()], 0..4),
        )
            .prop_map(|(name, memory_mib, kernel, cmdline, module, boot, cpu, dbg, vcpus, cpus)| VmConfig {
                name,
                memory_mib,
                kernel,
                cmdline,
                module,
                boot,
                cpu_time_limit_ms: cpu,
                debug_hypercalls: dbg,
                vcpus,
                cpus,
                ..Default::default()
            })
    }

    fn net_config() -> NodeConfig {
        use crate::net::{ClusterConfig, Ipv4, NicConfig};
        let nic = |ip: u8| Some(NicConfig { ip: Ipv4([10, 0, 0, ip]), mac: None });
        let mut a = vm("a");
        a.cluster = Some("red".into());
        a.nic = nic(1);
        let mut b = vm("b");
        b.cluster = Some("red".into());
        b.nic = nic(2);
        let mut c = vm("c");
        c.cluster = Some("blue".into());
        c.nic = nic(3);
        NodeConfig {
            vms: vec![a, b, c],
            clusters: vec![
                ClusterConfig { name: "red".into(), remote: vec![], ..Default::default() },
                ClusterConfig { name: "blue".into(), remote: vec![], ..Default::default() },
            ],
            ..Default::default()
        }
    }

    fn rule(cluster: &str, from: &str, to: &str) -> crate::net::RuleConfig {
        crate::net::RuleConfig {
            cluster: cluster.into(),
            from: vec![from.parse().unwrap()],
            to: vec![to.parse().unwrap()],
            direction: Default::default(),
            protocol: Default::default(),
            ports: None,
            except: false,
            action: Default::default(),
        }
    }

    #[test]
    fn network_references_are_checked() {
        assert_eq!(net_config().validate(), Ok(()));

        let mut c = net_config();
        c.vms[2].cluster = Some("green".into());
        assert_eq!(c.validate().unwrap_err().field, "vm[2].cluster");

        let mut c = net_config();
        c.vms[1].cluster = None;
        assert_eq!(c.validate().unwrap_err().to_string(), "vm[1].cluster: a VM with a NIC must belong to a cluster");

        let mut c = net_config();
        c.vms[1].nic.as_mut().unwrap().ip = crate::net::Ipv4([10, 0, 0, 1]);
        assert_eq!(c.validate().unwrap_err().field, "vm[1].nic.ip");

        let mut c = net_config();
        c.clusters[1].name = "red".into();
        assert_eq!(c.validate().unwrap_err().field, "cluster[1].name");

        let mut c = net_config();
        c.rules.push(rule("red", "a", "b"));
        assert_eq!(c.validate(), Ok(()));
        c.rules.push(rule("red", "a", "c"));
        assert_eq!(c.validate().unwrap_err().to_string(), "rule[1].to[0]: VM \"c\" has no NIC in cluster \"red\"");

        let mut c = net_config();
        c.rules.push(rule("red", "a", "nobody"));
        assert_eq!(c.validate().unwrap_err().field, "rule[0].to[0]");

        let mut c = net_config();
        c.rules.push(rule("pink", "a", "b"));
        assert_eq!(c.validate().unwrap_err().field, "rule[0].cluster");

        let mut c = net_config();
        let mut r = rule("red", "a", "b");
        r.protocol = crate::net::Protocol::Icmp;
        r.ports = Some("80".parse().unwrap());
        c.rules.push(r);
        assert_eq!(c.validate().unwrap_err().field, "rule[0].ports");
    }

    #[test]
    fn discard_port_may_not_be_zero_or_the_management_port() {
        let mut c = net_config();
        for (port, ok) in [(0, false), (MGMT_PORT, false), (9, true), (65535, true)] {
            c.uplink.discard_port = Some(port);
            assert_eq!(c.validate().is_ok(), ok, "port {port}");
        }
    }

    #[test]
    fn network_config_round_trips_through_postcard() {
        let mut c = net_config();
        c.rules.push(rule("red", "a", "10.0.0.2"));
        c.uplink.address = Some("10.0.2.15/24".parse().unwrap());
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
    }

    proptest! {
        #[test]
        fn valid_configs_round_trip(vms in proptest::collection::vec(arb_vm(), 1..6)) {
            let c = NodeConfig { vms, ..Default::default() };
            if c.validate().is_ok() {
                let bytes = postcard::to_allocvec(&c).unwrap();
                prop_assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
            }
        }

        /// Validation of hostile vCPU counts and pinning lists never panics,
        /// and accepts exactly what the documented rules allow.
        #[test]
        fn vcpu_validation_never_panics(
            vcpus in any::<u32>(),
            cpus in proptest::collection::vec(prop_oneof![0u32..70, any::<u32>()], 0..80),
        ) {
            let mut v = vm("a");
            v.vcpus = vcpus;
            v.cpus = cpus.clone();
            let mut sorted = cpus.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let ok = (1..=MAX_VCPUS).contains(&vcpus)
                && cpus.len() <= MAX_CPUS_PINNED
                && cpus.iter().all(|&c| c < MAX_PHYS_CPUS)
                && sorted.len() == cpus.len();
            prop_assert_eq!(v.validate(0).is_ok(), ok);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(c) = postcard::from_bytes::<NodeConfig>(&bytes) {
                let _ = c.validate();
            }
        }
    }
}
