//! Compiles the API contract with protox (pure Rust, so no system `protoc`) and
//! generates tonic/prost code from the resulting descriptor set. The client
//! API's descriptor set is also kept for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = [
        "opsd/v1/cluster.proto",
        "opsd/v1/settings.proto",
        "opsd/v1/resources.proto",
        "opsd/v1/services.proto",
        "opsd/v1/security.proto",
    ];
    let peer = "opsd/v1/peer.proto";
    for f in client.iter().chain([&peer]) {
        println!("cargo:rerun-if-changed={f}");
    }
    // Reflection describes the client API only: the peer service is not served on the client port.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let client_fds = protox::compile(client, ["."])?;
    std::fs::write(
        out.join("opsd_descriptor.bin"),
        prost::Message::encode_to_vec(&client_fds),
    )?;
    let all = protox::compile(client.iter().chain([&peer]), ["."])?;
    tonic_prost_build::configure().compile_fds(all)?;
    Ok(())
}
