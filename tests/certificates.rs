//! Client certificates end to end, with certificates made here by rcgen (none committed):
//! identity from a SPIFFE URI SAN, a DNS SAN or the subject DN; the SHA-256 thumbprint as
//! key_id; expired and untrusted certificates refused; the certificate taken from
//! `client_certificate_pem` or from the TLS peer on an mTLS listener; and RFC 8705
//! certificate-bound JWTs (`cnf.x5t#S256`) accepted only with their certificate.

mod support;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm::HS256;
use portcullis::pb::{self, Reason, auth_client::AuthClient};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    date_time_ymd,
};
use serde_json::json;
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Leaf {
    pem: String,
    key_pem: String,
    thumbprint: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    edit: impl FnOnce(&mut CertificateParams),
) -> Leaf {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "legacy-client");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example");
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.der());
    Leaf {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        thumbprint: URL_SAFE_NO_PAD.encode(digest),
    }
}

fn request(pem: &str, token: Option<&str>) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        credential: token.map(|t| pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(t.to_owned())),
        }),
        client_certificate_pem: pem.to_owned(),
        ..Default::default()
    }
}

async fn call(
    client: &mut AuthClient<Channel>,
    request: pb::AuthenticateRequest,
) -> pb::AuthenticateResponse {
    client.authenticate(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn client_certificates_and_bound_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("Test CA");
    let stranger = ca("Other CA");
    std::fs::write(dir.path().join("ca.pem"), trusted.pem()).unwrap();
    let spiffe = leaf(&trusted, |p| {
        p.subject_alt_names = vec![
            SanType::DnsName("orders.example.com".try_into().unwrap()),
            SanType::URI("spiffe://example.org/ns/prod/sa/orders".try_into().unwrap()),
        ];
    });
    let dns = leaf(&trusted, |p| {
        p.subject_alt_names = vec![SanType::DnsName("api.example.com".try_into().unwrap())];
    });
    let dn_only = leaf(&trusted, |_| {});
    let expired = leaf(&trusted, |p| {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2001, 1, 1);
    });
    let untrusted = leaf(&stranger, |_| {});
    let key = TestKey::new(HS256, "hs");
    std::fs::write(dir.path().join("hmac"), &key.secret).unwrap();
    let running = start(&format!(
        "client_certificates: {{ca_files: [{dir}/ca.pem]}}\nissuers:\n  - name: hs\n    issuer: https://hs.test\n    hmac_secret: file:{dir}/hmac\n    algorithms: [HS256]\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
        dir = dir.path().display()
    ))
    .await;
    let mut client = client(&running).await;

    let identities = [
        (
            "a SPIFFE URI SAN wins",
            &spiffe,
            "spiffe://example.org/ns/prod/sa/orders",
        ),
        ("else the DNS SAN", &dns, "api.example.com"),
        (
            "else the subject DN",
            &dn_only,
            "CN=legacy-client, O=Example",
        ),
    ];
    for (name, cert, subject) in identities {
        let response = call(&mut client, request(&cert.pem, None)).await;
        assert_eq!(reason(&response), None, "{name}: {:?}", response.denial);
        let principal = response.principal.unwrap();
        assert_eq!(principal.subject, subject, "{name}");
        assert_eq!(principal.key_id, cert.thumbprint, "{name}");
        assert_eq!(principal.issuer, "client_certificates");
        assert_eq!(
            principal.credential_type,
            pb::CredentialType::ClientCertificate as i32
        );
        assert!(principal.claims.unwrap().fields.contains_key("x5t#S256"));
    }

    let mut bound = claims("https://hs.test", "api://x");
    bound["cnf"] = json!({"x5t#S256": spiffe.thumbprint});
    let bound = key.sign(&bound);
    let plain = key.sign(&claims("https://hs.test", "api://x"));
    let cases = [
        (
            "an expired certificate",
            request(&expired.pem, None),
            Some(Reason::Expired),
        ),
        (
            "a certificate from another CA",
            request(&untrusted.pem, None),
            Some(Reason::UntrustedIssuer),
        ),
        (
            "PEM that is not a certificate",
            request(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                None,
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "text that is not PEM",
            request("hello", None),
            Some(Reason::MalformedCredential),
        ),
        (
            "a bound token with its certificate",
            request(&spiffe.pem, Some(&bound)),
            None,
        ),
        (
            "a bound token with another certificate",
            request(&dns.pem, Some(&bound)),
            Some(Reason::CertificateMismatch),
        ),
        (
            "a bound token without a certificate",
            request("", Some(&bound)),
            Some(Reason::CertificateMismatch),
        ),
        (
            "an unbound token with a certificate",
            request(&dns.pem, Some(&plain)),
            None,
        ),
    ];
    for (name, request, expected) in cases {
        let response = call(&mut client, request).await;
        assert_eq!(reason(&response), expected, "{name}: {:?}", response.denial);
    }
    let response = call(&mut client, request(&spiffe.pem, Some(&bound))).await;
    assert_eq!(
        response.principal.unwrap().credential_type,
        pb::CredentialType::Jwt as i32
    );

    let response = client
        .authorize(pb::AuthorizeRequest {
            client_certificate_pem: dns.pem.clone(),
            required_scopes: vec!["orders:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.denial.unwrap().reason,
        Reason::InsufficientScope as i32
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_tls_peer_certificate_is_the_credential_on_an_mtls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("Test CA");
    let server = leaf(&trusted, |p| {
        p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    });
    let workload = leaf(&trusted, |p| {
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/ns/a/sa/b".try_into().unwrap(),
        )];
    });
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), trusted.pem()).unwrap();
    std::fs::write(path("server.pem"), &server.pem).unwrap();
    std::fs::write(path("server.key"), &server.key_pem).unwrap();
    let running = start(&format!(
        "server:\n  tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
        path("server.pem").display(),
        path("server.key").display(),
        path("ca.pem").display()
    ))
    .await;
    let connect = |identity: Option<&Leaf>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trusted.pem()))
            .domain_name("localhost");
        if let Some(leaf) = identity {
            tls = tls.identity(Identity::from_pem(&leaf.pem, &leaf.key_pem));
        }
        let endpoint = Channel::from_shared(format!("https://{}", running.grpc_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        async move { AuthClient::new(endpoint.connect().await.unwrap()) }
    };

    let mut with_cert = connect(Some(&workload)).await;
    let response = call(&mut with_cert, pb::AuthenticateRequest::default()).await;
    assert_eq!(reason(&response), None, "{:?}", response.denial);
    let principal = response.principal.unwrap();
    assert_eq!(principal.subject, "spiffe://example.org/ns/a/sa/b");
    assert_eq!(principal.key_id, workload.thumbprint);
    let response = call(&mut with_cert, request(&server.pem, None)).await;
    assert_eq!(
        reason(&response),
        Some(Reason::AmbiguousCredential),
        "a PEM that differs from the TLS peer's certificate"
    );

    let mut without_cert = connect(None).await;
    let response = call(&mut without_cert, pb::AuthenticateRequest::default()).await;
    assert_eq!(
        reason(&response),
        Some(Reason::MissingCredential),
        "client certificates are optional"
    );

    // The bundled client (used by `helm test`) speaks TLS and mTLS too.
    std::fs::write(path("workload.pem"), &workload.pem).unwrap();
    std::fs::write(path("workload.key"), &workload.key_pem).unwrap();
    let addr = format!("https://localhost:{}", running.grpc_addr.port());
    // The in-process server shares this test's runtime: wait for the CLI asynchronously.
    let cli = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(["authenticate", "--addr", &addr, "--ca-file"])
            .arg(path("ca.pem"))
            .args(extra);
        async move { command.output().await.unwrap() }
    };
    let anonymous = cli(&["--expect-reason", "MISSING_CREDENTIAL"]).await;
    assert_eq!(
        anonymous.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let workload_pem = path("workload.pem");
    let workload_key = path("workload.key");
    let mutual = cli(&[
        "--cert-file",
        workload_pem.to_str().unwrap(),
        "--key-file",
        workload_key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        mutual.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&mutual.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&mutual.stdout).unwrap();
    assert_eq!(json["principal"]["credential_type"], "CLIENT_CERTIFICATE");
    running.shutdown().await.unwrap();
}
