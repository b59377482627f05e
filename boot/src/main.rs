//! `bmimage`: builds BMonitor boot bundles (node config + guest images) and
//! bootable GRUB ISO images, checking everything the hypervisor would check
//! so mistakes surface on the build machine rather than at boot.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use guest_loader::{parse_kernel, plan_boot, ModuleRef, Preference};
use vmm_config::bundle::{self, CONFIG_ENTRY, MAX_ENTRY_NAME_LEN};
use vmm_config::config::NodeConfig;

/// Command line of `bmimage`.
#[derive(Parser, Debug)]
#[command(name = "bmimage", version, about = "Build BMonitor boot bundles and ISO images")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The build steps.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pack a node config (TOML) and its guest images into a boot bundle.
    Bundle {
        /// Node config in TOML (`[[vm]]` tables).
        #[arg(long)]
        config: PathBuf,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
        /// The node's provisioning secret, which seals its disk key store
        /// when the node has no TPM. Created (random, mode 0600) if missing.
        /// Default: `node.secret` beside the config. Only used when a VM
        /// has a disk.
        #[arg(long)]
        seal_secret: Option<PathBuf>,
    },
    /// Make a GRUB-bootable ISO from the hypervisor and a bundle.
    Iso {
        /// The BMonitor ELF (multiboot2).
        #[arg(long)]
        hypervisor: PathBuf,
        /// The boot bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// ISO file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Assemble a tenant Linux image with the guest agent: OUT/vmlinuz and
    /// OUT/initrd.img (the base initramfs plus an overlay with bm-agent,
    /// /etc/bm-role = agent, the services and your files).
    Guest {
        /// The Linux kernel (bzImage), e.g. target/linux/vmlinuz.
        #[arg(long)]
        kernel: PathBuf,
        /// The base initramfs (scripts/linux-guest.sh: target/linux/initramfs.cpio.gz).
        #[arg(long)]
        base_initrd: PathBuf,
        /// The bm-agent binary (static, x86_64-unknown-linux-musl).
        #[arg(long)]
        agent: PathBuf,
        /// A directory copied to the guest's / with its permission bits (repeatable).
        #[arg(long = "files", value_name = "DIR")]
        files: Vec<PathBuf>,
        /// A service bm-agent starts and restarts on failure: 'NAME=CMD ARGS' (repeatable).
        #[arg(long = "service", value_name = "NAME=CMD ARGS")]
        service: Vec<String>,
        /// Sign both images with this Ed25519 seed file (as `bmctl keygen --signing` makes
        /// it): writes OUT/vmlinuz.sig and OUT/initrd.img.sig, as `bmctl tenant sign-image` does.
        #[arg(long, value_name = "KEYFILE")]
        sign_key: Option<PathBuf>,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// A config mistake: printed as `error: FILE: field: reason`, exit code 2.
#[derive(Debug)]
struct ConfigFileError {
    file: PathBuf,
    message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigFileError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Bundle { config, out, seal_secret } => cmd_bundle(&config, &out, seal_secret.as_deref()),
        Cmd::Iso { hypervisor, bundle, out } => cmd_iso(&hypervisor, &bundle, &out),
        Cmd::Guest { kernel, base_initrd, agent, files, service, sign_key, out } => {
            cmd_guest(guest::GuestSpec { kernel, base_initrd, agent, files, services: service, sign_key, out })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigFileError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Parses and validates a node config TOML text; errors name the field.
fn parse_config(text: &str, file: &Path) -> Result<NodeConfig, ConfigFileError> {
    let err = |message: String| ConfigFileError { file: file.to_path_buf(), message };
    let config: NodeConfig = toml::from_str(text).map_err(|e| err(toml_message(text, &e)))?;
    config.validate().map_err(|e| err(e.to_string()))?;
    // The switch policy: tenant rules may not reach outside their cluster.
    let nics = vswitch::config::nic_identities(&config);
    vswitch::config::build_policy(&config, &nics).map_err(err)?;
    Ok(config)
}

/// A one-line TOML error with its position, e.g. "line 4, column 1: unknown field `memroy_mib` ...".
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// One file to put in the bundle, and the config fields that refer to it.
#[derive(Debug, PartialEq, Eq)]
struct PlannedEntry {
    /// Entry name inside the bundle.
    name: String,
    /// Canonical path of the file on the host.
    path: PathBuf,
}

/// Resolves `path` (as written in the config) against the config file's directory.
fn resolve(config_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

/// Assigns bundle entry names to the kernel/module files of `config`'s
/// VMs and to its preloaded images, rewriting those fields to the names.
/// The same file (by canonical path) is stored once; different files
/// sharing a file name get `vm<i>.<field>.<name>` (`image<i>.file.<name>`).
fn assign_entries(config: &mut NodeConfig, config_dir: &Path) -> Result<Vec<PlannedEntry>> {
    let mut entries: Vec<PlannedEntry> = Vec::new();
    let mut by_path: HashMap<PathBuf, String> = HashMap::new();
    let mut assign = |prefix: String, label: String, field: &str, value: &mut String| -> Result<()> {
        let path = resolve(config_dir, value);
        let canonical =
            fs::canonicalize(&path).with_context(|| format!("{label}.{field}: cannot open {}", path.display()))?;
        if let Some(name) = by_path.get(&canonical) {
            *value = name.clone();
            return Ok(());
        }
        let file_name =
            canonical.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| field.to_string());
        let taken = |n: &str| n == CONFIG_ENTRY || n == SEAL_SECRET_ENTRY || entries.iter().any(|e| e.name == n);
        let candidates = [file_name.clone(), format!("{prefix}.{field}.{file_name}"), format!("{prefix}.{field}")];
        let name = candidates
            .into_iter()
            .find(|n| !n.is_empty() && n.len() <= MAX_ENTRY_NAME_LEN && !taken(n))
            .with_context(|| format!("{label}.{field}: cannot find a unique bundle entry name"))?;
        by_path.insert(canonical.clone(), name.clone());
        entries.push(PlannedEntry { name: name.clone(), path: canonical });
        *value = name;
        Ok(())
    };
    for (i, vm) in config.vms.iter_mut().enumerate() {
        let label = format!("vm[{i}] ({})", vm.name);
        let fields = [("kernel", Some(&mut vm.kernel)), ("module", vm.module.as_mut())];
        for (field, value) in fields {
            let Some(value) = value else { continue };
            assign(format!("vm{i}"), label.clone(), field, value)?;
        }
    }
    for (i, img) in config.images.iter_mut().enumerate() {
        let label = format!("image[{i}] ({})", img.name);
        assign(format!("image{i}"), label, "file", &mut img.file)?;
    }
    Ok(entries)
}

/// Checks each preloaded image against what the node would accept from an
/// upload: at most the per-image quota, and a kernel or an initramfs.
fn check_images(config: &NodeConfig, original: &NodeConfig, data: &HashMap<String, Vec<u8>>) -> Result<()> {
    let max = node_logic::StateLimits::DEFAULT.max_image_bytes;
    for (i, (img, host)) in config.images.iter().zip(&original.images).enumerate() {
        let bytes = data.get(&img.file).map(Vec::as_slice).unwrap_or_default();
        let size = bytes.len() as u64;
        if size == 0 {
            bail!("image[{i}].file: {} is empty", host.file);
        }
        if size > max {
            bail!(
                "image[{i}].file: {} is {size} bytes; the node stores images of at most {} MiB each (max_image_bytes)",
                host.file,
                max >> 20
            );
        }
        if parse_kernel(bytes, Preference::Auto).is_err() && guest_loader::initramfs_format(bytes).is_none() {
            bail!("image[{i}].file: {} is neither a kernel the node boots nor an initramfs", host.file);
        }
    }
    Ok(())
}

/// Bundle entry holding the 32-byte provisioning secret.
pub const SEAL_SECRET_ENTRY: &str = "node.secret";

/// Reads the node's provisioning secret, creating it on first use.
fn seal_secret(path: &Path) -> Result<Vec<u8>> {
    if let Ok(bytes) = fs::read(path) {
        if bytes.len() != 32 {
            bail!("{}: a seal secret is exactly 32 bytes, found {}", path.display(), bytes.len());
        }
        return Ok(bytes);
    }
    let mut secret = vec![0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
        .context("cannot read /dev/urandom")?;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("bmimage: created the node seal secret {} (keep it with the node's boot medium)", path.display());
    Ok(secret)
}

/// Builds the bundle bytes for the config at `config_path`; the seal
/// secret (when a VM has a disk) is `secret_path`, else `node.secret`
/// beside the config.
fn build_bundle_with(config_path: &Path, secret_path: Option<&Path>) -> Result<Vec<u8>> {
    let text = fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config = parse_config(&text, config_path)?;
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    let config_dir = if config_dir.as_os_str().is_empty() { Path::new(".") } else { config_dir };
    let original = config.clone();
    let planned = assign_entries(&mut config, config_dir)?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for e in &planned {
        let bytes = fs::read(&e.path).with_context(|| format!("cannot read {}", e.path.display()))?;
        data.insert(e.name.clone(), bytes);
    }
    check_images(&config, &original, &data)?;
    for (i, (vm, host)) in config.vms.iter().zip(&original.vms).enumerate() {
        let kernel = data.get(&vm.kernel).map(Vec::as_slice).unwrap_or_default();
        let image = parse_kernel(kernel, Preference::from(vm.boot)).with_context(|| {
            format!("vm[{i}] ({}): kernel {} ({} boot) does not load", vm.name, host.kernel, vm.boot)
        })?;
        let module = vm
            .module
            .as_ref()
            .map(|name| ModuleRef { name: name.as_str(), data: data.get(name).map(Vec::as_slice).unwrap_or_default() });
        let mem = u64::from(vm.memory_mib) << 20;
        // The layout check only; the hypervisor builds the real firmware description.
        let firmware = guest_loader::Firmware { vcpus: 1, ioapic_id: 1, virtio: Vec::new() };
        plan_boot(&image, mem, &vm.kernel, &vm.cmdline, module, &firmware).with_context(|| {
            format!("vm[{i}] ({}): kernel {} does not fit its {} MiB", vm.name, host.kernel, vm.memory_mib)
        })?;
    }
    config.validate().map_err(|e| ConfigFileError {
        file: config_path.to_path_buf(),
        message: format!("after naming bundle entries: {e}"),
    })?;
    let encoded = postcard::to_allocvec(&config).context("cannot encode the node config")?;
    let mut list: Vec<(&str, &[u8])> = vec![(CONFIG_ENTRY, encoded.as_slice())];
    for e in &planned {
        list.push((e.name.as_str(), data.get(&e.name).map(Vec::as_slice).unwrap_or_default()));
    }
    // VM disks and the management state (with a landlord console) are sealed with it.
    let secret = if config.vms.iter().any(|v| v.disk.is_some()) || config.node.landlord_console_key.is_some() {
        let path = secret_path.map_or_else(|| config_dir.join("node.secret"), Path::to_path_buf);
        Some(seal_secret(&path)?)
    } else {
        None
    };
    if let Some(s) = &secret {
        list.push((SEAL_SECRET_ENTRY, s.as_slice()));
    }
    let bytes = bundle::encode(&list);
    // Read it back exactly as the hypervisor will.
    let parsed = bundle::Bundle::parse(&bytes).context("bundle does not parse back")?;
    parsed.node_config().context("bundle config does not check back")?;
    Ok(bytes)
}

fn cmd_bundle(config: &Path, out: &Path, secret: Option<&Path>) -> Result<()> {
    let bytes = build_bundle_with(config, secret)?;
    fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// The GRUB menu: boot BMonitor at once with the bundle as its module.
const GRUB_CFG: &str = "set timeout=0
set default=0
menuentry \"BMonitor\" {
    multiboot2 /boot/bmonitor.elf
    module2 /boot/node.bundle node.bundle
    boot
}
";

fn cmd_iso(hypervisor: &Path, bundle_path: &Path, out: &Path) -> Result<()> {
    let bytes = fs::read(bundle_path).with_context(|| format!("cannot read {}", bundle_path.display()))?;
    bundle::Bundle::parse(&bytes)
        .and_then(|b| b.node_config())
        .with_context(|| format!("{} is not a valid bundle", bundle_path.display()))?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let grub = dir.path().join("boot/grub");
    fs::create_dir_all(&grub)?;
    fs::write(grub.join("grub.cfg"), GRUB_CFG)?;
    fs::copy(hypervisor, dir.path().join("boot/bmonitor.elf"))
        .with_context(|| format!("cannot read {}", hypervisor.display()))?;
    fs::write(dir.path().join("boot/node.bundle"), &bytes)?;
    let output = match Command::new("grub-mkrescue").arg("-o").arg(out).arg(dir.path()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("grub-mkrescue not found: install grub-pc-bin grub-common xorriso mtools")
        }
        Err(e) => return Err(e).context("cannot run grub-mkrescue"),
    };
    if !output.status.success() {
        bail!("grub-mkrescue failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn cmd_guest(spec: guest::GuestSpec) -> Result<()> {
    let built = guest::build(&spec)?;
    for w in &built.warnings {
        eprintln!("bmimage: warning: {w}");
    }
    println!("overlay: {} entries", built.entries);
    for f in &built.files {
        let len = fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("{} ({len} bytes)", f.display());
    }
    Ok(())
}

mod guest;

#[cfg(test)]
mod tests;
