//! HTTP Basic end to end: an htpasswd file with bcrypt ($2a$/$2b$/$2y$) and argon2id entries
//! (the argon2id one made by `portcullis passwd`), RFC 7617 parsing, the `Basic` challenge
//! with `basic.realm`, throttling of repeated failures per user and per client address,
//! weak hash formats refused at load, and hot reload of the file.

use std::{
    collections::HashMap,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::*;
use base64::{Engine, engine::general_purpose::STANDARD};
use portcullis::pb::{self, Reason, auth_client::AuthClient};
use tonic::transport::Channel;

use crate::support::process::BIN;

fn passwd_line(user: &str, password: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(line.starts_with(&format!("{user}:$argon2id$")), "{line}");
    assert!(!line.contains(password));
    line
}

fn htpasswd(dir: &Path) -> std::path::PathBuf {
    let bcrypt_b = bcrypt::hash("open:sesame:", 4).unwrap();
    let text = format!(
        "# staff\nalice:{bcrypt_b}\nbob:{}\ncarol:{}\n{}\n",
        bcrypt_b.replacen("$2b$", "$2a$", 1),
        bcrypt_b.replacen("$2b$", "$2y$", 1),
        passwd_line("dave", "pässwörd"),
    );
    let path = dir.join("htpasswd");
    std::fs::write(&path, text).unwrap();
    path
}

fn header(value: &str, client: Option<&str>) -> pb::AuthenticateRequest {
    let mut headers = HashMap::from([("authorization".to_owned(), value.to_owned())]);
    if let Some(ip) = client {
        headers.insert("x-forwarded-for".to_owned(), format!("{ip}, 10.0.0.1"));
    }
    pb::AuthenticateRequest {
        headers,
        ..Default::default()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

async fn call(
    client: &mut AuthClient<Channel>,
    request: pb::AuthenticateRequest,
) -> pb::AuthenticateResponse {
    client.authenticate(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn basic_credentials_against_an_htpasswd_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path());
    let running = start(&format!(
        "basic: {{realm: staff, htpasswd_file: {}, max_failures: 3, max_client_failures: 4, failure_window: 60s}}\ncredentials: {{trusted_proxies: [127.0.0.1, 10.0.0.0/8]}}\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
        path.display()
    ))
    .await;
    let mut client = client(&running).await;
    let oneof = |kind| pb::AuthenticateRequest {
        credential: Some(pb::Credential { kind: Some(kind) }),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::AuthenticateRequest, Option<Reason>)> = vec![
        (
            "a $2b$ entry with colons in the password",
            header(&basic("alice", "open:sesame:"), None),
            None,
        ),
        (
            "a $2a$ entry",
            header(&basic("bob", "open:sesame:"), None),
            None,
        ),
        (
            "a $2y$ entry",
            header(&basic("carol", "open:sesame:"), None),
            None,
        ),
        (
            "an argon2id entry with a non-ASCII password",
            header(&basic("dave", "pässwörd"), None),
            None,
        ),
        (
            "the scheme is case-insensitive",
            header(
                &basic("alice", "open:sesame:").replace("Basic", "bAsIc"),
                None,
            ),
            None,
        ),
        (
            "the oneof's basic credential",
            oneof(pb::credential::Kind::Basic(pb::BasicCredential {
                username: "alice".into(),
                password: "open:sesame:".into(),
            })),
            None,
        ),
        (
            "the oneof's raw authorization value",
            oneof(pb::credential::Kind::Authorization(basic(
                "dave",
                "pässwörd",
            ))),
            None,
        ),
        (
            "a wrong password",
            header(&basic("erin", "nope"), Some("10.1.1.1")),
            Some(Reason::InvalidSignature),
        ),
        (
            "an unknown user",
            header(&basic("mallory", "open:sesame:"), Some("10.1.1.2")),
            Some(Reason::InvalidSignature),
        ),
        (
            "no colon",
            header(&format!("Basic {}", STANDARD.encode("alice")), None),
            Some(Reason::MalformedCredential),
        ),
        (
            "invalid base64",
            header("Basic %%%", None),
            Some(Reason::MalformedCredential),
        ),
        (
            "invalid UTF-8",
            header(&format!("Basic {}", STANDARD.encode(b"al\xffce:x")), None),
            Some(Reason::MalformedCredential),
        ),
    ];
    for (name, request, expected) in cases {
        let response = call(&mut client, request).await;
        assert_eq!(reason(&response), expected, "{name}: {:?}", response.denial);
        if let Some(denial) = response.denial {
            assert_eq!(
                denial.www_authenticate, "Basic realm=\"staff\", charset=\"UTF-8\"",
                "{name}"
            );
            assert!(!denial.message.contains("sesame"), "{name}");
        }
    }

    let principal = call(&mut client, header(&basic("alice", "open:sesame:"), None))
        .await
        .principal
        .unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.issuer, "basic");
    assert_eq!(principal.credential_type, pb::CredentialType::Basic as i32);
    assert!(principal.scopes.is_empty());

    for (scopes, allowed) in [(vec![], true), (vec!["orders:read"], false)] {
        let response = client
            .authorize(pb::AuthorizeRequest {
                headers: header(&basic("alice", "open:sesame:"), None).headers,
                required_scopes: scopes.iter().map(|s: &&str| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.allowed, allowed, "{scopes:?}");
    }

    // Per (user, client) pair: three failures from one client, then even the right password
    // from that client is RATE_LIMITED; the real user elsewhere is not locked out.
    for _ in 0..3 {
        let response = call(
            &mut client,
            header(&basic("bob", "wrong"), Some("192.0.2.1")),
        )
        .await;
        assert_eq!(reason(&response), Some(Reason::InvalidSignature));
    }
    let response = call(
        &mut client,
        header(&basic("bob", "open:sesame:"), Some("192.0.2.1")),
    )
    .await;
    assert_eq!(reason(&response), Some(Reason::RateLimited));
    assert_eq!(
        response.denial.unwrap().www_authenticate,
        "",
        "429 carries no challenge"
    );
    for other in [Some("192.0.2.2"), None] {
        let response = call(&mut client, header(&basic("bob", "open:sesame:"), other)).await;
        assert_eq!(
            reason(&response),
            None,
            "bob from {other:?} is not locked out"
        );
    }
    // Per client address: failures for different users from one address add up.
    for user in ["x1", "x2", "x3", "x4"] {
        let response = call(
            &mut client,
            header(&basic(user, "wrong"), Some("192.0.2.7")),
        )
        .await;
        assert_eq!(reason(&response), Some(Reason::InvalidSignature));
    }
    assert_eq!(
        reason(
            &call(
                &mut client,
                header(&basic("carol", "open:sesame:"), Some("192.0.2.7"))
            )
            .await
        ),
        Some(Reason::RateLimited)
    );
    assert_eq!(
        reason(
            &call(
                &mut client,
                header(&basic("carol", "open:sesame:"), Some("192.0.2.8"))
            )
            .await
        ),
        None,
        "another client is not affected"
    );
    running.shutdown().await.unwrap();
}

/// Without trusted proxies, `x-forwarded-for` is the client's own writing: rotating or
/// omitting it does not escape the throttle (the caller's address counts).
#[tokio::test]
async fn forwarded_addresses_from_an_untrusted_caller_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path());
    let running = start(&format!(
        "basic: {{htpasswd_file: {}, max_failures: 3, failure_window: 60s}}\n",
        path.display()
    ))
    .await;
    let mut client = client(&running).await;
    for (i, forwarded) in [Some("198.51.100.1"), None, Some("198.51.100.2")]
        .into_iter()
        .enumerate()
    {
        let response = call(&mut client, header(&basic("alice", "wrong"), forwarded)).await;
        assert_eq!(
            reason(&response),
            Some(Reason::InvalidSignature),
            "attempt {i}"
        );
    }
    for forwarded in [Some("198.51.100.3"), None, Some("203.0.113.50")] {
        let response = call(&mut client, header(&basic("alice", "guess"), forwarded)).await;
        assert_eq!(
            reason(&response),
            Some(Reason::RateLimited),
            "spoofed {forwarded:?} does not reset the count"
        );
    }
    running.shutdown().await.unwrap();
}

/// bcrypt reads 72 bytes: a password that only shares its first 72 bytes is refused.
#[tokio::test]
async fn bcrypt_passwords_longer_than_72_bytes_are_refused_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let long = "p".repeat(72);
    let hash = bcrypt::hash(&long, 4).unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("long:{hash}\n")).unwrap();
    let running = start(&format!("basic: {{htpasswd_file: {}}}\n", path.display())).await;
    let mut client = client(&running).await;
    let exact = call(&mut client, header(&basic("long", &long), None)).await;
    assert_eq!(reason(&exact), None, "72 bytes is the whole password");
    let longer = call(
        &mut client,
        header(&basic("long", &format!("{long}EXTRA")), None),
    )
    .await;
    assert_eq!(reason(&longer), Some(Reason::InvalidSignature));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn weak_htpasswd_formats_are_refused_at_load_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let sha = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    std::fs::write(
        &path,
        format!("alice:{}\nbob:{sha}\n", bcrypt::hash("x", 4).unwrap()),
    )
    .unwrap();
    let config = portcullis::config::load_str(&format!(
        "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0}}\nbasic: {{htpasswd_file: {}}}\n",
        path.display()
    ))
    .unwrap();
    let Err(err) = portcullis::server::start(config, None).await else {
        panic!("a {{SHA}} entry must be refused");
    };
    let message = err.to_string();
    assert!(message.contains("basic.htpasswd_file"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("{SHA}"), "{message}");
    assert!(!message.contains(sha), "the hash is not echoed: {message}");
}

#[tokio::test]
async fn htpasswd_changes_are_hot_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path());
    let running = start_watching(
        &dir.path().join("config.yaml"),
        &format!("basic: {{htpasswd_file: {}}}\n", path.display()),
    )
    .await;
    let mut client = client(&running).await;
    let frank = header(&basic("frank", "new-hire"), None);
    assert_eq!(
        reason(&call(&mut client, frank.clone()).await),
        Some(Reason::InvalidSignature)
    );
    std::fs::write(&path, format!("{}\n", passwd_line("frank", "new-hire"))).unwrap();
    let start = std::time::Instant::now();
    while reason(&call(&mut client, frank.clone()).await).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "htpasswd change not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reason(&call(&mut client, header(&basic("alice", "open:sesame:"), None)).await),
        Some(Reason::InvalidSignature),
        "alice left the file"
    );
    running.shutdown().await.unwrap();
}
