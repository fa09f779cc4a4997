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
use bytes::Bytes;
use envoy_types::{
    ext_authz::v3::pb::{
        CheckRequest, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpStatus, OkHttpResponse,
    },
    pb::google::rpc,
};
use prost::Message;
use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    credentials::Carried,
    decision::{Decision, Denial, Principal, Reason, json_object_to_struct},
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::{self, TraceCarrier, metrics::Surface},
};

use super::wire::{CheckReply, authorization_server::Authorization};

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
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let forwarded = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| &h.headers);
        let span = match forwarded {
            Some(headers) => telemetry::request_span(
                "ext_authz",
                &[
                    TraceCarrier::Metadata(request.metadata()),
                    TraceCarrier::Headers(headers),
                ],
            ),
            None => {
                telemetry::request_span("ext_authz", &[TraceCarrier::Metadata(request.metadata())])
            }
        };
        let pipeline = self.pipeline.load_full();
        Ok(Response::new(
            check(&pipeline, request.get_ref()).instrument(span).await,
        ))
    }
}

/// Runs one Check through the pipeline and renders Envoy's answer.
pub async fn check(pipeline: &Pipeline, request: &CheckRequest) -> CheckReply {
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
            principal: Some(principal),
            rule,
            ..
        } => {
            let parts = principal.check_allow(pipeline.id(), &rule, || {
                allow_parts(pipeline, Some(&principal), &rule)
            });
            allowed(parts.ok_response.clone(), parts.dynamic_metadata.clone())
        }
        Decision::Allow {
            principal: None,
            rule,
            ..
        } => {
            let (ok_response, dynamic_metadata) = allow_parts(pipeline, None, &rule);
            allowed(ok_response, dynamic_metadata)
        }
        Decision::Deny { denial, rule, .. } => denied(&denial, &rule, pipeline.realm_for(&denial)),
    }
}

fn allowed(ok_response: Bytes, dynamic_metadata: Bytes) -> CheckReply {
    CheckReply {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        denied_response: None,
        ok_response: Some(ok_response),
        dynamic_metadata: Some(dynamic_metadata),
    }
}

/// An allow's `OkHttpResponse` and dynamic metadata, encoded: the identity headers set over
/// any incoming copies, every other name Portcullis can set removed, and the decision, rule
/// and principal as metadata. `None`: an anonymous (public-route) allow.
fn allow_parts(pipeline: &Pipeline, principal: Option<&Principal>, rule: &str) -> (Bytes, Bytes) {
    let upstream_headers = principal
        .map(|p| pipeline.upstream_headers(p))
        .unwrap_or_default();
    let set: Vec<HeaderValueOption> = upstream_headers
        .iter()
        .map(|(name, value)| header(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd))
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
        headers_to_remove.extend(pipeline.config.credentials.api_key_headers.iter().cloned());
    }
    let ok_response = OkHttpResponse {
        headers: set,
        headers_to_remove,
        ..Default::default()
    };
    let mut metadata = vec![
        ("decision", text_value("allow")),
        ("rule", text_value(rule)),
    ];
    if let Some(principal) = principal {
        metadata.push(("principal", principal_metadata(principal)));
    }
    (
        ok_response.encode_to_vec().into(),
        metadata_struct(metadata).encode_to_vec().into(),
    )
}

/// The principal as Envoy dynamic metadata: a struct of its fields and claims.
fn principal_metadata(principal: &Principal) -> prost_types::Value {
    let scopes = prost_types::ListValue {
        values: principal.scopes.iter().map(|s| text_value(s)).collect(),
    };
    let fields = metadata_struct(vec![
        ("subject", text_value(&principal.subject)),
        ("issuer", text_value(&principal.issuer)),
        (
            "credential_type",
            text_value(principal.credential_type.as_str()),
        ),
        ("key_id", text_value(&principal.key_id)),
        (
            "scopes",
            prost_types::Value {
                kind: Some(Kind::ListValue(scopes)),
            },
        ),
        (
            "claims",
            prost_types::Value {
                kind: Some(Kind::StructValue(json_object_to_struct(&principal.claims))),
            },
        ),
    ]);
    prost_types::Value {
        kind: Some(Kind::StructValue(fields)),
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
pub fn overloaded() -> CheckReply {
    denied(
        &Denial::new(Reason::Overloaded, "too many requests in flight"),
        "",
        "",
    )
}

fn denied(denial: &Denial, rule: &str, realm: &str) -> CheckReply {
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
    let metadata = metadata_struct(vec![
        ("decision", text_value("deny")),
        ("reason", text_value(denial.reason.as_str())),
        ("rule", text_value(rule)),
    ]);
    CheckReply {
        status: Some(rpc::Status {
            code: grpc_code as i32,
            message: denial.reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        denied_response: Some(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        }),
        ok_response: None,
        dynamic_metadata: Some(metadata.encode_to_vec().into()),
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

fn text_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

fn metadata_struct(fields: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::{
        ext_authz::v3::pb::{CheckResponse, HttpResponse},
        pb::{
            envoy::service::auth::v3::{AttributeContext, attribute_context},
            google::protobuf::{Struct, value::Kind as EnvoyKind},
        },
    };

    use super::*;

    /// The quickstart config plus a second rule that allows the same principal elsewhere.
    fn pipeline() -> Pipeline {
        crate::pipeline::quickstart_with_rules(
            r#"
rules:
  - name: reports-read
    match: { http: { methods: [GET], paths: ["/reports/**"] } }
    require: { scopes_all: ["orders:read"] }
"#,
        )
    }

    fn request(path: &str, authorization: Option<&str>) -> CheckRequest {
        let headers = authorization
            .map(|value| ("authorization".to_owned(), value.to_owned()))
            .into_iter()
            .chain([("x-user-id".to_owned(), "forged".to_owned())])
            .collect();
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: path.into(),
                        host: "api.example.com".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// The reply as Envoy decodes it: Envoy's own `CheckResponse` type.
    async fn envoy_reads(pipeline: &Pipeline, request: &CheckRequest) -> CheckResponse {
        let reply = check(pipeline, request).await;
        CheckResponse::decode(reply.encode_to_vec().as_slice()).expect("a CheckResponse")
    }

    fn text<'a>(fields: &'a Struct, name: &str) -> &'a str {
        match fields.fields.get(name).and_then(|v| v.kind.as_ref()) {
            Some(EnvoyKind::StringValue(text)) => text,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn ok(response: &CheckResponse) -> &OkHttpResponse {
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("an allow: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cached_principal_is_answered_from_parts_rendered_for_its_rule() {
        let pipeline = pipeline();
        let token = format!(
            "Bearer {}",
            portcullis_test_support::quickstart_token("orders:read")
        );
        let rules = ["orders-read", "orders-read", "reports-read", "orders-read"];
        let paths = ["/orders/1", "/orders/2", "/reports/1", "/orders/3"];
        for (path, rule) in paths.into_iter().zip(rules) {
            let response = envoy_reads(&pipeline, &request(path, Some(&token))).await;
            assert_eq!(response.status.as_ref().map(|s| s.code), Some(0), "{path}");
            let ok = ok(&response);
            let set: Vec<(&str, &str)> = ok
                .headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .map(|h| (h.key.as_str(), h.value.as_str()))
                .collect();
            assert!(set.contains(&("x-user-id", "alice")), "{path}: {set:?}");
            assert!(set.contains(&("x-user-email", "alice@example.com")));
            assert!(ok.headers_to_remove.contains(&"x_user_id".to_owned()));
            let metadata = response.dynamic_metadata.as_ref().expect("metadata");
            assert_eq!(text(metadata, "decision"), "allow");
            assert_eq!(text(metadata, "rule"), rule, "{path}");
            let Some(EnvoyKind::StructValue(principal)) = metadata
                .fields
                .get("principal")
                .and_then(|v| v.kind.as_ref())
            else {
                panic!("the principal in the metadata")
            };
            assert_eq!(text(principal, "subject"), "alice");
        }
    }

    #[tokio::test]
    async fn an_anonymous_allow_and_a_deny_read_as_envoys_check_response() {
        let pipeline = pipeline();
        let response = envoy_reads(&pipeline, &request("/healthz", None)).await;
        let ok = ok(&response);
        assert!(ok.headers.is_empty());
        for stripped in ["authorization", "x-user-id", "x-user-email", "x_user_id"] {
            assert!(
                ok.headers_to_remove.iter().any(|name| name == stripped),
                "{stripped}: {:?}",
                ok.headers_to_remove
            );
        }
        let response = envoy_reads(&pipeline, &request("/orders/1", None)).await;
        let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
            panic!("a deny")
        };
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
        let metadata = response.dynamic_metadata.as_ref().expect("metadata");
        assert_eq!(text(metadata, "reason"), "MISSING_CREDENTIAL");
    }

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
