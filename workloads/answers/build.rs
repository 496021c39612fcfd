//! Build-time code of the answers workload.
//!
//! STAND-IN (grpc branch): at merge, keep `compile_protos` and its call beside the workload's own
//! build steps (e.g. `build_support::schema_versions()` for its Avro records).

fn main() {
    compile_protos();
}

/// gRPC: compiles `proto/answers.proto` into `$OUT_DIR/answers.v1.rs` (messages, the server traits
/// and the clients), which `src/grpc.rs` includes.
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
