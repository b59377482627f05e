//! Connection profiles and console keys on disk.
//!
//! Layout of the config directory (`$XDG_CONFIG_HOME/bmctl`, or
//! `~/.config/bmctl`, or `--config-dir`):
//!
//! - `profiles/NAME.json`: node address, node public key, role, key name;
//! - `keys/NAME.x25519`: a console static private key (hex), mode 0600;
//! - `keys/NAME.ed25519`: an image signing seed (hex), mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use mgmt_proto::crypto::{from_hex32, to_hex};
use mgmt_proto::{Entropy, KeyPair, LeaseId, PublicKey, Role, SecretKey};
use serde::{Deserialize, Serialize};

/// Entropy from the operating system, for console keys and sessions.
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), mgmt_proto::EntropyError> {
        getrandom::fill(dest).map_err(|_| mgmt_proto::EntropyError)
    }
}

/// Where the node is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddr {
    /// `host:port` over TCP.
    Tcp(String),
    /// A serial device path (`serial:/dev/ttyS0`), configured beforehand
    /// (e.g. with `stty`).
    Serial(PathBuf),
}

impl NodeAddr {
    /// Parses `host:port` or `serial:/path`, so one string names either
    /// transport.
    pub fn parse(s: &str) -> Result<NodeAddr> {
        if let Some(p) = s.strip_prefix("serial:") {
            if p.is_empty() {
                bail!("node address {s:?}: serial path is empty");
            }
            return Ok(NodeAddr::Serial(PathBuf::from(p)));
        }
        if !s.contains(':') {
            bail!("node address {s:?}: expected host:port or serial:/dev/...");
        }
        Ok(NodeAddr::Tcp(s.to_string()))
    }
}

/// Parses `landlord` or `tenant:LEASE`.
pub fn parse_role(s: &str) -> Result<Role> {
    if s == "landlord" {
        return Ok(Role::Landlord);
    }
    if let Some(n) = s.strip_prefix("tenant:") {
        let id: u32 = n.parse().with_context(|| format!("role {s:?}: lease id is not a number"))?;
        return Ok(Role::Tenant(LeaseId(id)));
    }
    bail!("role {s:?}: expected landlord or tenant:LEASE")
}

/// The inverse of [`parse_role`].
pub fn role_string(r: &Role) -> String {
    match r {
        Role::Landlord => "landlord".into(),
        Role::Tenant(l) => format!("tenant:{}", l.0),
    }
}

/// A saved profile: everything needed to open a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// `host:port` or `serial:/dev/...`.
    pub node: String,
    /// The node's static public key for this role (hex).
    pub node_key: String,
    /// `landlord` or `tenant:LEASE`.
    pub role: String,
    /// Name of the console key in `keys/`.
    pub key: String,
}

impl Profile {
    /// The parsed role.
    pub fn role(&self) -> Result<Role> {
        parse_role(&self.role)
    }

    /// The parsed node key.
    pub fn node_key(&self) -> Result<PublicKey> {
        PublicKey::from_hex(&self.node_key)
            .ok_or_else(|| anyhow!("profile {}: node_key is not 64 hex digits", self.name))
    }

    /// The parsed node address.
    pub fn addr(&self) -> Result<NodeAddr> {
        NodeAddr::parse(&self.node)
    }
}

/// The config directory and its files.
pub struct Config {
    /// Root directory.
    pub dir: PathBuf,
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        bail!("name {name:?}: use 1-64 letters, digits, '-', '_' or '.' (not leading)");
    }
    Ok(())
}

/// Writes `contents` to `path` readable only by the owner, creating the file
/// with that mode so the key is never briefly world-readable.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Config {
    /// The directory from `--config-dir`, else `$XDG_CONFIG_HOME/bmctl`, else
    /// `$HOME/.config/bmctl`.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Config> {
        let dir = match explicit {
            Some(d) => d,
            None => match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
                Some(x) => PathBuf::from(x).join("bmctl"),
                None => {
                    let home = std::env::var_os("HOME")
                        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; use --config-dir"))?;
                    PathBuf::from(home).join(".config").join("bmctl")
                }
            },
        };
        Ok(Config { dir })
    }

    fn sub(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if name == "keys" {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).ok();
            }
        }
        Ok(d)
    }

    /// Path of console key `name`.
    pub fn key_path(&self, name: &str, ext: &str) -> Result<PathBuf> {
        valid_name(name)?;
        Ok(self.sub("keys")?.join(format!("{name}.{ext}")))
    }

    /// Generates and stores a console X25519 key; returns its public half.
    pub fn keygen(&self, name: &str) -> Result<PublicKey> {
        let path = self.key_path(name, "x25519")?;
        if path.exists() {
            bail!("key {name:?} already exists at {}; remove it first or pick another name", path.display());
        }
        let kp = KeyPair::generate(&mut OsEntropy).map_err(|_| anyhow!("the OS random number generator failed"))?;
        write_private(&path, &format!("{}\n", to_hex(&kp.secret.0)))?;
        Ok(kp.public)
    }

    /// Loads console key `name`.
    pub fn load_key(&self, name: &str) -> Result<KeyPair> {
        let path = self.key_path(name, "x25519")?;
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading key {name:?} ({}); run `bmctl keygen {name}`", path.display()))?;
        let secret = from_hex32(&text).ok_or_else(|| anyhow!("key file {} is not 64 hex digits", path.display()))?;
        KeyPair::from_secret(SecretKey(secret)).ok_or_else(|| anyhow!("key {name:?} is unusable"))
    }

    /// Generates and stores an Ed25519 image-signing seed; returns the
    /// verifying key.
    pub fn keygen_signing(&self, name: &str) -> Result<[u8; 32]> {
        let path = self.key_path(name, "ed25519")?;
        if path.exists() {
            bail!("signing key {name:?} already exists at {}", path.display());
        }
        let mut seed = [0u8; 32];
        OsEntropy.fill(&mut seed).map_err(|_| anyhow!("the OS random number generator failed"))?;
        write_private(&path, &format!("{}\n", to_hex(&seed)))?;
        Ok(mgmt_proto::image_verify_key(&seed).0)
    }

    /// Loads an Ed25519 image-signing seed.
    pub fn load_signing(&self, name: &str) -> Result<[u8; 32]> {
        let path = self.key_path(name, "ed25519")?;
        let text = fs::read_to_string(&path).with_context(|| {
            format!("reading signing key {name:?} ({}); run `bmctl keygen --signing {name}`", path.display())
        })?;
        from_hex32(&text).ok_or_else(|| anyhow!("signing key file {} is not 64 hex digits", path.display()))
    }

    fn profile_path(&self, name: &str) -> Result<PathBuf> {
        valid_name(name)?;
        Ok(self.sub("profiles")?.join(format!("{name}.json")))
    }

    /// Saves a profile (replacing one of the same name if `replace`).
    pub fn save_profile(&self, p: &Profile, replace: bool) -> Result<()> {
        p.role()?;
        p.node_key()?;
        p.addr()?;
        let path = self.profile_path(&p.name)?;
        if path.exists() && !replace {
            bail!("profile {:?} already exists; remove it first", p.name);
        }
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(p)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Loads profile `name`.
    pub fn load_profile(&self, name: &str) -> Result<Profile> {
        let path = self.profile_path(name)?;
        let text = fs::read_to_string(&path).with_context(|| {
            format!("no profile {name:?} (looked for {}); see `bmctl profile list`", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("profile {} is not valid", path.display()))
    }

    /// All profiles, sorted by name.
    pub fn list_profiles(&self) -> Result<Vec<Profile>> {
        let dir = self.dir.join("profiles");
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else { return Ok(out) };
        for e in rd {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "json") {
                let text = fs::read_to_string(&path)?;
                out.push(
                    serde_json::from_str(&text).with_context(|| format!("profile {} is not valid", path.display()))?,
                );
            }
        }
        out.sort_by(|a: &Profile, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes profile `name` (its key stays: it may be shared).
    pub fn remove_profile(&self, name: &str) -> Result<()> {
        let path = self.profile_path(name)?;
        fs::remove_file(&path).with_context(|| format!("no profile {name:?}"))
    }

    /// Picks the profile: the named one, else the only one with a matching
    /// role kind, so single-profile setups need no `--profile`.
    pub fn pick_profile(&self, name: Option<&str>, landlord: bool) -> Result<Profile> {
        if let Some(n) = name {
            return self.load_profile(n);
        }
        let all: Vec<Profile> =
            self.list_profiles()?.into_iter().filter(|p| matches!(p.role(), Ok(Role::Landlord)) == landlord).collect();
        match all.len() {
            1 => all.into_iter().next().ok_or_else(|| anyhow!("no profile")),
            0 => bail!(
                "no {} profile; create one with `bmctl profile add`",
                if landlord { "landlord" } else { "tenant" }
            ),
            _ => bail!("several {} profiles; choose one with --profile", if landlord { "landlord" } else { "tenant" }),
        }
    }
}
