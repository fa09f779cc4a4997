//! Generated protobuf and gRPC code for `portcullis.v1`, plus the descriptor set that gRPC
//! reflection serves.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("portcullis.v1");

/// Encoded `FileDescriptorSet` of proto/portcullis/v1, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_descriptor.bin"));

/// Encoded `FileDescriptorSet` of the ext_authz subset in proto/reflection, so reflection
/// clients (grpcurl) can call `envoy.service.auth.v3.Authorization/Check`.
pub const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));
