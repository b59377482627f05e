//! Links the image at 1 MiB with our own script (see link.ld).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rustc-link-arg-bin=bmonitor=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg-bin=bmonitor=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
}
