//! Micro-benchmarks of one request after verification is cached: the pipeline alone
//! (Authenticate and Check through `Pipeline::run`) and the whole Envoy Check translation
//! (`ext_authz::check`: request to `CheckResponse`), on the quickstart config. The gap
//! between them is the translation; the gap to the gRPC floor is what issue 11 works on.
//! `check_allow_cached_from_wire` is all the server does between the gRPC frames: decode
//! Envoy's message, decide, encode the answer.

use std::{hint::black_box, path::Path, sync::Arc};

use bytes::Bytes;
use prost::Message;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::{
    build::{self, BuildMode},
    credentials::Carried,
    grpc::{ext_authz, wire::CheckRequestView},
    headers::Headers,
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::metrics::{Metrics, Surface},
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// The quickstart config, plus a CEL rule on `/reports/**` like the load benchmark's.
fn pipeline() -> Pipeline {
    let mut config =
        portcullis::config::load_file(Path::new(&format!("{EXAMPLES}/quickstart.yaml")))
            .expect("the quickstart config is valid");
    let cel: portcullis::config::AuthorizationConfig = serde_norway::from_str(
        r#"
rules:
  - name: reports-cel
    match: { http: { paths: ["/reports/**"] } }
    require: { cel: "claims.sub == 'alice' && request.http.method == 'GET' && claims.aud == 'api://quickstart'" }
"#,
    )
    .unwrap();
    config.authorization.rules.extend(cel.rules);
    let client = portcullis::outbound::http_client().unwrap();
    let metrics = Arc::new(Metrics::new(true));
    build::pipeline(config, &client, &metrics, None, BuildMode::Check).unwrap()
}

/// An Envoy Check as Envoy sends it: a handful of ordinary headers and the token.
fn check_request(
    authorization: &str,
    method: &str,
    path: &str,
) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    let headers = [
        (":authority", "api.example.com"),
        (":method", method),
        (":path", path),
        ("accept", "application/json"),
        ("user-agent", "curl/8.5.0"),
        ("x-request-id", "6f1c1b4e-7b0e-4f39-9d2a-3b7f0f4f2a11"),
        ("x-forwarded-proto", "https"),
        ("authorization", authorization),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
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

fn bench_cached(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipeline = pipeline();
    let authorization = format!(
        "Bearer {}",
        portcullis_test_support::quickstart_token("orders:read")
    );
    let headers = [("authorization", authorization.as_str())];
    let authenticate = RequestAttrs {
        carried: Carried::headers_only(Headers::new(&headers)),
        audience: "",
        required_scopes: &[],
        resource: Resource::default(),
        scheme: "",
    };
    let allow_wire = Bytes::from(check_request(&authorization, "GET", "/orders/7").encode_to_vec());
    let allow = CheckRequestView::decode(allow_wire.clone()).expect("decodes");
    let cel = CheckRequestView::of(&check_request(&authorization, "GET", "/reports/7"));
    let deny = CheckRequestView::of(&check_request(&authorization, "DELETE", "/orders/7"));
    // Warm the verification cache, and check the answers before timing them.
    runtime.block_on(async {
        let decision = pipeline.run(Surface::authenticate, authenticate).await;
        assert!(matches!(
            decision,
            portcullis::decision::Decision::Allow { .. }
        ));
        let allowed = ext_authz::check(&pipeline, &allow).await;
        assert_eq!(allowed.status.unwrap().code, 0);
        let by_cel = ext_authz::check(&pipeline, &cel).await;
        assert_eq!(by_cel.status.unwrap().code, 0, "the CEL rule allows");
        let denied = ext_authz::check(&pipeline, &deny).await;
        assert_eq!(
            denied.status.unwrap().code,
            tonic::Code::PermissionDenied as i32
        );
    });

    c.bench_function("pipeline/authenticate_cached", |b| {
        b.iter(|| runtime.block_on(pipeline.run(Surface::authenticate, black_box(authenticate))))
    });
    c.bench_function("ext_authz/check_allow_cached", |b| {
        b.iter(|| runtime.block_on(ext_authz::check(&pipeline, black_box(&allow))))
    });
    // What tonic does next: encode the answer into the response body.
    let mut body = Vec::with_capacity(4096);
    c.bench_function("ext_authz/check_allow_cached_encoded", |b| {
        b.iter(|| {
            let response = runtime.block_on(ext_authz::check(&pipeline, black_box(&allow)));
            body.clear();
            prost::Message::encode(&response, &mut body).expect("a Vec grows");
            black_box(&body);
        })
    });
    c.bench_function("ext_authz/check_allow_cached_from_wire", |b| {
        b.iter(|| {
            let request = CheckRequestView::decode(black_box(allow_wire.clone())).expect("decodes");
            let response = runtime.block_on(ext_authz::check(&pipeline, &request));
            body.clear();
            prost::Message::encode(&response, &mut body).expect("a Vec grows");
            black_box(&body);
        })
    });
    c.bench_function("ext_authz/check_cel_allow_cached", |b| {
        b.iter(|| runtime.block_on(ext_authz::check(&pipeline, black_box(&cel))))
    });
    c.bench_function("ext_authz/check_deny_cached", |b| {
        b.iter(|| runtime.block_on(ext_authz::check(&pipeline, black_box(&deny))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_cached
}
criterion_main!(benches);
