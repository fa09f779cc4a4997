//! Portcullis: a gRPC token-validation service.
//!
//! A request enters at one surface (`portcullis.v1.Auth`), becomes one [`pipeline::RequestAttrs`],
//! runs through one [`pipeline::Pipeline`], and leaves as one [`decision::Decision`] that the
//! surface renders in its own wire format. Modules are public so that integration tests and
//! benchmarks can drive them directly.

pub mod build;
pub mod cache;
pub mod claims;
pub mod cli;
pub mod client_address;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod dpop;
pub mod forward_auth;
pub mod grpc;
pub mod headers;
pub mod http_body;
pub mod identity_token;
pub mod jwt;
pub mod keys;
pub mod listener;
pub mod load_shed;
pub mod outbound;
pub mod pb;
pub mod pipeline;
pub mod policy;
pub mod rate_limit;
pub mod redis_link;
pub mod reload;
pub mod revocation;
pub mod server;
pub mod serving;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod verify;
pub mod vocabulary;
