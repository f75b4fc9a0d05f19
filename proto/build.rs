//! Compiles the .proto files with protox (pure Rust: no protoc needed) and
//! generates the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["leakscan/v1/cluster.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
