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
    decision::{Decision, Denial, Reason},
    pipeline::{Pipeline, RequestAttrs},
    policy::{Resource, normalize_path},
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
            headers = http
                .header_map
                .iter()
                .flat_map(|map| &map.headers)
                .map(|h| {
                    let value = if h.value.is_empty() {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    } else {
                        h.value.clone()
                    };
                    (h.key.to_ascii_lowercase(), value)
                })
                .collect();
            &headers
        }
        None => {
            headers = HashMap::new();
            &headers
        }
    };
    if headers_ref.len() > MAX_HEADERS {
        return denied(
            &Denial::new(Reason::MalformedCredential, "too many request headers"),
            "",
            pipeline.realm(),
        );
    }
    let method = http.map_or("", |h| h.method.as_str());
    let raw_path = http.map_or("", |h| h.path.as_str());
    let path = normalize_path(raw_path);
    let (grpc_service, grpc_method) = grpc_target(method, &path, headers_ref);
    let query = raw_path
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
        .unwrap_or("");
    let query_token = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned());
    // The peer certificate as Envoy sends it: URL-encoded PEM (`+` is not a space here).
    let certificate = attributes
        .and_then(|a| a.source.as_ref())
        .map(|source| percent_encoding::percent_decode_str(&source.certificate).decode_utf8_lossy())
        .unwrap_or_default();
    let attrs = RequestAttrs {
        credential: None,
        headers: headers_ref,
        audience: "",
        required_scopes: &[],
        client_certificate_pem: &certificate,
        peer_certificates: &[],
        query_credential: query_token.as_deref(),
        resource: Resource {
            grpc_service,
            grpc_method,
            http_method: method,
            host: http.map_or("", |h| h.host.as_str()),
            path: &path,
            context_extensions: attributes.map(|a| &a.context_extensions),
        },
    };
    match pipeline.run(Surface::ext_authz, attrs).await {
        Decision::Allow {
            principal,
            rule,
            upstream_headers,
        } => {
            let set: Vec<HeaderValueOption> = upstream_headers
                .iter()
                .map(|(name, value)| {
                    header(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
                })
                .collect();
            let headers_to_remove = pipeline
                .upstream_header_names()
                .filter(|name| !upstream_headers.iter().any(|(set, _)| set == name))
                .map(str::to_owned)
                .collect();
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

/// gRPC through Envoy: `POST /package.Service/Method` (content-type application/grpc, or a
/// path of that shape).
fn grpc_target<'a>(
    method: &str,
    path: &'a str,
    headers: &HashMap<String, String>,
) -> (&'a str, &'a str) {
    if !method.eq_ignore_ascii_case("POST") {
        return ("", "");
    }
    let is_grpc = headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, rpc)) if !rpc.contains('/') && (is_grpc || service.contains('.')) => {
            (service, rpc)
        }
        _ => ("", ""),
    }
}

fn denied(denial: &Denial, rule: &str, realm: &str) -> CheckResponse {
    let status = denial.reason.http_status();
    let grpc_code = match status {
        400 => tonic::Code::InvalidArgument,
        403 => tonic::Code::PermissionDenied,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Unauthenticated,
    };
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
    fn grpc_requests_are_recognized_by_path_and_content_type() {
        let grpc = HashMap::from([("content-type".to_owned(), "application/grpc".to_owned())]);
        let none = HashMap::new();
        assert_eq!(
            grpc_target("POST", "/acme.orders.v1.Orders/Get", &none),
            ("acme.orders.v1.Orders", "Get")
        );
        assert_eq!(grpc_target("POST", "/Orders/Get", &grpc), ("Orders", "Get"));
        assert_eq!(grpc_target("POST", "/orders/get", &none), ("", ""));
        assert_eq!(grpc_target("GET", "/acme.Orders/Get", &grpc), ("", ""));
        assert_eq!(grpc_target("POST", "/a.B/c/d", &grpc), ("", ""));
    }
}
