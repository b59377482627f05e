//! The node's TPM 2.0 through the TIS / PTP FIFO interface at locality 0
//! (MMIO 0xFED4_0000, TCG PC Client Platform TPM Profile), so the node
//! disk's seal key can be bound to this node's TPM (`tpm2_lite`).
//!
//! Everything the TPM says is untrusted: register values are checked,
//! every wait is bounded by the calibrated TSC and fails with an error
//! rather than hanging, and responses are parsed by `tpm2_lite`.

use crate::arch::x86_64::time;
use alloc::format;
use alloc::string::String;
use tpm2_lite::{Error, Transport};

/// Physical (= virtual: identity mapped) base of locality 0.
const BASE: usize = 0xFED4_0000;

/// Register offsets within a locality (PTP §6.5.2, FIFO interface).
const ACCESS: usize = 0x00;
const INTF_CAPABILITY: usize = 0x14;
const STS: usize = 0x18;
const DATA_FIFO: usize = 0x24;
const INTERFACE_ID: usize = 0x30;
const DID_VID: usize = 0xF00;
const RID: usize = 0xF04;

/// `TPM_ACCESS` bits.
const ACCESS_VALID: u8 = 1 << 7;
const ACCESS_ACTIVE_LOCALITY: u8 = 1 << 5;
const ACCESS_REQUEST_USE: u8 = 1 << 1;

/// `TPM_STS` bits.
const STS_VALID: u32 = 1 << 7;
const STS_COMMAND_READY: u32 = 1 << 6;
const STS_GO: u32 = 1 << 5;
const STS_DATA_AVAIL: u32 = 1 << 4;
const STS_EXPECT: u32 = 1 << 3;
/// `TPM_STS.tpmFamily` (bits 26..27): 01 = TPM 2.0.
const STS_FAMILY_SHIFT: u32 = 26;
const STS_FAMILY_TPM2: u32 = 1;

/// `TPM_INTERFACE_ID.InterfaceType` = CRB: the FIFO is not the active
/// interface, this driver cannot talk to it.
const INTERFACE_TYPE_CRB: u32 = 1;

/// Timeouts (PTP §6.5.1.4 TIMEOUT_A..D, and a generous bound on command
/// duration: key derivation and sealing take well under a second on real
/// TPMs; a slow TPM still ends in an error, never a hang).
const TIMEOUT_A_MS: u64 = 750;
const TIMEOUT_B_MS: u64 = 2000;
const TIMEOUT_C_MS: u64 = 750;
const TIMEOUT_D_MS: u64 = 750;
const COMMAND_MS: u64 = 30_000;
/// A second bound on every wait in register polls, in case the TSC does
/// not advance as calibrated.
const MAX_POLLS: u64 = 50_000_000;

fn read8(off: usize) -> u8 {
    // SAFETY: BASE + off is a TIS register of locality 0, in the
    // identity-mapped first 4 GiB; MMIO reads there have no memory effects
    // on BMonitor (absent devices read as 0 or all ones, checked by probe).
    unsafe { core::ptr::read_volatile((BASE + off) as *const u8) }
}

fn read32(off: usize) -> u32 {
    // SAFETY: as `read8`; every offset used is 4-byte aligned.
    unsafe { core::ptr::read_volatile((BASE + off) as *const u32) }
}

fn write8(off: usize, v: u8) {
    // SAFETY: as `read8`; only called once probe found a TPM at BASE, so
    // the write reaches that TPM's register and nothing else.
    unsafe { core::ptr::write_volatile((BASE + off) as *mut u8, v) }
}

/// Polls `done` until it holds or `ms` milliseconds pass.
fn wait(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = time::rdtsc();
    let limit = ms.saturating_mul(time::tsc_per_ms());
    for _ in 0..MAX_POLLS {
        if done() {
            return true;
        }
        if time::rdtsc().wrapping_sub(start) > limit {
            return done();
        }
        core::hint::spin_loop();
    }
    false
}

fn sts() -> u32 {
    read32(STS)
}

/// The locality-0 FIFO interface of a TPM 2.0 that [`probe`] found, with
/// locality 0 held (released on drop).
pub struct Tis {
    did_vid: u32,
    rid: u8,
}

/// Looks for a TPM 2.0 FIFO interface at 0xFED4_0000: `Ok(None)` when
/// nothing is there, `Err` when something TPM-like is there but unusable
/// (TPM 1.2, CRB only, locality not granted) — the caller should then not
/// silently fall back to a weaker seal.
pub fn probe() -> Result<Option<Tis>, &'static str> {
    let access = read8(ACCESS);
    if access == 0xFF || access & ACCESS_VALID == 0 {
        return Ok(None);
    }
    let did_vid = read32(DID_VID);
    let caps = read32(INTF_CAPABILITY);
    if did_vid == 0 || did_vid == u32::MAX || caps == u32::MAX {
        return Ok(None);
    }
    let iface = read32(INTERFACE_ID);
    if iface != u32::MAX && iface & 0xF == INTERFACE_TYPE_CRB {
        return Err("the TPM's active interface is CRB, not the FIFO this driver speaks");
    }
    if read8(ACCESS) & ACCESS_ACTIVE_LOCALITY == 0 {
        write8(ACCESS, ACCESS_REQUEST_USE);
        let granted = wait(TIMEOUT_A_MS, || {
            let a = read8(ACCESS);
            a & (ACCESS_VALID | ACCESS_ACTIVE_LOCALITY) == ACCESS_VALID | ACCESS_ACTIVE_LOCALITY
        });
        if !granted {
            return Err("locality 0 not granted");
        }
    }
    let tis = Tis { did_vid, rid: read8(RID) };
    if (sts() >> STS_FAMILY_SHIFT) & 0x3 != STS_FAMILY_TPM2 {
        return Err("not a TPM 2.0 (TPM_STS family bits)");
    }
    Ok(Some(tis))
}

impl Tis {
    /// Vendor id, device id and revision, for the log.
    fn describe(&self) -> String {
        format!("vendor {:#06x} device {:#06x} rev {}", self.did_vid & 0xFFFF, self.did_vid >> 16, self.rid)
    }

    /// Puts the TPM in the Ready state (also aborts a command in progress).
    fn ready(&mut self) -> Result<(), Error> {
        write8(STS, STS_COMMAND_READY as u8);
        if wait(TIMEOUT_B_MS, || sts() & STS_COMMAND_READY != 0) {
            Ok(())
        } else {
            Err(Error::Transport("TIS: TPM did not become ready"))
        }
    }

    /// The current burst count, waiting (TIMEOUT_D) for a non-zero one.
    fn burst(&mut self) -> Result<usize, Error> {
        let mut count = 0usize;
        let ok = wait(TIMEOUT_D_MS, || {
            count = ((sts() >> 8) & 0xFFFF) as usize;
            count > 0
        });
        if ok {
            Ok(count)
        } else {
            Err(Error::Transport("TIS: burst count stays zero"))
        }
    }

    /// `TPM_STS` once `stsValid` is set (TIMEOUT_C).
    fn valid_sts(&mut self) -> Result<u32, Error> {
        let mut s = 0;
        if wait(TIMEOUT_C_MS, || {
            s = sts();
            s & STS_VALID != 0
        }) {
            Ok(s)
        } else {
            Err(Error::Transport("TIS: status never valid"))
        }
    }

    fn send(&mut self, cmd: &[u8]) -> Result<(), Error> {
        self.ready()?;
        let mut rest = cmd;
        while !rest.is_empty() {
            let n = self.burst()?.min(rest.len());
            let (now, later) = rest.split_at(n);
            for &b in now {
                write8(DATA_FIFO, b);
            }
            rest = later;
            let expect = self.valid_sts()? & STS_EXPECT != 0;
            if expect == rest.is_empty() {
                return Err(Error::Transport("TIS: TPM disagrees about the command length"));
            }
        }
        write8(STS, STS_GO as u8);
        Ok(())
    }

    fn read_into(&mut self, out: &mut [u8]) -> Result<(), Error> {
        let mut rest = out;
        while !rest.is_empty() {
            let n = self.burst()?.min(rest.len());
            let (now, later) = rest.split_at_mut(n);
            for b in now.iter_mut() {
                *b = read8(DATA_FIFO);
            }
            rest = later;
        }
        Ok(())
    }

    fn receive(&mut self, resp: &mut [u8]) -> Result<usize, Error> {
        let avail = wait(COMMAND_MS, || sts() & (STS_VALID | STS_DATA_AVAIL) == STS_VALID | STS_DATA_AVAIL);
        if !avail {
            return Err(Error::Transport("TIS: no response (timeout)"));
        }
        let header = resp.get_mut(..10).ok_or(Error::Transport("TIS: response buffer too small"))?;
        self.read_into(header)?;
        let size = header
            .get(2..6)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_be_bytes)
            .ok_or(Error::Transport("TIS: response header"))?;
        let size = usize::try_from(size).map_err(|_| Error::Transport("TIS: response size"))?;
        if size < 10 {
            return Err(Error::Malformed("response shorter than its header"));
        }
        let body = resp.get_mut(10..size).ok_or(Error::Transport("TIS: response larger than the buffer"))?;
        self.read_into(body)?;
        if self.valid_sts()? & STS_DATA_AVAIL != 0 {
            return Err(Error::Transport("TIS: TPM has more bytes than its response size"));
        }
        Ok(size)
    }
}

impl Transport for Tis {
    fn transact(&mut self, cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error> {
        let out = self.send(cmd).and_then(|()| self.receive(resp));
        // Back to idle (also aborts a half-done exchange); a failure here
        // does not hide the exchange's result.
        let _ = self.ready();
        out
    }
}

impl Drop for Tis {
    fn drop(&mut self) {
        // Relinquish locality 0 (write 1 to activeLocality).
        write8(ACCESS, ACCESS_ACTIVE_LOCALITY);
    }
}

/// The node disk's seal key bound to this node's TPM: `Ok(Some(key))`
/// with a TPM 2.0 (HKDF of the provisioning secret and a secret only this
/// TPM derives, see `tpm2_lite::node_seal_key`), `Ok(None)` when the node
/// has no TPM (use the provisioning secret alone), `Err` when a TPM is
/// there but fails: refuse the disk then, never fall back.
pub fn node_seal_key(provisioning: &[u8; 32]) -> Result<Option<[u8; 32]>, String> {
    let Some(mut tis) = probe().map_err(|why| format!("TPM at {BASE:#x}: {why}"))? else {
        return Ok(None);
    };
    let who = tis.describe();
    let key = tpm2_lite::node_seal_key(&mut tis, provisioning).map_err(|e| format!("TPM ({who}): {e}"))?;
    crate::log!("tpm: TPM 2.0 at {BASE:#x} ({who}); node seal key bound to it");
    Ok(Some(key))
}

/// The TPM health probe: asks the TPM for 8 random bytes. `Ok(None)` when
/// the node has no TPM, `Ok(Some(what))` when it answered, `Err(why)` when
/// a TPM is there and does not answer properly.
pub fn health() -> Result<Option<String>, String> {
    let Some(mut tis) = probe().map_err(|why| format!("TPM at {BASE:#x}: {why}"))? else {
        return Ok(None);
    };
    let cmd = tpm2_lite::cmd::get_random(8).map_err(|e| format!("{e}"))?;
    let mut resp = [0u8; 64];
    let n = tis.transact(&cmd, &mut resp).map_err(|e| format!("TPM ({}): {e}", tis.describe()))?;
    let bytes = tpm2_lite::cmd::parse_get_random(resp.get(..n).unwrap_or(&[])).map_err(|e| format!("{e}"))?;
    Ok(Some(format!("{} answered GetRandom ({} bytes)", tis.describe(), bytes.len())))
}
