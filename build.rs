//! Compiles the protos (our node API, and the CSI Identity subset) with protox
//! (a protobuf compiler in Rust), so a clean checkout builds without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/csifencer/v1/fencer.proto",
        "proto/csi/v1/identity.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
