//! Build-time code of the answers workload: its record schemas (`schemas/`:
//! command, change, reply; see [`build_support::schema_versions`]) and its
//! gRPC code (`proto/answers.proto`).

fn main() {
    build_support::schema_versions();
    compile_protos();
}

/// gRPC: compiles `proto/answers.proto` into `$OUT_DIR/answers.v1.rs` (messages, the server traits
/// and the clients), which `src/grpc/mod.rs` includes.
///
/// protox parses the .proto in Rust, so no `protoc` has to be installed; tonic-prost-build then
/// writes the code from the file descriptors.
fn compile_protos() {
    let proto = "proto/answers.proto";
    println!("cargo::rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    tonic_prost_build::configure()
        // The clients stay generic over the transport: `connect` would need tonic's channel feature.
        .build_transport(false)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the gRPC code of {proto}: {e}"));
}
