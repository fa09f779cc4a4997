//! Traces and metrics (SPEC §8). An in-process OTLP collector (the official opentelemetry-proto
//! TraceService) receives the spans: the request span is parented on the caller's W3C
//! `traceparent` (gRPC metadata, or the headers of an ext_authz Check), carries the decision
//! attributes, has a child span for the JWKS fetch it waited on, and nothing exported contains
//! a credential. `/metrics` is scraped and parsed to see the counters and histograms move.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::*;
use jsonwebtoken::Algorithm::ES256;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use portcullis::pb;
use prost::Message;
use tonic::{Request, Response, Status, metadata::MetadataValue};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    fn resource_attributes(&self) -> HashMap<String, String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|rs| rs.resource.as_ref())
            .flat_map(|r| {
                r.attributes.iter().map(|kv| {
                    (
                        kv.key.clone(),
                        string_of(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                    )
                })
            })
            .collect()
    }

    fn exported_bytes(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.encode_to_vec())
            .collect()
    }
}

fn string_of(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                string_of(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const ISS: &str = "https://telemetry.test";
const AUD: &str = "api://orders";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_with_parents_and_attributes_and_no_secrets() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let telemetry_config: portcullis::config::TelemetryConfig =
        serde_norway::from_str(&format!("{{log_level: info, otlp_endpoint: '{endpoint}'}}"))
            .unwrap();
    let guard = portcullis::telemetry::init(&telemetry_config).unwrap();

    let key = TestKey::new(ES256, "k1");
    let rotated = TestKey::new(ES256, "k2");
    let jwks_server = FakeJwks::start(JwksMode::Down).await;
    jwks_server.serve(&[&key]);
    let yaml = format!(
        "issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_uri: {}\n    audiences: [{AUD}]\n    jwks: {{refetch_cooldown: 100ms}}\nauthorization:\n  rules:\n    - name: orders\n      match: {{ http: {{ paths: [\"/orders/*\"] }} }}\n      require: {{ scopes_all: [orders:read] }}\n",
        jwks_server.url
    );
    let running = start(&yaml).await;
    let shared = running.shared.clone();
    eventually(Duration::from_secs(10), || shared.is_ready()).await;
    let mut client = client(&running).await;
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");

    let valid = key.sign(&claims(ISS, AUD));
    let mut request = Request::new(pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(valid.clone())),
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    assert!(
        client
            .authenticate(request)
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );

    // A new key: the request waits on a JWKS refetch, which must be a child span.
    tokio::time::sleep(Duration::from_millis(150)).await;
    jwks_server.serve(&[&key, &rotated]);
    let refetching = rotated.sign(&claims(ISS, "api://billing"));
    let mut request = Request::new(pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(refetching.clone())),
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    let denied = client.authenticate(request).await.unwrap().into_inner();
    assert_eq!(reason(&denied), Some(pb::Reason::AudienceMismatch));

    // ext_authz: the trace context arrives in the HTTP headers Envoy forwards.
    let check_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let traceparent_header = format!("00-{check_trace}-{PARENT_ID}-01");
    let authorization = format!("Bearer {valid}");
    let check = check_request(
        "GET",
        "/orders/7",
        &[
            ("authorization", &authorization),
            ("traceparent", &traceparent_header),
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ext =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel,
        );
    let response = ext.check(check).await.unwrap().into_inner();
    assert_eq!(response.status.unwrap().code, 0);

    // Other tests in this binary serve requests too: this test's spans are those of its
    // two traces (and their children).
    let in_trace = |span: &Span, trace: &str| hex(&span.trace_id) == trace;
    let mut spans = Vec::new();
    for _ in 0..50 {
        guard.flush();
        spans = collector.spans();
        if spans
            .iter()
            .filter(|s| s.name == "authenticate" && in_trace(s, TRACE_ID))
            .count()
            >= 2
            && spans
                .iter()
                .any(|s| s.name == "ext_authz" && in_trace(s, check_trace))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let authenticate: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "authenticate" && in_trace(s, TRACE_ID))
        .collect();
    assert_eq!(
        authenticate.len(),
        2,
        "spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // Both requests continue the caller's trace (found by its id above), parented on its span.
    for span in &authenticate {
        assert_eq!(
            hex(&span.parent_span_id),
            PARENT_ID,
            "parented on the caller's span"
        );
    }
    let allowed = attributes(
        authenticate
            .iter()
            .find(|s| attributes(s)["decision"] == "allow")
            .unwrap(),
    );
    assert_eq!(allowed["surface"], "authenticate");
    assert_eq!(allowed["credential_type"], "JWT");
    assert_eq!(allowed["issuer"], "corp");
    let denied_span = authenticate
        .iter()
        .find(|s| attributes(s)["decision"] == "deny")
        .unwrap();
    assert_eq!(attributes(denied_span)["reason"], "AUDIENCE_MISMATCH");
    let fetch = spans
        .iter()
        .find(|s| s.name == "jwks_fetch" && s.parent_span_id == denied_span.span_id);
    assert!(
        fetch.is_some(),
        "the JWKS refetch is a child of the request span"
    );

    let check_span = spans
        .iter()
        .find(|s| s.name == "ext_authz" && in_trace(s, check_trace))
        .unwrap();
    assert_eq!(hex(&check_span.trace_id), check_trace);
    let check_attributes = attributes(check_span);
    assert_eq!(check_attributes["decision"], "allow");
    assert_eq!(check_attributes["rule"], "orders");

    let resource = collector.resource_attributes();
    assert_eq!(resource["service.name"], "portcullis");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));

    let exported = collector.exported_bytes();
    for token in [&valid, &refetching] {
        for part in token.split('.') {
            assert!(
                !holds_fragment(&exported, part.as_bytes()),
                "a token segment was exported"
            );
        }
    }

    // Metrics moved as expected.
    let metrics = reqwest::get(format!("http://{}/metrics", running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        metrics
            .lines()
            .filter(|line| {
                line.starts_with(name)
                    && labels
                        .iter()
                        .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[
                ("surface", "authenticate"),
                ("decision", "allow"),
                ("credential_type", "JWT")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[("surface", "authenticate"), ("reason", "AUDIENCE_MISMATCH")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[("surface", "ext_authz"), ("decision", "allow")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "portcullis_request_duration_seconds_count",
            &[("surface", "authenticate")]
        ),
        2.0
    );
    assert_eq!(
        value("portcullis_cache_lookups_total", &[("result", "hit")]),
        1.0,
        "the ext_authz check hit the cache"
    );
    assert!(
        value(
            "portcullis_jwks_fetches_total",
            &[("issuer", "corp"), ("result", "success")]
        ) >= 2.0
    );
    assert_eq!(value("portcullis_jwks_keys", &[("issuer", "corp")]), 2.0);
    assert_eq!(
        value("portcullis_jwt_cache_entries", &[]),
        1.0,
        "one token verified and cached"
    );
    assert!(value("portcullis_jwt_cache_bytes", &[]) >= 1024.0);
    assert!(metrics.contains("# UNIT portcullis_request_duration_seconds seconds"));
    assert!(!metrics.contains(&valid[valid.len() - 20..]));
    running.shutdown().await.unwrap();
}
