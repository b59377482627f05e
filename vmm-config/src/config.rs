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

/// Most VMs one node runs, bounding per-node tables in the hypervisor.
pub const MAX_VMS: usize = 16;
/// Largest guest RAM per VM, so the frame allocator and guest addresses stay below 4 GiB.
pub const MAX_VM_MEMORY_MIB: u32 = 2048;
/// Longest VM name, so names fit fixed-size console and hypercall buffers.
pub const MAX_NAME_LEN: usize = 32;
/// Longest kernel command line in bytes; it must fit the guest's boot-info area.
pub const MAX_CMDLINE_LEN: usize = 1024;

/// Everything a node runs: the list of VMs, in boot order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The VMs; spelled `[[vm]]` in TOML.
    #[serde(rename = "vm")]
    pub vms: Vec<VmConfig>,
}

/// How the hypervisor should enter a guest kernel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH entry note if the kernel has one, else its multiboot1 header.
    #[default]
    Auto,
    /// Xen PVH entry (32-bit protected mode, EBX = `hvm_start_info`).
    Pvh,
    /// Multiboot1 (EAX = 0x2BADB002, EBX = multiboot info).
    Multiboot1,
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
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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
        Ok(())
    }
}

impl fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Pvh => "pvh",
            BootProtocol::Multiboot1 => "multiboot1",
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
        }
    }

    fn err(field: &str, reason: &str) -> Result<(), ConfigError> {
        Err(ConfigError::new(field, reason))
    }

    #[test]
    fn valid_config_passes() {
        let c = NodeConfig { vms: vec![vm("a"), vm("b-1.x_y")] };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn display_names_field() {
        let mut c = NodeConfig { vms: vec![vm("a"), vm("b"), vm("bad name")] };
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "vm[2].name: must be 1 to 32 characters of A-Z a-z 0-9 _ . -");
        c.vms[2].name = "x".repeat(33);
        assert_eq!(c.validate().unwrap_err().field, "vm[2].name");
        c.vms[2].name = "x".repeat(32);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn count_errors() {
        assert_eq!(NodeConfig { vms: vec![] }.validate().unwrap_err().field, "vm");
        let vms = (0..=MAX_VMS).map(|i| vm(&format!("v{i}"))).collect();
        assert_eq!(NodeConfig { vms }.validate().unwrap_err().field, "vm");
        let vms = (0..MAX_VMS).map(|i| vm(&format!("v{i}"))).collect();
        assert_eq!(NodeConfig { vms }.validate(), Ok(()));
    }

    #[test]
    fn duplicate_names() {
        let e = NodeConfig { vms: vec![vm("a"), vm("b"), vm("a")] }.validate().unwrap_err();
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
    fn postcard_round_trip() {
        let mut b = vm("b");
        b.cmdline = "console=ttyS0 quiet".into();
        b.module = Some("initrd".into());
        b.boot = BootProtocol::Multiboot1;
        b.cpu_time_limit_ms = Some(5000);
        b.debug_hypercalls = true;
        let c = NodeConfig { vms: vec![vm("a"), b] };
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
    }

    fn arb_vm() -> impl Strategy<Value = VmConfig> {
        (
            "[A-Za-z0-9_.-]{0,34}",
            0u32..3000,
            ".{0,20}",
            ".{0,40}",
            proptest::option::of(".{0,10}"),
            prop_oneof![Just(BootProtocol::Auto), Just(BootProtocol::Pvh), Just(BootProtocol::Multiboot1)],
            proptest::option::of(0u64..u64::MAX),
            any::<bool>(),
        )
            .prop_map(|(name, memory_mib, kernel, cmdline, module, boot, cpu, dbg)| VmConfig {
                name,
                memory_mib,
                kernel,
                cmdline,
                module,
                boot,
                cpu_time_limit_ms: cpu,
                debug_hypercalls: dbg,
            })
    }

    proptest! {
        #[test]
        fn valid_configs_round_trip(vms in proptest::collection::vec(arb_vm(), 1..6)) {
            let c = NodeConfig { vms };
            if c.validate().is_ok() {
                let bytes = postcard::to_allocvec(&c).unwrap();
                prop_assert_eq!(postcard::from_bytes::<NodeConfig>(&bytes).unwrap(), c);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(c) = postcard::from_bytes::<NodeConfig>(&bytes) {
                let _ = c.validate();
            }
        }
    }
}
