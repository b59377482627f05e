//! `bmctl facility`: the landlord's facility controller and the commands
//! that change its inventory (docs/fleet.md). The state lives in one file
//! (one controller) or in etcd (several, one leader by election).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use facility::engine::{Controller, ControllerConfig};
use facility::etcd::{Election, EtcdClient, EtcdStore};
use facility::health::HealthConfig;
use facility::model::{Capacity, FacilityState, NodeAddr, Resources, VmPlacementSpec};
use facility::store::{FileStore, Rev, Store, StoreError};
use serde_json::json;

use super::driver::ConsoleDriver;
use crate::profile::Config;

/// `bmctl facility`.
#[derive(Debug, clap::Args)]
pub struct FacilityArgs {
    /// The facility's state in one crash-safe file (one controller).
    #[arg(long, value_name = "FILE", conflicts_with = "etcd", env = "BM_FACILITY_STORE")]
    pub store: Option<PathBuf>,
    /// etcd client URLs, comma-separated: the state in etcd, one controller
    /// leading by election, the others taking over when it dies.
    #[arg(long, value_name = "URL,...", value_delimiter = ',', env = "BM_FACILITY_ETCD")]
    pub etcd: Vec<String>,
    /// Key of the state in etcd (the leader key is KEY/leader).
    #[arg(long, value_name = "KEY", default_value = "/bmonitor/facility")]
    pub etcd_key: String,
    /// Landlord console key (its name under keys/), registered on every node.
    #[arg(long, value_name = "NAME", default_value = "landlord")]
    pub key: String,
    /// Directory holding the image files VMs name (uploaded to nodes that lack them).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub images: PathBuf,
    /// Heartbeat period.
    #[arg(long, value_name = "MS", default_value = "1000")]
    pub interval_ms: u64,
    /// Failed heartbeats in a row before the probe decides a node is dead.
    #[arg(long, default_value = "5")]
    pub misses: u32,
    /// Bound on the probe (a TCP connect to the management port).
    #[arg(long, value_name = "MS", default_value = "1000")]
    pub probe_timeout_ms: u64,
    /// The fencing lease each heartbeat grants: a node that hears nothing
    /// for this long stops its protected VMs itself.
    #[arg(long, value_name = "MS", default_value = "3000")]
    pub fence_after_ms: u32,
    /// Margin between a node fencing itself and the controller acting.
    #[arg(long, value_name = "MS", default_value = "1000")]
    pub margin_ms: u64,
    /// Bound on each call to a node (connect, each answer): a dead node
    /// costs the controller this much per call.
    #[arg(long, value_name = "MS", default_value = "3000")]
    pub call_timeout_ms: u64,
    /// The command.
    #[command(subcommand)]
    pub cmd: FacilityCmd,
}

/// `bmctl facility` commands.
#[derive(Debug, clap::Subcommand)]
pub enum FacilityCmd {
    /// Reserve a node's address with the facility's DHCP server (dnsmasq
    /// hosts file, `MAC,IP,NAME` lines; SIGHUP to the pid in --dnsmasq-pid).
    Reserve {
        /// Node name.
        name: String,
        /// The node's NIC MAC.
        #[arg(long)]
        mac: String,
        /// The address it gets.
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        /// dnsmasq's --dhcp-hostsfile.
        #[arg(long, value_name = "FILE")]
        hosts: PathBuf,
        /// dnsmasq's pid file (it re-reads the hosts file on SIGHUP).
        #[arg(long, value_name = "FILE")]
        dnsmasq_pid: Option<PathBuf>,
    },
    /// Nodes: enrol, drain, remove.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Place a VM on the facility.
    #[command(subcommand)]
    Vm(FacilityVmCmd),
    /// Lease a cluster to a tenant on every active node (made where
    /// missing) and print, per node, what the tenant needs: the lease, the
    /// tenant node key U_T its console authenticates, and the node's
    /// landlord key U_L (to approve the node as a replica partner:
    /// `bmctl tenant replica-partners`).
    Lease {
        /// The tenant console's public key.
        #[arg(long)]
        tenant_key: String,
        /// Cluster number.
        #[arg(long)]
        cluster: u32,
    },
    /// The inventory, placements, epochs and unfinished work.
    Status,
    /// A new operator signing key (ed25519) in FILE, mode 0600; prints the
    /// public key for runbook allow-lists.
    OperatorKey {
        /// The operator's name.
        name: String,
        /// Where the secret key goes (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Disaster-recovery runbooks (docs/runbooks.md).
    #[command(subcommand)]
    Runbook(RunbookCmd),
    /// Run a service's runbook: migrate, takeover or failback. Gates are
    /// checked by the controller before any node is told anything; the
    /// steps are followed live. Exit 0 succeeded, 1 failed, 2 refused,
    /// 3 not finished within --wait.
    Run {
        /// The service (protected VM).
        service: String,
        /// migrate, takeover or failback.
        action: String,
        /// Run parameter KEY=VALUE (migrate, takeover: to=NODE).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Your name on the runbook's allow-list.
        #[arg(long)]
        operator: String,
        /// Your signing key (bmctl facility operator-key).
        #[arg(long, value_name = "FILE")]
        operator_key: PathBuf,
        /// Follow for at most this long.
        #[arg(long, value_name = "SECS", default_value = "600")]
        wait: u64,
    },
    /// Runbook runs, or one run's step log.
    Runs {
        /// The run.
        id: Option<u64>,
    },
    /// Services with update domains and versions; rolling upgrades.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// The facility's audit log: runs, refusals, upgrades.
    Audit,
    /// Run the controller: heartbeats, detection, healing, replication,
    /// filters. Prints one line per event. With --etcd, campaigns for
    /// leadership and acts only while leading.
    Serve {
        /// Stop after this many seconds (exit 0).
        #[arg(long = "for", value_name = "SECS")]
        run_for: Option<u64>,
        /// This controller's name in the election.
        #[arg(long, default_value = "controller")]
        id: String,
        /// Leader lease TTL in seconds (etcd).
        #[arg(long, default_value = "3")]
        leader_ttl: u64,
        /// Fault injection for tests: exit at once (as a crash: no
        /// resignation, state as saved) after this many steps of healing a
        /// dead node's VMs.
        #[arg(long, value_name = "N", hide = true)]
        crash_after_steps: Option<u64>,
        /// Serve the live dashboard on ADDR (HOST:PORT): `/` and `/api/facility`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
}

/// `bmctl facility runbook`.
#[derive(Debug, clap::Subcommand)]
pub enum RunbookCmd {
    /// Store a service's runbooks from a JSON document (checked against the schema).
    Set {
        /// The document.
        file: PathBuf,
        /// Who stores it (for the audit log).
        #[arg(long, default_value = "landlord")]
        operator: String,
    },
    /// Print a service's runbooks.
    Show {
        /// The service.
        service: String,
    },
    /// Print the published JSON schema of runbook documents.
    Schema,
}

/// What one version of a service boots.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Its kernel image (a file in --images).
    #[arg(long)]
    image: String,
    /// Its initrd (a file in --images).
    #[arg(long)]
    initrd: Option<String>,
    /// Its kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
}

impl BootArgs {
    fn boot(self) -> facility::driver::BootImage {
        facility::driver::BootImage { image: self.image, initrd: self.initrd, cmdline: self.cmdline }
    }
}

/// `bmctl facility service`.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCmd {
    /// Define a service with its first version.
    #[command(disable_version_flag = true)]
    Define {
        /// Service name.
        name: String,
        /// The first version's name.
        #[arg(long)]
        version: String,
        /// What it boots.
        #[command(flatten)]
        boot: BootArgs,
        /// An agent service that must be up for a VM to count healthy (repeatable).
        #[arg(long = "check", value_name = "SERVICE")]
        checks: Vec<String>,
    },
    /// Add a version a rollout can go to.
    #[command(disable_version_flag = true)]
    AddVersion {
        /// Service name.
        name: String,
        /// The version's name.
        version: String,
        /// What it boots.
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Rolling upgrade to a version, one update domain at a time; follows it.
    Upgrade {
        /// Service name.
        name: String,
        /// The version to go to.
        #[arg(long)]
        to: String,
        /// Bound on a domain becoming healthy.
        #[arg(long, value_name = "SECS", default_value = "120")]
        health_timeout: u32,
        /// Follow for at most this long (0: start it and return).
        #[arg(long, value_name = "SECS", default_value = "1800")]
        wait: u64,
        /// Who asks (for the audit log).
        #[arg(long, default_value = "landlord")]
        operator: String,
    },
    /// Upgrade one domain by hand; refused while a VM of the service is
    /// being healed unless --force (which is audited).
    UpgradeDomain {
        /// Service name.
        name: String,
        /// The domain.
        #[arg(long)]
        domain: u32,
        /// The version.
        #[arg(long)]
        to: String,
        /// Upgrade even during healing.
        #[arg(long)]
        force: bool,
        /// Who asks (for the audit log).
        #[arg(long, default_value = "landlord")]
        operator: String,
    },
    /// The service's VMs, their domains and versions, its rollout.
    Status {
        /// Service name.
        name: String,
    },
}

/// `bmctl facility node`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCmd {
    /// Enrol a node: its address and landlord node key (U_L, from its log);
    /// capacity from its heartbeat unless given.
    Add {
        /// Node name.
        name: String,
        /// Management address, HOST:PORT (port 7700).
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The node's landlord node key (64 hex digits).
        #[arg(long)]
        node_key: String,
        /// vCPUs guests may use (default: its CPUs).
        #[arg(long)]
        vcpus: Option<u64>,
        /// Memory guests may use in MiB (default: its free memory).
        #[arg(long)]
        memory: Option<u64>,
        /// Disk for volumes and replicas in MiB (default: its free disk).
        #[arg(long)]
        disk: Option<u64>,
    },
    /// Move every VM away (not healed: copied while running, then switched).
    Drain {
        /// Node name.
        name: String,
    },
    /// Remove an empty node from the inventory.
    Remove {
        /// Node name.
        name: String,
    },
}

/// `bmctl facility vm`.
#[derive(Debug, clap::Subcommand)]
pub enum FacilityVmCmd {
    /// Place, create and start a VM (protected: with a replica on a partner).
    Create {
        /// VM name, unique in the facility.
        name: String,
        /// Tenant name (for people).
        #[arg(long)]
        tenant: String,
        /// The tenant console's public key (leases are made for it).
        #[arg(long)]
        tenant_key: String,
        /// Cluster number (the nodes' [[cluster]] order).
        #[arg(long)]
        cluster: u32,
        /// Image file name in --images (from the service's version with --service).
        #[arg(long, required_unless_present = "service")]
        image: Option<String>,
        /// Initrd file name in --images.
        #[arg(long)]
        initrd: Option<String>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Guest memory in MiB.
        #[arg(long)]
        memory: u32,
        /// vCPUs.
        #[arg(long, default_value = "1")]
        vcpus: u8,
        /// Disk in MiB (0: none).
        #[arg(long, default_value = "0")]
        disk: u32,
        /// NIC address in its cluster.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// NIC MAC (default: derived from the name, locally administered).
        #[arg(long)]
        mac: Option<String>,
        /// Keep a replica of its disk on a partner node; heal from it.
        #[arg(long)]
        protected: bool,
        /// Put it on this node (default: where placement chooses).
        #[arg(long, value_name = "NODE")]
        on: Option<String>,
        /// The service it belongs to (its image is the version its domain calls for).
        #[arg(long, requires = "domain")]
        service: Option<String>,
        /// Its update domain in the service.
        #[arg(long, requires = "service")]
        domain: Option<u32>,
    },
}

/// Either store, so one controller type serves both.
enum AnyStore {
    File(FileStore),
    Etcd(EtcdStore),
}

impl Store for AnyStore {
    fn load(&self) -> Result<(FacilityState, Rev), StoreError> {
        match self {
            AnyStore::File(s) => s.load(),
            AnyStore::Etcd(s) => s.load(),
        }
    }

    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError> {
        match self {
            AnyStore::File(s) => s.save(st, expect),
            AnyStore::Etcd(s) => s.save(st, expect),
        }
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("mac: six hex bytes separated by ':' (e.g. 02:00:00:00:00:01)");
    }
    for (m, p) in mac.iter_mut().zip(&parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| anyhow!("mac: {p:?} is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("mac: must be unicast (lowest bit of the first byte clear)");
    }
    Ok(mac)
}

/// A locally administered MAC derived from the VM name (stable across
/// controllers, so a re-run of the same create names the same MAC).
fn mac_of(name: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.as_bytes());
    let mut mac = [0x02, 0x4d, 0, 0, 0, 0];
    for (m, b) in mac.iter_mut().skip(2).zip(d.iter()) {
        *m = *b;
    }
    mac
}

/// Writes `MAC,IP,NAME` into dnsmasq's hosts file (replacing lines with the
/// same MAC, IP or name), atomically, and SIGHUPs dnsmasq.
fn reserve(hosts: &Path, pid: Option<&Path>, name: &str, mac: &str, ip: std::net::Ipv4Addr) -> Result<()> {
    let mac = mac.to_lowercase();
    parse_mac(&mac)?;
    if !vmm_config::text::valid_name(name) {
        bail!("name: {}", vmm_config::text::NAME_RULE);
    }
    let ip_s = ip.to_string();
    let old = std::fs::read_to_string(hosts).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            !(f.first() == Some(&mac.as_str()) || f.get(1) == Some(&ip_s.as_str()) || f.get(2) == Some(&name))
        })
        .map(str::to_string)
        .collect();
    lines.push(format!("{mac},{ip_s},{name}"));
    let tmp = hosts.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, hosts).with_context(|| format!("replacing {}", hosts.display()))?;
    if let Some(pid) = pid {
        let text = std::fs::read_to_string(pid).with_context(|| format!("reading {}", pid.display()))?;
        let pid: i32 = text.trim().parse().with_context(|| format!("{}: not a pid", pid.display()))?;
        // SAFETY: kill(2) with a pid read from dnsmasq's own pid file and
        // SIGHUP, which dnsmasq handles by re-reading its hosts files.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            bail!("cannot signal dnsmasq (pid {pid}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `bmctl facility`.
pub fn run(cfg: &Config, timeout: Duration, json_out: bool, a: FacilityArgs) -> Result<()> {
    if let FacilityCmd::Reserve { name, mac, ip, hosts, dnsmasq_pid } = &a.cmd {
        reserve(hosts, dnsmasq_pid.as_deref(), name, mac, *ip)?;
        println!("reserved {ip} for {name} ({mac})");
        return Ok(());
    }
    // Commands that need neither the landlord key nor the store.
    match &a.cmd {
        FacilityCmd::OperatorKey { name, out } => return super::ops::operator_key(name, out),
        FacilityCmd::Runbook(RunbookCmd::Schema) => {
            print!("{}", facility::runbook::SCHEMA);
            return Ok(());
        }
        _ => {}
    }
    let health = HealthConfig {
        interval: Duration::from_millis(a.interval_ms),
        misses: a.misses,
        probe_timeout: Duration::from_millis(a.probe_timeout_ms),
        fence_after: Duration::from_millis(u64::from(a.fence_after_ms)),
        margin: Duration::from_millis(a.margin_ms),
    };
    let ccfg = ControllerConfig { health, ..ControllerConfig::default() };
    let secret = cfg.load_key(&a.key)?.secret;
    let _ = timeout;
    let call_timeout = Duration::from_millis(a.call_timeout_ms.max(100));
    let connect_timeout = Duration::from_millis(a.interval_ms.max(100));
    let driver = ConsoleDriver::new(secret.clone(), call_timeout, connect_timeout, a.images.clone(), a.fence_after_ms);
    let etcd = (!a.etcd.is_empty()).then(|| EtcdClient::new(&a.etcd, timeout));
    let store = match (&a.store, &etcd) {
        (Some(path), None) => AnyStore::File(FileStore::new(path)),
        (None, Some(client)) => AnyStore::Etcd(EtcdStore::new(client.clone(), a.etcd_key.clone())),
        _ => bail!("name the facility's state: --store FILE or --etcd URL,..."),
    };
    // Its own sessions: renewals never queue behind the controller's calls.
    let keeper = ConsoleDriver::new(secret, call_timeout, connect_timeout, a.images.clone(), a.fence_after_ms);
    let mut c = Controller::new(driver, store, ccfg).map_err(|e| anyhow!("{e}"))?;
    match a.cmd {
        FacilityCmd::Reserve { .. } => Ok(()),
        FacilityCmd::Node(NodeCmd::Add { name, addr, node_key, vcpus, memory, disk }) => {
            let capacity = match (vcpus, memory, disk) {
                (None, None, None) => None,
                (Some(v), Some(m), Some(d)) => Some(Capacity { vcpus: v, memory_mib: m, disk_mib: d }),
                _ => bail!("capacity: give all of --vcpus, --memory and --disk, or none"),
            };
            let addr = NodeAddr { name: name.clone(), addr, node_key: node_key.trim().to_lowercase() };
            retry_conflicts(&mut c, |c| c.add_node(addr.clone(), capacity))?;
            print_events(&c, 0, json_out);
            Ok(())
        }
        FacilityCmd::Node(NodeCmd::Drain { name }) => {
            // Plan only: the running controller (`serve`) carries the moves
            // out, so two processes never copy one disk at once.
            c.set_step_limit(Some(0));
            let n = retry_conflicts(&mut c, |c| c.drain_node(&name))?;
            println!("draining {name}: {n} VM(s) to move (the controller moves them)");
            Ok(())
        }
        FacilityCmd::Node(NodeCmd::Remove { name }) => {
            retry_conflicts(&mut c, |c| c.remove_node(&name))?;
            println!("node {name} removed");
            Ok(())
        }
        FacilityCmd::Vm(FacilityVmCmd::Create {
            name,
            tenant,
            tenant_key,
            cluster,
            image,
            initrd,
            cmdline,
            memory,
            vcpus,
            disk,
            ip,
            mac,
            protected,
            on,
            service,
            domain,
        }) => {
            if mgmt_proto::PublicKey::from_hex(tenant_key.trim()).is_none() {
                bail!("tenant-key: 64 hex digits (the tenant's `bmctl keygen` output)");
            }
            let mac = match mac {
                Some(m) => parse_mac(&m)?,
                None => mac_of(&name),
            };
            let (version, boot) = match (&service, domain) {
                (Some(svc), Some(d)) => {
                    let (v, b) = c.service_image(svc, d).map_err(|e| anyhow!("{e}"))?;
                    (Some(v), b)
                }
                _ => (
                    None,
                    facility::driver::BootImage {
                        image: image.clone().unwrap_or_default(),
                        initrd: initrd.clone(),
                        cmdline: cmdline.clone(),
                    },
                ),
            };
            let spec = VmPlacementSpec {
                name: name.clone(),
                tenant,
                tenant_console_key: tenant_key.trim().to_lowercase(),
                cluster,
                res: Resources { vcpus, memory_mib: memory, disk_mib: disk },
                image: boot.image,
                initrd: boot.initrd,
                cmdline: boot.cmdline,
                ip: ip.map(|i| i.octets()),
                mac,
                protected,
                service,
                domain,
                version,
            };
            // Record the placement only: the running controller (`serve`)
            // carries the creation out, so two processes never work on one
            // node for one VM (uploads, copies) at once. A conflict after our
            // save leaves the VM recorded: then it is ours, not a second one.
            c.set_step_limit(Some(0));
            let mut attempted = false;
            let node = retry_conflicts(&mut c, |c| {
                if attempted {
                    if let Some(v) = c.state().vms.get(&name) {
                        return Ok(v.node.clone());
                    }
                }
                attempted = true;
                match c.create_vm_on(spec.clone(), on.as_deref()) {
                    Err(facility::engine::ControlError::Halted) => {
                        Ok(c.state().vms.get(&name).map(|v| v.node.clone()).unwrap_or_default())
                    }
                    r => r,
                }
            })?;
            // Wait for the controller to finish it.
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                c.refresh().map_err(|e| anyhow!("{e}"))?;
                if !c.state().intents.iter().any(|i| i.vm == name) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "VM {name} is placed on {node}; the facility controller has not finished creating it \
                         within 180 s (is `bmctl facility serve` running? `bmctl facility status` shows the step)"
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            print_events(&c, 0, json_out);
            if json_out {
                println!("{}", json!({"vm": name, "node": node}));
            } else {
                println!("vm {name} running on {node}");
            }
            Ok(())
        }
        FacilityCmd::Lease { tenant_key, cluster } => {
            let nodes: Vec<NodeAddr> = c
                .state()
                .nodes
                .values()
                .filter(|r| r.state == facility::model::NodeState::Active)
                .map(|r| r.addr.clone())
                .collect();
            for n in nodes {
                let l = c
                    .driver()
                    .ensure_lease(&n, tenant_key.trim(), cluster)
                    .map_err(|e| anyhow!("node {}: {e}", n.name))?;
                if json_out {
                    println!(
                        "{}",
                        json!({"node": n.name, "addr": n.addr.to_string(), "lease": l.lease.0,
                               "tenant_node_key": l.node_key.to_hex(), "node_key": n.node_key})
                    );
                } else {
                    println!(
                        "{} {} lease {} tenant-node-key {} node-key {}",
                        n.name,
                        n.addr,
                        l.lease.0,
                        l.node_key.to_hex(),
                        n.node_key
                    );
                }
            }
            Ok(())
        }
        FacilityCmd::Status => {
            let st = c.state();
            if json_out {
                println!("{}", serde_json::to_string_pretty(st)?);
                return Ok(());
            }
            for (n, r) in &st.nodes {
                println!("node {n} {} {:?} capacity {:?}", r.addr.addr, r.state, r.capacity);
            }
            for (n, v) in &st.vms {
                println!(
                    "vm {n} on {} partner {} instance {} epoch {} {:?}",
                    v.node,
                    v.partner.as_deref().unwrap_or("-"),
                    v.instance,
                    v.epoch,
                    v.state
                );
            }
            for i in &st.intents {
                println!(
                    "intent #{} {:?} {} -> {} epoch {} step {}/{}",
                    i.id,
                    i.kind,
                    i.vm,
                    i.to,
                    i.epoch,
                    i.done,
                    i.steps.len()
                );
            }
            Ok(())
        }
        FacilityCmd::OperatorKey { .. } | FacilityCmd::Runbook(RunbookCmd::Schema) => Ok(()),
        FacilityCmd::Runbook(RunbookCmd::Set { file, operator }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let what = retry_conflicts(&mut c, |c| c.set_runbook(&text, &operator))?;
            println!("{what}");
            Ok(())
        }
        FacilityCmd::Runbook(RunbookCmd::Show { service }) => {
            let doc = c.state().runbooks.get(&service).ok_or_else(|| anyhow!("{service} has no runbooks"))?;
            println!("{}", serde_json::to_string_pretty(doc)?);
            Ok(())
        }
        FacilityCmd::Run { service, action, params, operator, operator_key, wait } => {
            let args = super::ops::RunArgs {
                service: &service,
                action: &action,
                params: &params,
                operator: &operator,
                key: &operator_key,
                wait: Duration::from_secs(wait),
            };
            let code = super::ops::run(&mut c, &args, json_out, |c, req, sig| {
                retry_conflicts(c, |c| c.request_run(req.clone(), sig.to_string()))
            })?;
            exit_with(code)
        }
        FacilityCmd::Runs { id } => super::ops::runs(c.state(), id, json_out),
        FacilityCmd::Audit => super::ops::audit(c.state(), json_out),
        FacilityCmd::Service(ServiceCmd::Define { name, version, boot, checks }) => {
            let boot = boot.boot();
            retry_conflicts(&mut c, |c| c.define_service(&name, &version, boot.clone(), checks.clone()))?;
            println!("service {name} defined at version {version}");
            Ok(())
        }
        FacilityCmd::Service(ServiceCmd::AddVersion { name, version, boot }) => {
            let boot = boot.boot();
            retry_conflicts(&mut c, |c| c.add_version(&name, &version, boot.clone()))?;
            println!("service {name}: version {version} added");
            Ok(())
        }
        FacilityCmd::Service(ServiceCmd::Upgrade { name, to, health_timeout, wait, operator }) => {
            retry_conflicts(&mut c, |c| c.start_rollout(&name, &to, health_timeout, &operator))?;
            if wait == 0 {
                println!("rollout of {name} to {to} started");
                return Ok(());
            }
            let code = super::ops::follow_rollout(&mut c, &name, Duration::from_secs(wait), json_out)?;
            exit_with(code)
        }
        FacilityCmd::Service(ServiceCmd::UpgradeDomain { name, domain, to, force, operator }) => {
            match retry_conflicts(&mut c, |c| c.upgrade_domain(&name, domain, &to, force, &operator)) {
                Ok(n) => {
                    println!(
                        "service {name} domain {domain}: {n} VM(s) to upgrade to {to}{}",
                        if force { " (forced, audited)" } else { "" }
                    );
                    Ok(())
                }
                Err(e) if e.to_string().starts_with("refused") => {
                    println!("service {name} domain {domain}: {e}");
                    exit_with(super::ops::EXIT_REFUSED)
                }
                Err(e) => Err(e),
            }
        }
        FacilityCmd::Service(ServiceCmd::Status { name }) => super::ops::service_status(c.state(), &name, json_out),
        FacilityCmd::Serve { run_for, id, leader_ttl, crash_after_steps, listen } => {
            c.set_heal_step_limit(crash_after_steps);
            let dashboard = match listen {
                Some(addr) => {
                    let pages = std::sync::Arc::new(super::dashboard::FacilityPages::new());
                    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let srv = super::dashboard::start(&addr, pages.clone(), stop.clone())
                        .with_context(|| format!("dashboard: cannot listen on {addr}"))?;
                    println!("facility: dashboard on http://{}/", srv.addr);
                    Some((pages, stop, srv))
                }
                None => None,
            };
            let election = etcd.map(|client| {
                std::sync::Arc::new(std::sync::Mutex::new(Election::new(
                    client,
                    format!("{}/leader", a.etcd_key),
                    id,
                    leader_ttl,
                )))
            });
            let period =
                Duration::from_millis(a.interval_ms).min(Duration::from_millis(u64::from(a.fence_after_ms) / 3));
            let ttl = Duration::from_secs(leader_ttl.max(1));
            let pages = dashboard.as_ref().map(|(p, _, _)| p.clone());
            let r = serve(
                &mut c,
                election,
                ttl,
                keeper,
                period,
                Duration::from_millis(a.interval_ms),
                run_for,
                json_out,
                pages,
            );
            if let Some((_, stop, srv)) = dashboard {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                srv.join();
            }
            r
        }
    }
}

/// Runs an operation on the facility, again from a fresh read when another
/// controller wrote the store in between (the running `serve` saves as it
/// works): an operator's command is never lost to a race, never applied twice.
fn retry_conflicts<D: facility::driver::NodeDriver, S: Store, T>(
    c: &mut Controller<D, S>,
    mut op: impl FnMut(&mut Controller<D, S>) -> Result<T, facility::engine::ControlError>,
) -> Result<T> {
    for _ in 0..20 {
        match op(c) {
            Err(facility::engine::ControlError::Store(StoreError::Conflict { .. })) => {
                c.reload().map_err(|e| anyhow!("{e}"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r.map_err(|e| anyhow!("{e}")),
        }
    }
    bail!("the facility's store kept changing under this command (20 conflicts); retry")
}

fn print_events<D: facility::driver::NodeDriver, S: Store>(c: &Controller<D, S>, from: usize, json_out: bool) -> usize {
    let events = c.events();
    let mut out = std::io::stdout().lock();
    for e in events.iter().skip(from) {
        if json_out {
            let _ = writeln!(out, "{}", json!({"at_ms": e.at.as_millis() as u64, "event": e.text}));
        } else {
            let _ = writeln!(out, "{e}");
        }
    }
    let _ = out.flush();
    events.len()
}

/// The controller loop: a tick per interval (as leader, with etcd), events
/// printed as they happen, replication lag every 5 s.
#[allow(clippy::too_many_arguments)]
fn serve<S: Store>(
    c: &mut Controller<ConsoleDriver, S>,
    election: Option<std::sync::Arc<std::sync::Mutex<Election>>>,
    leader_ttl: Duration,
    keeper: ConsoleDriver,
    lease_period: Duration,
    interval: Duration,
    run_for: Option<u64>,
    json_out: bool,
    pages: Option<std::sync::Arc<super::dashboard::FacilityPages>>,
) -> Result<()> {
    crate::watch::handle_stop_signals();
    let leased: std::sync::Arc<std::sync::Mutex<Vec<NodeAddr>>> = Default::default();
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keepers = lease_keepers(keeper, leased.clone(), stopping.clone(), lease_period);
    // The leader's lease is kept alive apart from the rounds too: a long
    // round must not hand the facility to another controller.
    let elector = election.clone().map(|e| {
        let stop = stopping.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && !crate::watch::stop_signalled() {
                {
                    let mut g = e.lock().unwrap_or_else(|p| p.into_inner());
                    if g.is_leader() {
                        g.keepalive();
                    }
                }
                std::thread::sleep(leader_ttl / 4);
            }
        })
    });
    let mut was_leader = false;
    let start = Instant::now();
    let mut printed = print_events(c, 0, json_out);
    let mut last_lag = Instant::now();
    while !crate::watch::stop_signalled() {
        if run_for.is_some_and(|s| start.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        let t0 = Instant::now();
        // Leadership: campaign when not leading; a new leader reloads the
        // state and so finishes what its predecessor left.
        let leading = match &election {
            None => true,
            Some(e) => {
                let mut g = lock_election(e);
                if g.is_leader() {
                    true
                } else {
                    match g.campaign() {
                        Ok(true) => {
                            drop(g);
                            if let Err(err) = c.reload() {
                                eprintln!("facility: reading the store failed: {err}");
                            }
                            let n = c.state().intents.len();
                            println!("facility: became leader: {n} unfinished intents");
                            true
                        }
                        Ok(false) => false,
                        Err(err) => {
                            eprintln!("facility: campaign failed: {err}");
                            false
                        }
                    }
                }
            }
        };
        if was_leader && !leading {
            println!("facility: lost the leader lease: stepped down");
        }
        was_leader = leading;
        // An operator's command may have written the store meanwhile.
        if leading {
            if let Err(e) = c.refresh() {
                eprintln!("facility: reading the store failed: {e}");
            }
        }
        // Leases are renewed only by the leader, for the nodes it keeps.
        let live: Vec<NodeAddr> = if leading {
            c.state()
                .nodes
                .values()
                .filter(|r| {
                    matches!(r.state, facility::model::NodeState::Active | facility::model::NodeState::Draining)
                })
                .map(|r| r.addr.clone())
                .collect()
        } else {
            Vec::new()
        };
        *leased.lock().unwrap_or_else(|p| p.into_inner()) = live;
        if leading {
            match c.tick(t0) {
                Ok(_) => {}
                Err(facility::engine::ControlError::Halted) => {
                    print_events(c, printed, json_out);
                    println!("facility: crashing on purpose (--crash-after-steps)");
                    std::process::exit(3);
                }
                Err(e) => eprintln!("facility: round failed: {e}"),
            }
        }
        printed = print_events(c, printed, json_out);
        if let Some(p) = &pages {
            p.publish(published_state(c, leading));
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            for (vm, lag) in c.lag() {
                let age = lag.age(Instant::now()).as_millis();
                let line = format!("replication lag {vm}: {} block(s) pending, oldest {age}ms", lag.blocks_pending);
                if json_out {
                    println!("{}", json!({"lag": vm, "blocks_pending": lag.blocks_pending, "age_ms": age as u64}));
                } else {
                    println!("{line}");
                }
            }
        }
        let spent = t0.elapsed();
        if spent < interval {
            std::thread::sleep(interval - spent);
        }
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = keepers.join();
    if let Some(h) = elector {
        let _ = h.join();
    }
    if let Some(e) = &election {
        let _ = lock_election(e).resign();
    }
    Ok(())
}

/// What the dashboard shows: the stored state, the newest controller
/// events, and whether this controller leads.
fn published_state<D: facility::driver::NodeDriver, S: Store>(
    c: &Controller<D, S>,
    leading: bool,
) -> serde_json::Value {
    let mut v = serde_json::to_value(c.state()).unwrap_or_default();
    let events: Vec<String> = c.events().iter().rev().take(200).rev().map(|e| e.to_string()).collect();
    if let Some(m) = v.as_object_mut() {
        m.insert("events".into(), json!(events));
        m.insert("leading".into(), json!(leading));
    }
    v
}

/// Ends the process with `code` after flushing what was printed.
fn exit_with(code: u8) -> Result<()> {
    let _ = std::io::stdout().flush();
    if code == 0 {
        return Ok(());
    }
    std::process::exit(i32::from(code));
}

fn lock_election(e: &std::sync::Mutex<Election>) -> std::sync::MutexGuard<'_, Election> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renews the fencing lease of every node in `nodes` each `period`, one
/// thread per node, apart from the controller's rounds: a long round
/// (a big replica copy) must not make healthy nodes stop their protected
/// VMs. A node that cannot be reached misses its renewals, as it should.
fn lease_keepers(
    driver: ConsoleDriver,
    nodes: std::sync::Arc<std::sync::Mutex<Vec<NodeAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    period: Duration,
) -> std::thread::JoinHandle<()> {
    use facility::driver::NodeDriver;
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut running: std::collections::HashMap<String, std::thread::JoinHandle<()>> = Default::default();
        while !stop.load(Ordering::Relaxed) && !crate::watch::stop_signalled() {
            let want = nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
            running.retain(|_, h| !h.is_finished());
            for addr in want {
                if running.contains_key(&addr.name) {
                    continue;
                }
                let (d, nodes, stop) = (driver.clone(), nodes.clone(), stop.clone());
                let name = addr.name.clone();
                let h = std::thread::spawn(move || loop {
                    let still = nodes.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n == &addr);
                    if !still || stop.load(Ordering::Relaxed) || crate::watch::stop_signalled() {
                        return;
                    }
                    let t0 = Instant::now();
                    let _ = d.status(&addr);
                    std::thread::sleep(period.saturating_sub(t0.elapsed()));
                });
                running.insert(name, h);
            }
            std::thread::sleep(period / 2);
        }
        for (_, h) in running {
            let _ = h.join();
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly_and_derived_ones_are_unicast_and_stable() {
        assert_eq!(parse_mac("02:00:00:00:00:1a").unwrap(), [2, 0, 0, 0, 0, 0x1a]);
        for bad in ["01:00:00:00:00:01", "02:00:00:00:00", "02:00:00:00:00:zz", "02-00-00-00-00-01"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(mac_of("db"), mac_of("db"));
        assert_ne!(mac_of("db"), mac_of("web"));
        assert_eq!(mac_of("db")[0] & 1, 0);
        assert_eq!(mac_of("db")[0] & 2, 2, "locally administered");
    }

    #[test]
    fn a_reservation_replaces_lines_of_the_same_mac_ip_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "52:54:00:77:00:01,10.77.0.11,n1\n52:54:00:77:00:02,10.77.0.12,n2\n").unwrap();
        reserve(&hosts, None, "n1", "52:54:00:77:00:09", "10.77.0.19".parse().unwrap()).unwrap();
        reserve(&hosts, None, "n3", "52:54:00:77:00:03", "10.77.0.12".parse().unwrap()).unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert_eq!(text, "52:54:00:77:00:09,10.77.0.19,n1\n52:54:00:77:00:03,10.77.0.12,n3\n");
        assert!(reserve(&hosts, None, "bad name!", "52:54:00:77:00:04", "10.77.0.14".parse().unwrap()).is_err());
        assert!(reserve(&hosts, None, "n4", "01:54:00:77:00:04", "10.77.0.14".parse().unwrap()).is_err());
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), text, "a refused reservation changes nothing");
    }
}
