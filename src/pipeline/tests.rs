//! The phases through `Pipeline::run`, on the quickstart config plus a deny rule and a
//! query-credential route: one table of requests and the decisions they must get.

use serde_json::json;

use super::*;
use crate::{decision::Reason, headers::Headers};

fn pipeline() -> Pipeline {
    super::quickstart_with_rules(
        r#"
rules:
  - name: no-internal
    match: { http: { paths: ["/internal/**"] } }
    effect: deny
  - name: feed
    match: { http: { paths: ["/feed"] } }
    allow_query_credentials: true
"#,
    )
}

fn token(scope: &str) -> String {
    portcullis_test_support::quickstart_token(scope)
}

/// What a decision says, for comparing: allowed or the reason, and the rule.
fn outcome(decision: &Decision) -> (Option<Reason>, &str) {
    match decision {
        Decision::Allow { rule, .. } => (None, rule),
        Decision::Deny { denial, rule, .. } => (Some(denial.reason), rule),
    }
}

struct Case {
    name: &'static str,
    surface: Surface,
    method: &'static str,
    path: &'static str,
    authorization: Option<String>,
    query: Vec<String>,
    required_scopes: Vec<String>,
    expected: (Option<Reason>, &'static str),
}

fn case(name: &'static str, surface: Surface, path: &'static str) -> Case {
    Case {
        name,
        surface,
        method: "GET",
        path,
        authorization: None,
        query: Vec::new(),
        required_scopes: Vec::new(),
        expected: (None, ""),
    }
}

#[tokio::test]
async fn requests_get_the_decision_of_every_phase() {
    let pipeline = pipeline();
    let read = format!("Bearer {}", token("orders:read"));
    let cases = [
        Case {
            authorization: Some(read.clone()),
            ..case("authenticate: a valid token", Surface::authenticate, "")
        },
        Case {
            expected: (Some(Reason::MissingCredential), ""),
            ..case("authenticate: nothing", Surface::authenticate, "")
        },
        Case {
            authorization: Some("ApiKey pcl_abc".to_owned()),
            expected: (Some(Reason::UnsupportedCredential), ""),
            ..case("authenticate: no API key store", Surface::authenticate, "")
        },
        Case {
            expected: (None, "health-is-public"),
            ..case(
                "authorize: an anonymous rule",
                Surface::ext_authz,
                "/healthz",
            )
        },
        Case {
            authorization: Some(read.clone()),
            expected: (None, "orders-read"),
            ..case(
                "authorize: a satisfied rule",
                Surface::ext_authz,
                "/orders/1",
            )
        },
        Case {
            authorization: Some(read.clone()),
            method: "DELETE",
            expected: (Some(Reason::InsufficientScope), "orders-write"),
            ..case(
                "authorize: a scope missing",
                Surface::ext_authz,
                "/orders/1",
            )
        },
        Case {
            authorization: Some(read.clone()),
            expected: (Some(Reason::PolicyDenied), "no-internal"),
            ..case("authorize: a deny rule", Surface::ext_authz, "/internal/x/")
        },
        Case {
            expected: (Some(Reason::MissingCredential), ""),
            ..case(
                "authorize: no credential",
                Surface::ext_authz,
                "/internal/x",
            )
        },
        Case {
            query: vec![token("orders:read")],
            expected: (Some(Reason::MalformedCredential), ""),
            ..case("authorize: a query token", Surface::ext_authz, "/orders/1")
        },
        Case {
            query: vec![token("orders:read")],
            expected: (None, "feed"),
            ..case(
                "authorize: an allowed query token",
                Surface::ext_authz,
                "/feed",
            )
        },
        Case {
            authorization: Some(read.clone()),
            expected: (Some(Reason::MalformedRequest), ""),
            ..case(
                "authorize: an encoded slash",
                Surface::ext_authz,
                "/orders%2F1",
            )
        },
        Case {
            authorization: Some(read.clone()),
            required_scopes: vec!["orders:write".to_owned()],
            expected: (Some(Reason::InsufficientScope), "required_scopes"),
            ..case(
                "authorize: required scopes",
                Surface::authorize,
                "/orders/1",
            )
        },
    ];
    for case in cases {
        let headers: Vec<(&str, &str)> = case
            .authorization
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        let request = RequestAttrs {
            carried: Carried {
                query_credentials: &case.query,
                ..Carried::headers_only(Headers::new(&headers))
            },
            audience: "",
            required_scopes: &case.required_scopes,
            resource: Resource {
                http_method: case.method,
                path: case.path,
                host: "api.example.com",
                ..Resource::default()
            },
            scheme: "",
        };
        let decision = pipeline.run(case.surface, request).await;
        assert_eq!(outcome(&decision), case.expected, "{}", case.name);
    }
}

#[tokio::test]
async fn a_decision_carries_what_telemetry_and_the_upstream_need() {
    let pipeline = pipeline();
    let token = token("orders:read");
    let authorization = format!("Bearer {token}");
    let headers = [("authorization", authorization.as_str())];
    let request = |path| RequestAttrs {
        carried: Carried::headers_only(Headers::new(&headers)),
        audience: "",
        required_scopes: &[],
        resource: Resource {
            http_method: "GET",
            path,
            ..Resource::default()
        },
        scheme: "",
    };
    let Decision::Allow {
        principal: Some(principal),
        credential,
        ..
    } = pipeline.run(Surface::ext_authz, request("/orders/1")).await
    else {
        panic!("allowed")
    };
    assert_eq!(credential, Some(CredentialType::Jwt));
    let upstream_headers = pipeline.upstream_headers(&principal, None);
    assert!(upstream_headers.contains(&("x-user-id".to_owned(), "alice".to_owned())));
    let Decision::Deny {
        credential,
        credential_digest,
        ..
    } = pipeline
        .run(Surface::ext_authz, request("/internal/x"))
        .await
    else {
        panic!("denied")
    };
    assert_eq!(credential, Some(CredentialType::Jwt));
    assert_eq!(credential_digest, telemetry::short_digest(&token));
}

#[test]
fn binding_needs_the_certificate_a_token_names() {
    let leaf = [0x30u8, 0x03, 0x02, 0x01, 0x01];
    let bound = |thumbprint: &str| {
        Principal::new(
            "alice".to_owned(),
            "quickstart".into(),
            CredentialType::Jwt,
            json!({"cnf": {"x5t#S256": thumbprint}})
                .as_object()
                .unwrap()
                .clone(),
            Vec::new(),
            None,
            "".into(),
        )
    };
    let presented = |chain: Option<&[u8]>| Presented {
        scheme: credentials::TokenScheme::Bearer,
        headers: Headers::default(),
        credential: Ok(credentials::Credential::Jwt("a.b.c")),
        chain: chain.map(|der| {
            std::borrow::Cow::Owned(vec![rustls_pki_types::CertificateDer::from(der.to_vec())])
        }),
        client: None,
        in_query: false,
    };
    let right = bound(&certificate::thumbprint(&leaf));
    assert!(bind(&right, &presented(Some(&leaf))).is_ok());
    for (name, chain) in [("none", None), ("another", Some(&[0x30u8, 0x00][..]))] {
        assert_eq!(
            bind(&right, &presented(chain)).unwrap_err().reason,
            Reason::CertificateMismatch,
            "{name}"
        );
    }
    let unbound = Principal::new(
        "alice".to_owned(),
        "quickstart".into(),
        CredentialType::Jwt,
        serde_json::Map::new(),
        Vec::new(),
        None,
        "".into(),
    );
    assert!(bind(&unbound, &presented(None)).is_ok());
}
