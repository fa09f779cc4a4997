//! `envoy.service.auth.v3.Authorization/Check` (SPEC §3): Envoy's external authorization on
//! the same pipeline as `Authorize`. Always an OK RPC — a deny, and even an internal failure,
//! is a `DeniedHttpResponse`, because an RPC error would let `failure_mode_allow` deployments
//! through.
//!
//! Allow: `OkHttpResponse` whose identity headers overwrite any incoming copies, whose
//! `headers_to_remove` lists every other header Portcullis can set (so callers cannot spoof
//! them), and the principal in `dynamic_metadata`. Deny: the SPEC status, `WWW-Authenticate`
//! and a small JSON body `{reason, message}`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use envoy_types::{
    ext_authz::v3::pb::{
        DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpStatus,
        OkHttpResponse,
    },
    pb::google::rpc,
};
use prost::Message;
use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    credentials::{self, Carried},
    decision::{Decision, Denial, IdentityToken, Principal, Reason},
    headers::Headers,
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::{self, TraceCarrier, metrics::Surface},
};

use super::wire::{
    AttributesView, CheckReply, CheckRequestView, HttpRequestView,
    authorization_server::Authorization,
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
        request: Request<CheckRequestView>,
    ) -> Result<Response<CheckReply>, Status> {
        let pipeline = self.pipeline.load_full();
        let view = request.get_ref();
        let joined = join_header_map(http_of(view));
        let parts = http_parts(http_of(view), &joined);
        let forwarded = parts.as_ref().map(|p| Headers::new(&p.headers));
        let span = match forwarded {
            Ok(headers) => telemetry::request_span(
                "ext_authz",
                &[
                    TraceCarrier::Metadata(request.metadata()),
                    TraceCarrier::Headers(headers),
                ],
            ),
            Err(_) => {
                telemetry::request_span("ext_authz", &[TraceCarrier::Metadata(request.metadata())])
            }
        };
        Ok(Response::new(
            check_parts(&pipeline, view, parts).instrument(span).await,
        ))
    }
}

/// Runs one Check through the pipeline and renders Envoy's answer.
pub async fn check(pipeline: &Pipeline, request: &CheckRequestView) -> CheckReply {
    let joined = join_header_map(http_of(request));
    check_parts(pipeline, request, http_parts(http_of(request), &joined)).await
}

fn http_of(request: &CheckRequestView) -> Option<&HttpRequestView> {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
}

/// A Check's HTTP request as the pipeline reads it: its strings checked as UTF-8, its
/// headers as pairs borrowed from the message.
#[derive(Default)]
struct HttpParts<'a> {
    method: &'a str,
    path: &'a str,
    host: &'a str,
    scheme: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

/// The HTTP parts of `http`, with `joined` (Envoy's `header_map`, when it sent that instead
/// of `headers`); MALFORMED_REQUEST past [`MAX_HEADERS`] or for text that is not UTF-8.
fn http_parts<'a>(
    http: Option<&'a HttpRequestView>,
    joined: &'a Result<Vec<(String, String)>, Denial>,
) -> Result<HttpParts<'a>, Denial> {
    let joined = joined.as_ref().map_err(Clone::clone)?;
    let Some(http) = http else {
        return Ok(HttpParts::default());
    };
    if http.headers.len() > MAX_HEADERS {
        return Err(too_many_headers());
    }
    let mut headers = Vec::with_capacity(http.headers.len() + joined.len());
    for entry in &http.headers {
        headers.push((text(&entry.name)?, text(&entry.value)?));
    }
    headers.extend(
        joined
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    Ok(HttpParts {
        method: text(&http.method)?,
        path: text(&http.path)?,
        host: text(&http.host)?,
        scheme: text(&http.scheme)?,
        headers,
    })
}

/// A field the API declares as `string`, received as bytes.
fn text(bytes: &Bytes) -> Result<&str, Denial> {
    std::str::from_utf8(bytes)
        .map_err(|_| Denial::new(Reason::MalformedRequest, "a request field is not UTF-8"))
}

fn too_many_headers() -> Denial {
    Denial::new(Reason::MalformedRequest, "too many request headers")
}

async fn check_parts(
    pipeline: &Pipeline,
    request: &CheckRequestView,
    parts: Result<HttpParts<'_>, Denial>,
) -> CheckReply {
    let parts = match parts {
        Ok(parts) => parts,
        Err(denial) => {
            pipeline.refused(Surface::ext_authz, &denial);
            return denied(&denial, "", &pipeline.challenge(&denial));
        }
    };
    let attributes = request.attributes.as_ref();
    let query_tokens = credentials::query_access_tokens(parts.path);
    // The peer certificate as Envoy sends it: URL-encoded PEM (`+` is not a space here).
    let certificate = attributes
        .and_then(|a| a.source.as_ref())
        .map(|source| percent_encoding::percent_decode(&source.certificate).decode_utf8_lossy())
        .unwrap_or_default();
    let attrs = RequestAttrs {
        carried: Carried {
            credential: None,
            headers: Headers::new(&parts.headers),
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
            http_method: parts.method,
            host: parts.host,
            path: parts.path,
            alternate_path: "",
            context_extensions: attributes.map(|a| &a.context_extensions),
        },
        scheme: parts.scheme,
    };
    match pipeline.run(Surface::ext_authz, attrs).await {
        Decision::Allow {
            principal: Some(principal),
            rule,
            identity_token,
            ..
        } => {
            let token = identity_token.as_deref();
            let serial = token.map_or(0, IdentityToken::serial);
            let parts = principal.check_allow(pipeline.id(), &rule, serial, || {
                allow_parts(pipeline, Some((&principal, token)), &rule)
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
        Decision::Deny { denial, rule, .. } => denied(&denial, &rule, &pipeline.challenge(&denial)),
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

/// An allow's `OkHttpResponse` and dynamic metadata, encoded: the identity headers (and the
/// identity token) set over any incoming copies, every other name Portcullis can set
/// removed, and the decision, rule and principal as metadata. `None`: an anonymous
/// (public-route) allow.
fn allow_parts(
    pipeline: &Pipeline,
    principal: Option<(&Principal, Option<&IdentityToken>)>,
    rule: &str,
) -> (Bytes, Bytes) {
    let upstream_headers = principal
        .map(|(p, token)| pipeline.upstream_headers(p, token))
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
    if let Some((principal, _)) = principal {
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
                kind: Some(Kind::StructValue(principal.claims.to_struct())),
            },
        ),
    ]);
    prost_types::Value {
        kind: Some(Kind::StructValue(fields)),
    }
}

/// The downstream address Envoy reports (`attributes.source.address`), if it is an IP.
fn source_address(attributes: Option<&AttributesView>) -> Option<std::net::IpAddr> {
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

/// Envoy's `header_map`, sent instead of `headers` (`encode_raw_headers`), as one list of
/// lower-case names; a repeated header's values are joined with `,` as HTTP does, so a
/// repeated credential header stays visible (and is AMBIGUOUS_CREDENTIAL) instead of the
/// last copy silently winning. Empty when the request has `headers`.
fn join_header_map(http: Option<&HttpRequestView>) -> Result<Vec<(String, String)>, Denial> {
    let Some(map) = http
        .filter(|http| http.headers.is_empty())
        .and_then(|http| http.header_map.as_ref())
    else {
        return Ok(Vec::new());
    };
    if map.headers.len() > MAX_HEADERS {
        return Err(too_many_headers());
    }
    let mut joined: Vec<(String, String)> = Vec::with_capacity(map.headers.len());
    for entry in &map.headers {
        let value = if entry.value.is_empty() {
            String::from_utf8_lossy(&entry.raw_value)
        } else {
            std::borrow::Cow::Borrowed(entry.value.as_str())
        };
        let name = entry.key.to_ascii_lowercase();
        match joined.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => joined.push((name, value.into_owned())),
        }
    }
    Ok(joined)
}

/// The answer to a Check that load shedding turns away: a 503 deny with reason OVERLOADED.
pub fn overloaded() -> CheckReply {
    let denial = Denial::new(Reason::Overloaded, "too many requests in flight");
    denied(&denial, "", &denial.www_authenticate(""))
}

/// A deny answer for `denial`, with its `WWW-Authenticate` value `challenge` (empty: none).
fn denied(denial: &Denial, rule: &str, challenge: &str) -> CheckReply {
    let row = denial.reason.row();
    let (status, grpc_code) = (row.http_status, row.grpc_code);
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if !challenge.is_empty() {
        headers.push(header(
            "www-authenticate",
            challenge,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    for (name, value) in denial.rate_limit.iter().flat_map(|limit| limit.headers()) {
        headers.push(header(
            name,
            &value,
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
        ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse},
        pb::{
            envoy::service::auth::v3::{AttributeContext, attribute_context},
            google::protobuf::{Struct, value::Kind as EnvoyKind},
        },
    };

    use super::*;
    use crate::grpc::wire::HeaderEntry;

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
        let reply = check(pipeline, &CheckRequestView::of(request)).await;
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

    /// The headers an allow sets upstream, by name.
    fn set_headers(ok: &OkHttpResponse) -> Vec<(&str, &str)> {
        ok.headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn identity_tokens_are_set_upstream_reused_while_cached_and_never_passed_through() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/identity");
        let pipeline = crate::pipeline::quickstart_with(|config| {
            config.response.identity_token = Some(
                serde_norway::from_str(&format!(
                    "{{issuer: 'https://portcullis.test', audience: upstream, \
                     signing_key: 'file:{keys}/ed25519-a.pem', \
                     audience_by_host: {{orders.internal: orders}}}}"
                ))
                .expect("an identity token config"),
            );
        });
        let token = format!(
            "Bearer {}",
            portcullis_test_support::quickstart_token("orders:read")
        );
        let identity = |response: &CheckResponse| {
            set_headers(ok(response))
                .iter()
                .find(|(name, _)| *name == "x-identity-token")
                .map(|(_, value)| value.to_string())
                .expect("the identity token is set")
        };
        let first = envoy_reads(&pipeline, &request("/orders/1", Some(&token))).await;
        let second = envoy_reads(&pipeline, &request("/orders/2", Some(&token))).await;
        assert_eq!(identity(&first), identity(&second), "not signed again");
        let minted = identity(&first);
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                minted.split('.').nth(1).expect("a payload"),
            )
            .expect("base64url"),
        )
        .expect("JSON claims");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "upstream");
        assert_eq!(claims["iss"], "https://portcullis.test");

        let mut to_orders = request("/orders/1", Some(&token));
        if let Some(http) = to_orders
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.host = "orders.internal".to_owned();
        }
        let orders = envoy_reads(&pipeline, &to_orders).await;
        assert_ne!(identity(&orders), minted, "another audience, another token");

        let anonymous = envoy_reads(&pipeline, &request("/healthz", None)).await;
        let ok = ok(&anonymous);
        assert!(set_headers(ok).is_empty());
        for stripped in ["x-identity-token", "x_identity_token"] {
            assert!(
                ok.headers_to_remove.iter().any(|name| name == stripped),
                "a client's own {stripped} never reaches the upstream"
            );
        }
    }

    #[tokio::test]
    async fn a_request_over_its_rate_limit_is_a_429_with_retry_after_and_ratelimit_headers() {
        let pipeline = crate::pipeline::quickstart_with(|config| {
            config.rate_limits.per_subject = Some(crate::config::LimitConfig {
                rate: "1/h".into(),
                burst: 1,
            });
        });
        let token = format!(
            "Bearer {}",
            portcullis_test_support::quickstart_token("orders:read")
        );
        let first = envoy_reads(&pipeline, &request("/orders/1", Some(&token))).await;
        ok(&first);
        let second = envoy_reads(&pipeline, &request("/orders/1", Some(&token))).await;
        let Some(HttpResponse::DeniedResponse(denied)) = &second.http_response else {
            panic!("limited")
        };
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(429));
        let headers: Vec<(&str, &str)> = denied
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        let retry_after: u64 = headers
            .iter()
            .find(|(name, _)| *name == "retry-after")
            .and_then(|(_, value)| value.parse().ok())
            .expect("Retry-After in seconds");
        assert!((3500..=3600).contains(&retry_after), "{retry_after}");
        assert!(headers.contains(&("ratelimit-policy", "\"subject\";q=1;w=3600")));
        assert!(
            headers.iter().any(
                |(name, value)| *name == "ratelimit" && value.starts_with("\"subject\";r=0;t=")
            )
        );
        let metadata = second.dynamic_metadata.as_ref().expect("metadata");
        assert_eq!(text(metadata, "reason"), "RATE_LIMITED");
    }

    fn view_with(http: HttpRequestView) -> CheckRequestView {
        CheckRequestView {
            attributes: Some(AttributesView {
                request: Some(super::super::wire::RequestView { http: Some(http) }),
                ..Default::default()
            }),
        }
    }

    fn entry(name: &'static str, value: &'static [u8]) -> HeaderEntry {
        HeaderEntry {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value),
        }
    }

    async fn denial_reason(pipeline: &Pipeline, view: &CheckRequestView) -> String {
        let reply = check(pipeline, view).await;
        let response = CheckResponse::decode(reply.encode_to_vec().as_slice()).expect("decodes");
        let metadata = response.dynamic_metadata.as_ref().expect("metadata");
        text(metadata, "reason").to_owned()
    }

    #[test]
    fn repeated_headers_are_joined_not_overwritten() {
        let value = |key: &str, value: &str| HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        };
        let http = HttpRequestView {
            header_map: Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
                headers: vec![
                    value("Authorization", "Bearer forged"),
                    value("authorization", "Bearer real"),
                    value("accept", "*/*"),
                ],
            }),
            ..Default::default()
        };
        let joined = join_header_map(Some(&http)).expect("within limits");
        assert_eq!(
            joined,
            [
                (
                    "authorization".to_owned(),
                    "Bearer forged,Bearer real".to_owned()
                ),
                ("accept".to_owned(), "*/*".to_owned()),
            ]
        );
    }

    #[test]
    fn the_view_reads_envoys_whole_check_request() {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address::PortSpecifier,
        };
        let peer = |ip: &str, certificate: &str| attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(PortSpecifier::PortValue(443)),
                    ..Default::default()
                })),
            }),
            certificate: certificate.to_owned(),
            principal: "spiffe://peer".to_owned(),
            ..Default::default()
        };
        let mut full = request("/orders/1?x=1", Some("Bearer a.b.c"));
        let attributes = full.attributes.as_mut().expect("attributes");
        attributes.source = Some(peer("192.0.2.7", "-----BEGIN%20CERTIFICATE-----"));
        attributes.destination = Some(peer("198.51.100.1", "ignored"));
        attributes
            .context_extensions
            .insert("policy".to_owned(), "admin".to_owned());
        let http = attributes
            .request
            .as_mut()
            .and_then(|r| r.http.as_mut())
            .expect("http");
        http.id = "request-id".to_owned();
        http.scheme = "https".to_owned();
        http.protocol = "HTTP/2".to_owned();
        http.body = "a body the view skips".to_owned();
        http.size = 21;

        let view = CheckRequestView::of(&full);
        let attributes = view.attributes.as_ref().expect("attributes");
        assert_eq!(source_address(Some(attributes)), "192.0.2.7".parse().ok());
        let source = attributes.source.as_ref().expect("source");
        assert_eq!(&source.certificate[..], b"-----BEGIN%20CERTIFICATE-----");
        assert_eq!(attributes.context_extensions["policy"], "admin");
        let joined = Ok(Vec::new());
        let parts = http_parts(http_of(&view), &joined).expect("valid");
        assert_eq!(
            (parts.method, parts.path, parts.host),
            ("GET", "/orders/1?x=1", "api.example.com")
        );
        let mut headers = parts.headers.clone();
        headers.sort_unstable();
        assert_eq!(
            headers,
            [("authorization", "Bearer a.b.c"), ("x-user-id", "forged")]
        );
    }

    #[tokio::test]
    async fn a_header_sent_twice_on_the_wire_is_seen_twice_not_overwritten() {
        // A map entry repeated on the wire: protobuf would keep the last, so a forged first
        // copy could hide. Both are seen, and two credentials are ambiguous.
        let view = view_with(HttpRequestView {
            method: Bytes::from_static(b"GET"),
            path: Bytes::from_static(b"/orders/1"),
            headers: vec![
                entry("authorization", b"Bearer forged.forged.forged"),
                entry("authorization", b"Bearer a.b.c"),
            ],
            ..Default::default()
        });
        assert_eq!(
            denial_reason(&pipeline(), &view).await,
            "AMBIGUOUS_CREDENTIAL"
        );
    }

    #[tokio::test]
    async fn text_that_is_not_utf8_and_too_many_headers_are_denied_not_errors() {
        let pipeline = pipeline();
        let bad_value = view_with(HttpRequestView {
            path: Bytes::from_static(b"/orders/1"),
            headers: vec![entry("authorization", b"Bearer \xff\xfe")],
            ..Default::default()
        });
        let bad_path = view_with(HttpRequestView {
            path: Bytes::from_static(b"/orders/\xc3"),
            ..Default::default()
        });
        let flood = view_with(HttpRequestView {
            path: Bytes::from_static(b"/orders/1"),
            headers: (0..=MAX_HEADERS).map(|_| entry("x-a", b"1")).collect(),
            ..Default::default()
        });
        for view in [bad_value, bad_path, flood] {
            assert_eq!(denial_reason(&pipeline, &view).await, "MALFORMED_REQUEST");
        }
    }
}
