//! Compiles Sluice's own `.proto` files (proto/) into Rust with `protox` (a pure-Rust protobuf compiler: no `protoc`
//! binary needed) and `tonic-prost-build`, and keeps the encoded descriptor sets for gRPC server reflection.
//!
//! KEDA's external scaler proto is compiled on its own, into its own descriptor set: it is served on the scaler
//! listener only, so reflection on the inference listener must not list it (and the other way round).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/inference.proto", "proto/model_config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("inference_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Tensor payloads as `Bytes`: decoded requests slice the received buffer, responses share the tensors' bytes.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;

    // KEDA's external scaler: the server for Sluice, the client for the integration tests.
    let scaler = "proto/externalscaler.proto";
    println!("cargo:rerun-if-changed={scaler}");
    let scaler_descriptors = protox::compile([scaler], ["proto"])?;
    std::fs::write(out_dir.join("externalscaler_descriptor.bin"), prost::Message::encode_to_vec(&scaler_descriptors))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(scaler_descriptors)?;
    Ok(())
}
