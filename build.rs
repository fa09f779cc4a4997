//! Compiles proto/portcullis with a pure-Rust protobuf compiler (protox), so a fresh clone builds with
//! no protoc installed, and writes the descriptor sets that gRPC reflection serves (ours, and
//! a wire-compatible subset of Envoy's ext_authz API from proto/reflection).

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/portcullis/v1/auth.proto"];
    println!("cargo:rerun-if-changed=proto");
    // The API key schema is embedded by `sqlx::migrate!`.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("portcullis_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;

    // Envoy's ext_authz API, for reflection only (the server uses envoy-types' code).
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/reflection"],
    )?;
    fs::write(
        out_dir.join("envoy_ext_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    Ok(())
}
