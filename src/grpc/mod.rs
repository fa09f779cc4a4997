//! gRPC surfaces. Each translates its wire format to [`crate::pipeline::RequestAttrs`] and
//! renders the pipeline's answer; no credential logic lives here.

pub mod auth_service;
pub mod ext_authz;
pub mod wire;
