//! Builds the BPF probe (the `ackwatch-probe` binary of ebpf-probe) with the nightly
//! toolchain and bpf-linker, into OUT_DIR, so a plain `cargo build` builds both.
//! `AYA_BUILD_SKIP=1` skips it (clippy-only runs).

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-probe");
    println!("cargo:rerun-if-changed={root}/src");
    let probe = aya_build::Package {
        name: "ebpf-probe",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([probe], aya_build::Toolchain::default())
}
