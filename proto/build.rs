//! Compiles the API contract with protox (pure Rust, so no system `protoc`) and
//! generates tonic/prost code from the resulting descriptor set. The descriptor
//! set is also kept for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["opsd/v1/cluster.proto", "opsd/v1/settings.proto", "opsd/v1/peer.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("opsd_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
