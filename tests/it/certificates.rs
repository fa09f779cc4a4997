//! Client certificates end to end, with certificates made here by rcgen (none committed):
//! identity from a SPIFFE URI SAN, a DNS SAN or the subject DN; the SHA-256 thumbprint as
//! key_id; expired and untrusted certificates refused; the certificate taken from
//! `client_certificate_pem` or from the TLS peer on an mTLS listener; and RFC 8705
//! certificate-bound JWTs (`cnf.x5t#S256`) accepted only with their certificate.

use crate::support::*;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm::HS256;
use portcullis::pb::{self, Reason, auth_client::AuthClient};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    date_time_ymd,
};
use serde_json::json;
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
        let mut command = tokio::process::Command::new(crate::support::process::BIN);
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

/// A server certificate for `localhost` signed by `issuer`.
fn localhost(issuer: &CertifiedIssuer<'static, KeyPair>) -> Leaf {
    leaf(issuer, |p| {
        p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    })
}

/// Replaces a file the way Kubernetes and cert-manager do: a sibling renamed over it.
fn replace(path: &std::path::Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A new TLS connection to `addr` trusting only `trusted`, or why it failed.
async fn connect_trusting(
    addr: std::net::SocketAddr,
    trusted: &CertifiedIssuer<'static, KeyPair>,
) -> Result<AuthClient<Channel>, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted.pem()))
        .domain_name("localhost");
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(3));
    Ok(AuthClient::new(endpoint.connect().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tls_files_serve_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first_ca, second_ca) = (ca("First CA"), ca("Second CA"));
    let path = |name: &str| dir.path().join(name);
    let first = localhost(&first_ca);
    replace(&path("server.pem"), &first.pem);
    replace(&path("server.key"), &first.key_pem);
    // Relative paths resolve against the config file's directory.
    std::fs::write(
        path("portcullis.yaml"),
        "server:\n  grpc_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  tls: {cert_file: server.pem, key_file: server.key}\n",
    )
    .unwrap();
    let config = portcullis::config::load_file(&path("portcullis.yaml")).unwrap();
    let running = portcullis::server::start(config, Some(path("portcullis.yaml")))
        .await
        .unwrap();
    let addr = running.grpc_addr;
    let mut before_rotation = connect_trusting(addr, &first_ca).await.unwrap();
    assert!(connect_trusting(addr, &second_ca).await.is_err());

    // cert-manager renews: a new key and a certificate from another CA.
    let second = localhost(&second_ca);
    replace(&path("server.key"), &second.key_pem);
    replace(&path("server.pem"), &second.pem);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut after_rotation = loop {
        if let Ok(client) = connect_trusting(addr, &second_ca).await {
            break client;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate is not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        connect_trusting(addr, &first_ca).await.is_err(),
        "new connections no longer get the old certificate"
    );
    for client in [&mut before_rotation, &mut after_rotation] {
        let response = call(client, pb::AuthenticateRequest::default()).await;
        assert_eq!(reason(&response), Some(Reason::MissingCredential));
    }

    // A broken key is refused; the rotated identity keeps serving.
    let generation = running.shared.generation();
    replace(&path("server.key"), "-----BEGIN PRIVATE KEY-----\nbroken\n");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        running.shared.generation(),
        generation,
        "the reload is refused"
    );
    assert!(connect_trusting(addr, &second_ca).await.is_ok());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drags_out_its_tls_handshake_neither_delays_others_nor_stays() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("Test CA");
    let server = localhost(&trusted);
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("server.pem"), &server.pem).unwrap();
    std::fs::write(path("server.key"), &server.key_pem).unwrap();
    let running = start(&format!(
        "server:\n  tls: {{cert_file: {}, key_file: {}}}\n  limits: {{idle_timeout: 1s}}\n",
        path("server.pem").display(),
        path("server.key").display(),
    ))
    .await;
    // Clients that send the start of a ClientHello, then one more byte now and then: never
    // idle for the idle timeout, never done.
    let mut draggers = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(running.grpc_addr)
            .await
            .unwrap();
        stream
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        draggers.push(stream);
    }
    let dragging = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut closed = vec![false; draggers.len()];
        while started.elapsed() < std::time::Duration::from_secs(6) && closed.contains(&false) {
            for (stream, closed) in draggers.iter_mut().zip(closed.iter_mut()) {
                if !*closed && stream.write_all(&[0x01]).await.is_err() {
                    *closed = true;
                }
                let mut byte = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(
                    std::time::Duration::from_millis(50),
                    stream.read(&mut byte),
                )
                .await
                {
                    *closed = true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        (started.elapsed(), closed)
    });
    let mut client = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        connect_trusting(running.grpc_addr, &trusted),
    )
    .await
    .expect("a handshake is not queued behind the stalled ones")
    .unwrap();
    let response = call(&mut client, pb::AuthenticateRequest::default()).await;
    assert_eq!(reason(&response), Some(Reason::MissingCredential));
    let (elapsed, closed) = dragging.await.unwrap();
    assert!(
        !closed.contains(&false),
        "the server closes handshakes that outlast the idle timeout (after {elapsed:?})"
    );
    running.shutdown().await.unwrap();
}
