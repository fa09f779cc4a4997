//! The `portcullis` binary as users run it: `check-config` (exit 64 with every error),
//! `serve` with SIGTERM (NOT_SERVING, drain, exit 0), `authenticate` and `token inspect`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::support::process::{BIN, Options, ServerProcess, free_port};

/// `keys generate` needs a subject and prints the format asked for.
#[test]
fn keys_generate_prints_the_format_asked_for() {
    let missing = Command::new(BIN)
        .args(["keys", "generate"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "no silent default subject");
    let generate = |format: &str| {
        let out = Command::new(BIN)
            .args([
                "keys",
                "generate",
                "--subject",
                "billing",
                "--scopes",
                "orders:read",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&generate("json")).unwrap();
    let key = json["key"].as_str().unwrap();
    assert!(key.starts_with("pcl_"));
    assert_eq!(json["file_entry"]["subject"], "billing");
    assert!(json["sql"].as_str().unwrap().starts_with("INSERT"));
    let yaml = generate("yaml");
    assert!(
        yaml.starts_with("# API key (shown once): pcl_")
            && yaml.contains("sha256:")
            && !yaml.contains("INSERT")
    );
    let sql = generate("sql");
    assert!(
        sql.starts_with("-- API key (shown once): pcl_")
            && sql.contains("INSERT")
            && !sql.contains("sha256:")
    );
}

/// `check-config --offline` (the check for Helm-rendered config) compiles every glob and CEL
/// expression, as `serve` does.
#[test]
fn offline_check_compiles_globs_and_cel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(
        &path,
        "cache: {max_entries: many}\nauthorization:\n  rules:\n    - name: bad-glob\n      match: {http: {paths: [\"/a/[\"]}}\n    - name: bad-cel\n      require: {cel: \"claims.x ==\"}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad-glob") && stderr.contains("bad-cel"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cache.max_entries"),
        "a type error elsewhere is reported in the same run: {stderr}"
    );
}

#[test]
fn check_config_reports_every_error_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  grpc_listen: nonsense\nissuers:\n  - name: a\n    issuer: https://a.test\n    hmac_secret: tooshort\n    algorithms: [HS256]\n    colour: red\ncache:\n  max_ttl: forever\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["server.grpc_listen", "issuers[0].colour", "cache.max_ttl"] {
        assert!(
            stderr.contains(expected),
            "missing {expected} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("tooshort"), "a secret value was printed");

    // Structure valid, but the HMAC secret is too short: found when key material is built.
    std::fs::write(&path, "issuers:\n  - name: a\n    issuer: https://a.test\n    hmac_secret: env:PORTCULLIS_TEST_SHORT_SECRET\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("PORTCULLIS_TEST_SHORT_SECRET", "0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    assert!(!stderr.contains("0123456789"), "a secret value was printed");
    let offline = Command::new(BIN)
        .args(["check-config", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        offline.status.code(),
        Some(0),
        "offline checks structure only"
    );

    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", quickstart])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The quickstart config served by the binary, and its gRPC port.
struct Quickstart {
    server: ServerProcess,
    grpc: u16,
}

/// A secret written as a YAML number (all digits) is refused without being echoed, by
/// `check-config` and in the error line of a refused reload.
#[test]
fn a_secret_that_is_not_a_string_is_never_echoed() {
    const DIGITS: &str = "8675309123456789";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let with_secret = |secret: &str| {
        format!(
            "server: {{grpc_listen: 127.0.0.1:{}, admin_listen: 127.0.0.1:{}}}\nissuers:\n  - name: corp\n    issuer: https://idp.test\n    introspection: {{endpoint: http://127.0.0.1:9/introspect, client_id: portcullis, client_secret: {secret}}}\n",
            free_port(),
            free_port()
        )
    };
    std::fs::write(&path, with_secret(DIGITS)).unwrap();
    for args in [
        vec!["check-config", "--config"],
        vec!["check-config", "--offline", "--config"],
    ] {
        let out = Command::new(BIN).args(&args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(output.contains("client_secret"), "{output}");
        assert!(output.contains("must be a string"), "{output}");
        assert!(
            !output.contains("8675309"),
            "the secret was echoed: {output}"
        );
    }

    // A running server refuses the same change on reload, without echoing it either.
    std::fs::write(&path, with_secret("\"a-quoted-secret\"")).unwrap();
    // Killed (by PID) when dropped, also when an assertion below fails.
    let mut server = ServerProcess::spawn(
        &path,
        Options {
            capture_logs: true,
            ..Options::default()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, with_secret(DIGITS)).unwrap();
    let lines = server.log_lines();
    let started = Instant::now();
    let refused = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line about the refused change");
        if line.contains("configuration change refused") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    drop(server);
    assert!(refused.contains("must be a string"), "{refused}");
    assert!(
        !refused.contains("8675309"),
        "the secret was echoed: {refused}"
    );
}

fn serve_quickstart() -> Quickstart {
    let dir = env!("CARGO_MANIFEST_DIR");
    let grpc = free_port();
    let admin = free_port();
    let config = std::fs::read_to_string(format!("{dir}/examples/quickstart.yaml"))
        .unwrap()
        .replace("127.0.0.1:50051", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
        .replace("path: keys/", &format!("path: {dir}/examples/keys/"));
    let path = std::env::temp_dir().join(format!("portcullis-cli-test-{grpc}.yaml"));
    std::fs::write(&path, config).unwrap();
    let server = ServerProcess::spawn_ready(
        &path,
        &format!("127.0.0.1:{admin}"),
        Options {
            capture_logs: true,
            ..Options::default()
        },
    );
    Quickstart { server, grpc }
}

fn quickstart_token(extra: &[&str]) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut args = vec![
        "token",
        "sign",
        "--alg",
        "ES256",
        "--kid",
        "quickstart-es256",
        "--iss",
        "https://quickstart.portcullis.invalid",
        "--sub",
        "alice",
        "--aud",
        "api://quickstart",
        "--scope",
        "orders:read",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(BIN)
        .args(&args)
        .arg("--key")
        .arg(format!("{dir}/examples/keys/quickstart-es256.key.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn authenticate_cli_prints_json_and_sets_the_exit_code() {
    let server = serve_quickstart();
    let addr = format!("http://127.0.0.1:{}", server.grpc);
    let token = quickstart_token(&["--claim", "roles=[\"admin\"]"]);

    // HOST:PORT without a scheme is plaintext; unknown schemes and reasons are refused.
    let bare = format!("127.0.0.1:{}", server.grpc);
    let out = Command::new(BIN)
        .args(["authenticate", "--addr", &bare, "--token", &token])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (args, expected) in [
        (vec!["--addr", "ftp://127.0.0.1:1"], "unsupported scheme"),
        (vec!["--addr", "localhost"], "HOST:PORT"),
        (
            vec!["--expect-reason", "MISSING_CREDENTIALS"],
            "unknown reason code",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("authenticate")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let out = Command::new(BIN)
        .args(["authenticate", "--addr", &addr, "--token", &token])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["authenticated"], true);
    assert_eq!(json["principal"]["subject"], "alice");
    assert_eq!(json["principal"]["credential_type"], "JWT");
    assert_eq!(json["principal"]["claims"]["roles"][0], "admin");

    let header = format!("authorization:Bearer {token}x");
    let out = Command::new(BIN)
        .args(["authenticate", "--addr", &addr, "--header", &header])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["denial"]["reason"], "MALFORMED_CREDENTIAL");

    let out = Command::new(BIN)
        .args([
            "authenticate",
            "--addr",
            &addr,
            "--expect-reason",
            "MISSING_CREDENTIAL",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(BIN)
        .args([
            "authenticate",
            "--addr",
            "http://127.0.0.1:1",
            "--timeout-seconds",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "unreachable server");
}

#[test]
fn token_inspect_labels_the_output_unverified() {
    let token = quickstart_token(&[]);
    let out = Command::new(BIN)
        .args(["token", "inspect", &token])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], false);
    assert!(json["warning"].as_str().unwrap().contains("UNVERIFIED"));
    assert_eq!(json["header"]["kid"], "quickstart-es256");
    assert_eq!(json["claims"]["sub"], "alice");
    let out = Command::new(BIN)
        .args(["token", "inspect", "not-a-token"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn sigterm_reports_not_serving_drains_and_exits_zero() {
    let mut server = serve_quickstart();
    let addr = format!("http://127.0.0.1:{}", server.grpc);
    let token = quickstart_token(&[]);
    let out = Command::new(BIN)
        .args(["authenticate", "--addr", &addr, "--token", &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines = server.server.log_lines();
    let status = server.server.terminate();
    assert_eq!(status.code(), Some(0));
    let logs: Vec<String> = lines.iter().collect();
    assert!(logs.iter().any(|l| l.contains("shutting down")), "{logs:?}");
    assert!(
        logs.iter().all(|l| !l.contains(&token[token.len() - 20..])),
        "no token in logs"
    );
}

/// Relative paths in a config file are resolved against the file's directory, wherever
/// the binary is started from.
#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("etc");
    std::fs::create_dir_all(config_dir.join("keys")).unwrap();
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/keys/quickstart-es256.pub.pem"
    );
    std::fs::copy(key, config_dir.join("keys/pub.pem")).unwrap();
    std::fs::write(
        config_dir.join("config.yaml"),
        "issuers:\n  - name: q\n    issuer: https://q.test\n    public_key_files: [keys/pub.pem]\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config_dir.join("config.yaml"))
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `policy test`: the example cases pass; a token is verified as the server would; a wrong
/// expectation fails the run (exit 1) and says what was expected; `--explain` says how each
/// rule fared; a cases file that cannot be right is refused (exit 64) before anything runs.
#[test]
fn policy_test_compares_decisions_and_explains_them() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let config = format!("{examples}/quickstart.yaml");
    let run = |cases: &std::path::Path, explain: bool| {
        let mut command = Command::new(BIN);
        command
            .args(["policy", "test", "--config", &config])
            .arg(cases);
        if explain {
            command.arg("--explain");
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let example = std::path::PathBuf::from(format!("{examples}/policy-tests/quickstart.yaml"));
    let (code, stdout, _) = run(&example, false);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("8 cases, 8 passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let reader = portcullis_test_support::quickstart_token("orders:read");
    let (signed, signature) = reader.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let damaged = format!("{signed}.{}", String::from_utf8(flipped).unwrap());
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        format!(
            r#"
cases:
  - name: a verified reader reads
    request: {{ method: GET, path: /orders/1 }}
    credential: {{ token: "{reader}" }}
    expect: {{ decision: allow, rule: orders-read }}
  - name: a damaged token is refused
    request: {{ method: GET, path: /orders/1 }}
    credential: {{ token: "{damaged}" }}
    expect: {{ decision: deny, reason: INVALID_SIGNATURE }}
  - name: wrongly expected to write
    request: {{ method: POST, path: /orders/2 }}
    credential: {{ token: "{reader}" }}
    expect: {{ decision: allow }}
"#
        ),
    )
    .unwrap();
    let (code, stdout, _) = run(&cases, true);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("PASS  a verified reader reads: allow by orders-read"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS  a damaged token is refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  wrongly expected to write: expected allow, got deny by orders-write (INSUFFICIENT_SCOPE"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule orders-write (allow): matches; not satisfied: missing required scopes: orders:write"),
        "{stdout}"
    );
    assert!(stdout.contains("3 cases, 2 passed, 1 failed"), "{stdout}");
    assert!(!stdout.contains(&reader), "no credential in the output");

    for (name, body, complaint) in [
        (
            "unknown-reason",
            "expect: { decision: deny, reason: NOPE }",
            "unknown reason",
        ),
        (
            "two-credentials",
            "credential: { token: a.b.c, claims: { iss: x } }\n    expect: { decision: deny }",
            "either a token or claims",
        ),
        (
            "allow-with-reason",
            "expect: { decision: allow, reason: POLICY_DENIED }",
            "an allow has no reason",
        ),
        (
            "unknown-field",
            "expect: { decision: deny }\n    extra: 1",
            "unknown field",
        ),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, format!("cases:\n  - name: {name}\n    {body}\n")).unwrap();
        let (code, _, stderr) = run(&path, false);
        assert_eq!(code, Some(64), "{name}: {stderr}");
        assert!(stderr.contains(complaint), "{name}: {stderr}");
    }
}

/// `policy test --offline` reads no key file: a config whose key files are not here (as a
/// Helm-rendered one) still has its rules tested with claims, and a token case is refused.
#[test]
fn offline_policy_tests_need_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        r#"
issuers:
  - name: corp
    issuer: https://login.example.com
    public_key_files: [/nonexistent/signing.pem]
    audiences: [api://orders]
authorization:
  rules:
    - name: orders-read
      match: { http: { methods: [GET], paths: ["/orders/*"] } }
      require: { scopes_all: ["orders:read"] }
"#,
    )
    .unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        r#"
cases:
  - name: reader
    request: { method: GET, path: /orders/1 }
    credential: { claims: { iss: https://login.example.com, sub: a, scope: "orders:read" } }
    expect: { decision: allow, rule: orders-read }
  - name: anonymous
    request: { method: GET, path: /orders/1 }
    expect: { decision: deny, reason: MISSING_CREDENTIAL }
"#,
    )
    .unwrap();
    let run = |offline: bool, cases: &std::path::Path| {
        let mut command = Command::new(BIN);
        command
            .args(["policy", "test", "--config"])
            .arg(&config)
            .arg(cases);
        if offline {
            command.arg("--offline");
        }
        command.output().unwrap()
    };
    let out = run(true, &cases);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let online = run(false, &cases);
    assert_eq!(
        online.status.code(),
        Some(64),
        "the key file is read without --offline"
    );
    assert!(String::from_utf8_lossy(&online.stderr).contains("/nonexistent/signing.pem"));

    let with_token = dir.path().join("token.yaml");
    std::fs::write(
        &with_token,
        "cases:\n  - name: t\n    credential: { token: a.b.c }\n    expect: { decision: deny }\n",
    )
    .unwrap();
    let out = run(true, &with_token);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run without --offline"));
    // A credential in a header or the query string needs the keys just the same, and a
    // claims case carries no second credential.
    for (name, case) in [
        (
            "header",
            "request: { path: /orders/1, headers: { Authorization: Bearer a.b.c } }",
        ),
        (
            "query",
            "request: { path: \"/orders/1?access_token=a.b.c\" }",
        ),
        (
            "claims and header",
            "request: { path: /orders/1, headers: { authorization: Bearer a.b.c } }\n    credential: { claims: { iss: https://login.example.com } }",
        ),
    ] {
        let path = dir.path().join("refused.yaml");
        std::fs::write(
            &path,
            format!("cases:\n  - name: {name}\n    {case}\n    expect: {{ decision: deny }}\n"),
        )
        .unwrap();
        let out = run(true, &path);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `keys rotate --file`: prints the new key once and the two records to write (the old one
/// expiring after the overlap, the successor with the same subject, scopes and metadata);
/// written back, `keys list --file` shows both with their relation; the file itself is not
/// changed, and an expiring key needs the successor's lifetime.
#[test]
fn key_file_rotation_prints_the_records_to_write() {
    use portcullis::keys::api_keys::format;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.yaml");
    let old_key = format::generate("pcl").unwrap();
    let original = format!(
        "keys:\n  - id: billing-1\n    sha256: {}\n    subject: svc:billing\n    scopes: [orders:read]\n    metadata: {{team: payments}}\n",
        format::hex(&format::digest(&old_key))
    );
    std::fs::write(&file, &original).unwrap();
    let keys = |args: &[&str]| {
        let out = Command::new(BIN).arg("keys").args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let path = file.to_str().unwrap();
    let (code, stdout, stderr) = keys(&["rotate", "billing-1", "--overlap", "7d", "--file", path]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "the file is not changed"
    );
    let new_key = stdout
        .lines()
        .find(|l| l.starts_with("pcl_"))
        .expect("the key")
        .to_owned();
    let yaml: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("keys:"))
        .collect::<Vec<_>>()
        .join("\n");
    let written: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    let entries = written["keys"].as_array().unwrap();
    let (old, new) = (&entries[0], &entries[1]);
    assert_eq!(old["id"], "billing-1");
    assert!(
        old["expires_at"].as_str().is_some(),
        "the old key expires after the overlap"
    );
    assert_eq!(new["sha256"], format::hex(&format::digest(&new_key)));
    assert_eq!(
        (&new["subject"], &new["scopes"]),
        (&old["subject"], &old["scopes"])
    );
    assert_eq!(new["metadata"]["team"], "payments");
    assert_eq!(new["metadata"]["rotated_from"], "billing-1");
    assert!(!stdout.contains(&old_key));

    std::fs::write(&file, format!("{yaml}\n")).unwrap();
    let (code, listing, _) = keys(&["list", "--file", path]);
    assert_eq!(code, Some(0));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("billing-1") && l.contains("rotated to k_")),
        "{listing}"
    );
    assert!(listing.contains("successor of billing-1"), "{listing}");
    let (code, _, stderr) = keys(&["rotate", "billing-1", "--overlap", "1d", "--file", path]);
    assert_eq!(
        code,
        Some(1),
        "a rotated key is not rotated twice: {stderr}"
    );
    let successor_id = new["id"].as_str().unwrap();
    let (code, _, stderr) = keys(&["rotate", successor_id, "--overlap", "1d", "--file", path]);
    assert_eq!(
        code,
        Some(0),
        "the successor does not expire, so no lifetime is needed: {stderr}"
    );
}
