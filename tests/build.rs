//! Generates the etcd client the benchmark (`opsd-bench`) compares opsd with,
//! from the slice of etcd's v3 API in `proto/etcdserverpb/rpc.proto`. Compiled
//! with protox (pure Rust), so, like the rest of the workspace, the build needs
//! no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/etcdserverpb/rpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
