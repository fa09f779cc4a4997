//! `envoy.service.auth.v3.Authorization/Check` (SPEC §3): Envoy's external authorization on
//! the same pipeline as `Authorize`. Always an OK RPC — a deny, and even an internal failure,
//! is a `DeniedHttpResponse`, because an RPC error would let `failure_mode_allow` deployments
//! through.
//!
//! Allow: `OkHttpResponse` whose identity headers overwrite any incoming copies, whose
//! `headers_to_remove` lists every other header Portcullis can set (so callers cannot spoof
//! them), and the principal in `dynamic_metadata`. Deny: the SPEC status, `WWW-Authenticate`
//! and a small JSON body `{reason, message}`.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::{protobuf, rpc},
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    credentials::Carried,
    decision::{Decision, Denial, Reason},
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::{self, metrics::Surface},
};

pub struct ExtAuthzService {
    pipeline: Arc<ArcSwap<Pipeline>>,
}

impl ExtAuthzService {
    pub fn new(pipeline: Arc<ArcSwap<Pipeline>>) -> Self {
        Self { pipeline }
    }
}

/// Most headers accepted in one Check (Envoy's own default limit is 100).
const MAX_HEADERS: usize = 256;

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let span = telemetry::request_span("ext_authz");
        if !telemetry::set_parent_from_metadata(&span, request.metadata())
            && let Some(headers) = request
                .get_ref()
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .map(|h| &h.headers)
        {
            telemetry::set_remote_parent(&span, headers);
        }
        let pipeline = self.pipeline.load_full();
        Ok(Response::new(
            check(&pipeline, request.get_ref()).instrument(span).await,
        ))
    }
}

/// Runs one Check through the pipeline and renders Envoy's answer.
pub async fn check(pipeline: &Pipeline, request: &CheckRequest) -> CheckResponse {
    let attributes = request.attributes.as_ref();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let headers: HashMap<String, String>;
    let headers_ref = match http {
        Some(http) if !http.headers.is_empty() => &http.headers,
        Some(http) => {
            headers = join_header_map(http.header_map.iter().flat_map(|map| &map.headers));
            &headers
        }
        None => {
            headers = HashMap::new();
            &headers
        }
    };
    if headers_ref.len() > MAX_HEADERS {
        let denial = Denial::new(Reason::MalformedRequest, "too many request headers");
        pipeline.refused(Surface::ext_authz, &denial);
        return denied(&denial, "", pipeline.realm());
    }
    let method = http.map_or("", |h| h.method.as_str());
    let raw_path = http.map_or("", |h| h.path.as_str());
    let query = raw_path.split_once('?').map_or("", |(_, q)| q);
    let query_tokens: Vec<String> = if query.is_empty() {
        Vec::new()
    } else {
        form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "access_token")
            .map(|(_, value)| value.into_owned())
            .collect()
    };
    // The peer certificate as Envoy sends it: URL-encoded PEM (`+` is not a space here).
    let certificate = attributes
        .and_then(|a| a.source.as_ref())
        .map(|source| percent_encoding::percent_decode_str(&source.certificate).decode_utf8_lossy())
        .unwrap_or_default();
    let attrs = RequestAttrs {
        carried: Carried {
            credential: None,
            headers: headers_ref,
            query_credentials: &query_tokens,
            client_certificate_pem: &certificate,
            peer_certificates: &[],
            peer_address: source_address(attributes),
        },
        audience: "",
        required_scopes: &[],
        resource: Resource {
            grpc_service: "",
            grpc_method: "",
            http_method: method,
            host: http.map_or("", |h| h.host.as_str()),
            path: raw_path,
            alternate_path: "",
            context_extensions: attributes.map(|a| &a.context_extensions),
        },
    };
    match pipeline.run(Surface::ext_authz, attrs).await {
        Decision::Allow {
            principal,
            rule,
            upstream_headers,
            ..
        } => {
            let set: Vec<HeaderValueOption> = upstream_headers
                .iter()
                .map(|(name, value)| {
                    header(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
                })
                .collect();
            let mut headers_to_remove: Vec<String> = pipeline
                .upstream_header_names()
                .filter(|name| !upstream_headers.iter().any(|(set, _)| set == name))
                .chain(pipeline.upstream_header_aliases())
                .map(str::to_owned)
                .collect();
            if principal.is_none() {
                // An anonymous allow: a credential that failed (`allow_failed`) must not reach
                // an upstream that would read it as verified.
                headers_to_remove.push("authorization".to_owned());
                headers_to_remove
                    .extend(pipeline.config.credentials.api_key_headers.iter().cloned());
            }
            let mut metadata = vec![
                ("decision", string_value("allow")),
                ("rule", string_value(&rule)),
            ];
            if let Some(principal) = &principal {
                metadata.push(("principal", principal.envoy_metadata().clone()));
            }
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Ok as i32,
                    message: String::new(),
                    details: Vec::new(),
                }),
                dynamic_metadata: Some(struct_of(metadata)),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: set,
                    headers_to_remove,
                    ..Default::default()
                })),
            }
        }
        Decision::Deny { denial, rule, .. } => denied(&denial, &rule, pipeline.realm_for(&denial)),
    }
}

/// The downstream address Envoy reports (`attributes.source.address`), if it is an IP.
fn source_address(
    attributes: Option<&envoy_types::pb::envoy::service::auth::v3::AttributeContext>,
) -> Option<std::net::IpAddr> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    match attributes?
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?
    {
        Address::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
}

/// Envoy's `header_map` as one map of lower-case names; a repeated header's values are
/// joined with `,` as HTTP does, so a repeated credential header stays visible (and is
/// AMBIGUOUS_CREDENTIAL) instead of the last copy silently winning.
fn join_header_map<'a>(entries: impl Iterator<Item = &'a HeaderValue>) -> HashMap<String, String> {
    let mut joined: HashMap<String, String> = HashMap::new();
    for entry in entries {
        let value = if entry.value.is_empty() {
            String::from_utf8_lossy(&entry.raw_value)
        } else {
            std::borrow::Cow::Borrowed(entry.value.as_str())
        };
        match joined.entry(entry.key.to_ascii_lowercase()) {
            std::collections::hash_map::Entry::Occupied(mut existing) => {
                let existing = existing.get_mut();
                existing.push(',');
                existing.push_str(&value);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value.into_owned());
            }
        }
    }
    joined
}

/// The answer to a Check that load shedding turns away: a 503 deny with reason OVERLOADED.
pub fn overloaded() -> CheckResponse {
    denied(
        &Denial::new(Reason::Overloaded, "too many requests in flight"),
        "",
        "",
    )
}

fn denied(denial: &Denial, rule: &str, realm: &str) -> CheckResponse {
    let row = denial.reason.row();
    let (status, grpc_code) = (row.http_status, row.grpc_code);
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    let challenge = denial.www_authenticate(realm);
    if !challenge.is_empty() {
        headers.push(header(
            "www-authenticate",
            &challenge,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    let body = serde_json::json!({"reason": denial.reason.as_str(), "message": denial.message})
        .to_string();
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code as i32,
            message: denial.reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(struct_of(vec![
            ("decision", string_value("deny")),
            ("reason", string_value(denial.reason.as_str())),
            ("rule", string_value(rule)),
        ])),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        })),
    }
}

fn header(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn string_value(text: &str) -> protobuf::Value {
    protobuf::Value {
        kind: Some(protobuf::value::Kind::StringValue(text.to_owned())),
    }
}

fn struct_of(fields: Vec<(&str, protobuf::Value)>) -> protobuf::Struct {
    protobuf::Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_are_joined_not_overwritten() {
        let entry = |key: &str, value: &str| HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        };
        let entries = [
            entry("Authorization", "Bearer forged"),
            entry("authorization", "Bearer real"),
            entry("accept", "*/*"),
        ];
        let joined = join_header_map(entries.iter());
        assert_eq!(joined["authorization"], "Bearer forged,Bearer real");
        assert_eq!(joined["accept"], "*/*");
    }
}
