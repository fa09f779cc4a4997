//! `portcullis.v1.Auth`: Authenticate and Authorize. Denials are data (an OK RPC with a
//! `Denial`); gRPC errors are only for malformed messages and shutdown.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    credentials::Carried,
    decision::Decision,
    dpop::split_absolute_url,
    headers::{self, Headers},
    pb::{self, AuthenticateRequest, AuthorizeRequest},
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::{self, TraceCarrier, metrics::Surface},
};

use super::wire::{AuthenticateReply, AuthorizeReply, auth_server::Auth};

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

/// What an Auth request carries: the message's credential, headers and certificate, and
/// the TLS peer's certificates and address (no query string on this API).
fn carried<'a>(
    credential: Option<&'a pb::Credential>,
    headers: &'a [(&'a str, &'a str)],
    client_certificate_pem: &'a str,
    peer_certificates: &'a [rustls_pki_types::CertificateDer<'static>],
    peer_address: Option<std::net::IpAddr>,
) -> Carried<'a> {
    Carried {
        credential,
        headers: Headers::new(headers),
        query_credentials: &[],
        client_certificate_pem,
        peer_certificates,
        peer_address,
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

#[tonic::async_trait]
impl Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateReply>, Status> {
        let span = telemetry::request_span(
            "authenticate",
            &[TraceCarrier::Metadata(request.metadata())],
        );
        let peer = request.peer_certs();
        let peer_address = request.remote_addr().map(|a| a.ip());
        let request = request.get_ref();
        check_headers(request.headers.len())?;
        let headers = headers::pairs_of(&request.headers);
        let pipeline = self.pipeline.load_full();
        // What a DPoP proof must name; an unusable URL matches no proof.
        let target_url = split_absolute_url(&request.http_url);
        let attrs = RequestAttrs {
            carried: carried(
                request.credential.as_ref(),
                &headers,
                &request.client_certificate_pem,
                peer.as_deref().map_or(&[], Vec::as_slice),
                peer_address,
            ),
            audience: &request.audience,
            required_scopes: &[],
            resource: Resource {
                http_method: &request.http_method,
                host: target_url.map_or("", |(_, authority, _)| authority),
                path: target_url.map_or("", |(_, _, path)| path),
                ..Resource::default()
            },
            scheme: target_url.map_or("", |(scheme, _, _)| scheme),
        };
        let decision = pipeline
            .run(Surface::authenticate, attrs)
            .instrument(span)
            .await;
        let response = match decision {
            Decision::Allow {
                principal,
                identity_token,
                ..
            } => AuthenticateReply {
                authenticated: true,
                principal: principal.map(|p| p.encoded()),
                denial: None,
                identity_token: identity_token
                    .map(|t| t.token.to_string())
                    .unwrap_or_default(),
            },
            Decision::Deny { denial, .. } => AuthenticateReply {
                authenticated: false,
                principal: None,
                denial: Some(denial.to_proto(pipeline.challenge(&denial))),
                identity_token: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeReply>, Status> {
        let span =
            telemetry::request_span("authorize", &[TraceCarrier::Metadata(request.metadata())]);
        let peer = request.peer_certs();
        let peer_address = request.remote_addr().map(|a| a.ip());
        let request = request.get_ref();
        check_headers(request.headers.len())?;
        let headers = headers::pairs_of(&request.headers);
        let pipeline = self.pipeline.load_full();
        let resource = request.resource.as_ref();
        let attrs = RequestAttrs {
            carried: carried(
                request.credential.as_ref(),
                &headers,
                &request.client_certificate_pem,
                peer.as_deref().map_or(&[], Vec::as_slice),
                peer_address,
            ),
            audience: &request.audience,
            required_scopes: &request.required_scopes,
            resource: Resource {
                grpc_service: resource.map_or("", |r| r.grpc_service.as_str()),
                grpc_method: resource.map_or("", |r| r.grpc_method.as_str()),
                http_method: resource.map_or("", |r| r.http_method.as_str()),
                host: resource.map_or("", |r| r.host.as_str()),
                path: resource.map_or("", |r| r.path.as_str()),
                alternate_path: "",
                context_extensions: resource.map(|r| &r.attributes),
            },
            scheme: resource.map_or("", |r| r.scheme.as_str()),
        };
        let response = match pipeline
            .run(Surface::authorize, attrs)
            .instrument(span)
            .await
        {
            Decision::Allow {
                principal,
                rule,
                identity_token,
                ..
            } => AuthorizeReply {
                allowed: true,
                upstream_headers: principal
                    .as_deref()
                    .map(|p| pipeline.upstream_headers(p, identity_token.as_deref()))
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                principal: principal.map(|p| p.encoded()),
                denial: None,
                rule,
                identity_token: identity_token
                    .map(|t| t.token.to_string())
                    .unwrap_or_default(),
            },
            Decision::Deny {
                denial,
                principal,
                rule,
                ..
            } => AuthorizeReply {
                allowed: false,
                principal: principal.map(|p| p.encoded()),
                denial: Some(denial.to_proto(pipeline.challenge(&denial))),
                rule,
                upstream_headers: Default::default(),
                identity_token: String::new(),
            },
        };
        Ok(Response::new(response))
    }
}
