//! `portcullis authenticate`: a client for a running server's Authenticate RPC. Prints the
//! response as JSON. Exit codes: 0 authenticated (or the `--expect-reason` denial), 1 denied,
//! 2 the server could not be reached or the call failed.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use clap::Args;

use crate::pb::{self, auth_client::AuthClient};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("credential").multiple(false))]
pub struct AuthenticateArgs {
    /// Server address: http://HOST:PORT, https://HOST:PORT, or HOST:PORT (plaintext).
    #[arg(long, default_value = "http://127.0.0.1:50051", value_parser = parse_addr)]
    addr: String,
    /// A bearer token (JWT or opaque).
    #[arg(long, group = "credential")]
    token: Option<String>,
    /// An API key.
    #[arg(long, group = "credential")]
    api_key: Option<String>,
    /// HTTP Basic credentials as USER:PASSWORD.
    #[arg(long, group = "credential")]
    basic: Option<String>,
    /// A request header NAME:VALUE (repeatable); Portcullis finds the credential in them.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Require this audience in addition to the configured ones.
    #[arg(long, default_value = "")]
    audience: String,
    /// The method of the request a DPoP proof (`--header dpop:PROOF`) was made for.
    #[arg(long, default_value = "", value_name = "METHOD")]
    http_method: String,
    /// The absolute URL of the request a DPoP proof was made for.
    #[arg(long, default_value = "", value_name = "URL")]
    http_url: String,
    /// Exit 0 only if the server denies with this reason (for probes and `helm test`).
    #[arg(long, value_name = "REASON", value_parser = parse_reason)]
    expect_reason: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_seconds: u64,
    /// PEM CA certificate(s) to trust for an https:// server (default: the system roots).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mTLS (with --key-file).
    #[arg(long, value_name = "PEM", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, value_name = "PEM", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// Server name to verify, when it differs from the host in --addr.
    #[arg(long)]
    tls_server_name: Option<String>,
}

/// `HOST:PORT` without a scheme means plaintext `http://`; other schemes are refused.
fn parse_addr(addr: &str) -> Result<String, String> {
    match addr.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(addr.to_owned()),
        Some((scheme, _)) => Err(format!(
            "unsupported scheme {scheme:?}: use http://HOST:PORT, https://HOST:PORT or HOST:PORT"
        )),
        None if addr.contains(':') => Ok(format!("http://{addr}")),
        None => Err("expected HOST:PORT, http://HOST:PORT or https://HOST:PORT".to_owned()),
    }
}

/// A reason code as the server names it (SPEC §2), e.g. MISSING_CREDENTIAL.
fn parse_reason(name: &str) -> Result<String, String> {
    match pb::Reason::from_str_name(name) {
        Some(reason) if reason != pb::Reason::Unspecified => Ok(name.to_owned()),
        _ => Err(format!(
            "unknown reason code {name:?}; see docs/reasons.md (e.g. MISSING_CREDENTIAL)"
        )),
    }
}

pub fn run(args: AuthenticateArgs) -> ExitCode {
    let request = match build_request(&args) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start: {err}");
            return ExitCode::from(2);
        }
    };
    let timeout = Duration::from_secs(args.timeout_seconds);
    let result = runtime.block_on(async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(args.addr.clone())
            .map_err(|err| format!("bad --addr: {err}"))?;
        if let Some(tls) = tls_config(&args)? {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| format!("bad TLS settings: {err}"))?;
        }
        let channel = endpoint
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", args.addr))?;
        AuthClient::new(channel)
            .authenticate(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                format!(
                    "Authenticate failed: {}: {}",
                    status.code(),
                    status.message()
                )
            })
    });
    match result {
        Ok(response) => {
            println!("{}", response_json(&response));
            exit_code(&response, args.expect_reason.as_deref())
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// TLS settings for an https:// server: trusted CAs, optional client identity.
fn tls_config(
    args: &AuthenticateArgs,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    if !args.addr.starts_with("https://") {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
    };
    let mut tls = match &args.ca_file {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?)),
        None => ClientTlsConfig::new().with_enabled_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

fn build_request(args: &AuthenticateArgs) -> Result<pb::AuthenticateRequest, String> {
    use pb::credential::Kind;
    let kind = if let Some(token) = &args.token {
        Some(Kind::BearerToken(token.clone()))
    } else if let Some(key) = &args.api_key {
        Some(Kind::ApiKey(key.clone()))
    } else if let Some(basic) = &args.basic {
        let (username, password) = basic.split_once(':').ok_or("--basic takes USER:PASSWORD")?;
        Some(Kind::Basic(pb::BasicCredential {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    } else {
        None
    };
    let mut headers = HashMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header takes NAME:VALUE, got {header:?}"))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Ok(pb::AuthenticateRequest {
        credential: kind.map(|kind| pb::Credential { kind: Some(kind) }),
        headers,
        audience: args.audience.clone(),
        client_certificate_pem: String::new(),
        http_method: args.http_method.clone(),
        http_url: args.http_url.clone(),
    })
}

fn exit_code(response: &pb::AuthenticateResponse, expect_reason: Option<&str>) -> ExitCode {
    let reason = response
        .denial
        .as_ref()
        .and_then(|d| pb::Reason::try_from(d.reason).ok())
        .map(|r| r.as_str_name());
    match expect_reason {
        Some(expected) if reason == Some(expected) => ExitCode::SUCCESS,
        Some(_) => ExitCode::FAILURE,
        None if response.authenticated => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// The response as JSON with enum names instead of numbers.
pub fn response_json(response: &pb::AuthenticateResponse) -> String {
    let principal = response.principal.as_ref().map(|p| {
        serde_json::json!({
            "subject": p.subject,
            "issuer": p.issuer,
            "credential_type": pb::CredentialType::try_from(p.credential_type)
                .map(|t| t.as_str_name()).unwrap_or("CREDENTIAL_TYPE_UNSPECIFIED"),
            "claims": p.claims.as_ref().map(crate::claims::struct_to_json).unwrap_or_default(),
            "scopes": p.scopes,
            "expires_at": p.expires_at.as_ref().map(|t| t.seconds),
            "key_id": p.key_id,
        })
    });
    let denial = response.denial.as_ref().map(|d| {
        serde_json::json!({
            "reason": pb::Reason::try_from(d.reason).map(|r| r.as_str_name()).unwrap_or("REASON_UNSPECIFIED"),
            "message": d.message,
            "www_authenticate": d.www_authenticate,
        })
    });
    let json = serde_json::json!({
        "authenticated": response.authenticated,
        "principal": principal,
        "denial": denial,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}
