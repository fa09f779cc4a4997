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
    // Messages and clients only: the servers are generated below, with reply types.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    compile_reply_services();

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

/// The servers of both gRPC APIs, generated with the reply types of `src/grpc/wire.rs` in
/// place of the response messages (wire-compatible; see that module).
fn compile_reply_services() {
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path(codec)
            .build()
    };
    let auth = Service::builder()
        .name("Auth")
        .package("portcullis.v1")
        .method(method(
            "authenticate",
            "Authenticate",
            "crate::pb::AuthenticateRequest",
            "crate::grpc::wire::AuthenticateReply",
        ))
        .method(method(
            "authorize",
            "Authorize",
            "crate::pb::AuthorizeRequest",
            "crate::grpc::wire::AuthorizeReply",
        ))
        .build();
    let authorization = Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(method(
            "check",
            "Check",
            "crate::grpc::wire::CheckRequestView",
            "crate::grpc::wire::CheckReply",
        ))
        .build();
    Builder::new()
        .build_client(false)
        .compile(&[auth, authorization]);
}
