//! `portcullis.v1.Auth`: Authenticate and Authorize. Denials are data (an OK RPC with a
//! `Denial`); gRPC errors are only for malformed messages and shutdown.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    decision::{Decision, Denial},
    pb::{self, AuthenticateRequest, AuthenticateResponse, AuthorizeRequest, AuthorizeResponse},
    pipeline::{Pipeline, RequestAttrs},
};

/// Largest number of headers accepted in one request message.
const MAX_HEADERS: usize = 256;

pub struct AuthService {
    pipeline: Arc<ArcSwap<Pipeline>>,
}

impl AuthService {
    pub fn new(pipeline: Arc<ArcSwap<Pipeline>>) -> Self {
        Self { pipeline }
    }
}

fn check_headers(count: usize) -> Result<(), Status> {
    if count > MAX_HEADERS {
        return Err(Status::invalid_argument(format!(
            "more than {MAX_HEADERS} headers"
        )));
    }
    Ok(())
}

fn log_denial(rpc: &'static str, denial: &Denial) {
    info!(rpc, reason = %denial.reason, message = %denial.message, "request denied");
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let peer = request.peer_certs();
        let request = request.get_ref();
        check_headers(request.headers.len())?;
        let pipeline = self.pipeline.load_full();
        let attrs = RequestAttrs {
            credential: request.credential.as_ref(),
            headers: &request.headers,
            audience: &request.audience,
            required_scopes: &[],
            client_certificate_pem: &request.client_certificate_pem,
            peer_certificates: peer.as_deref().map_or(&[], Vec::as_slice),
        };
        let response = match pipeline.authenticate(attrs).await {
            Ok(principal) => AuthenticateResponse {
                authenticated: true,
                principal: Some(principal.proto().clone()),
                denial: None,
            },
            Err(denial) => {
                log_denial("Authenticate", &denial);
                AuthenticateResponse {
                    authenticated: false,
                    principal: None,
                    denial: Some(denial.to_proto(pipeline.realm_for(&denial))),
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let peer = request.peer_certs();
        let request = request.get_ref();
        check_headers(request.headers.len())?;
        let pipeline = self.pipeline.load_full();
        let attrs = RequestAttrs {
            credential: request.credential.as_ref(),
            headers: &request.headers,
            audience: &request.audience,
            required_scopes: &request.required_scopes,
            client_certificate_pem: &request.client_certificate_pem,
            peer_certificates: peer.as_deref().map_or(&[], Vec::as_slice),
        };
        let response = match pipeline.authorize(attrs).await {
            Decision::Allow { principal, rule } => AuthorizeResponse {
                allowed: true,
                principal: principal.map(|p| p.proto().clone()),
                denial: None,
                rule,
                upstream_headers: Default::default(),
            },
            Decision::Deny {
                denial,
                principal,
                rule,
            } => {
                log_denial("Authorize", &denial);
                AuthorizeResponse {
                    allowed: false,
                    principal: principal.map(|p| p.proto().clone()),
                    denial: Some(denial.to_proto(pipeline.realm_for(&denial))),
                    rule,
                    upstream_headers: Default::default(),
                }
            }
        };
        Ok(Response::new(response))
    }
}
