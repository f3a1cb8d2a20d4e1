//! Compiles `proto/` into Rust (prost + tonic), with the file descriptor set that server reflection serves.
//! protoc comes from the `protoc-bin-vendored` crate unless `PROTOC` is set, so a build needs nothing
//! installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    // Read at run time, not with `env!`: a build script compiled in one checkout may be reused by
    // another that shares the target directory.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("orders_descriptor.bin"))
        .compile_protos(
            &[
                proto_root.join("orders/v1/orders.proto"),
                proto_root.join("orders/v1/events.proto"),
            ],
            &[proto_root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
