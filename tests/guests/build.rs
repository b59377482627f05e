//! Passes the guests' linker scripts: every guest is linked at 1 MiB; all but
//! `mb1-probe` carry a Xen PVH note, `mb1-probe` carries a multiboot1 header.

use std::env;
use std::path::PathBuf;

/// Binaries booted through multiboot1 instead of PVH.
const MULTIBOOT1_BINS: &[&str] = &["mb1-probe"];

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    for script in ["link-pvh.ld", "link-mb1.ld"] {
        println!("cargo:rerun-if-changed={}", dir.join(script).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", dir.join("src/bin").display());
    // Only the bare-metal target gets the scripts; a host build of this
    // package is meaningless and would fail anyway.
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    // One binary per file in src/bin (each also has a [[bin]] entry in
    // Cargo.toml, which turns off its host test harness).
    let mut bins: Vec<String> = std::fs::read_dir(dir.join("src/bin"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".rs")).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    bins.sort();
    for bin in &bins {
        let script = if MULTIBOOT1_BINS.contains(&bin.as_str()) { "link-mb1.ld" } else { "link-pvh.ld" };
        println!("cargo:rustc-link-arg-bin={bin}=-T{}", dir.join(script).display());
        println!("cargo:rustc-link-arg-bin={bin}=-no-pie");
        println!("cargo:rustc-link-arg-bin={bin}=--no-dynamic-linker");
    }
}
