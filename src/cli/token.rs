//! `portcullis token inspect`: shows a JWT's header and claims, clearly marked unverified.

use std::{
    io::Read,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::jwt::Algorithm;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a JWT without verifying it (`-` reads it from stdin).
    Inspect { token: String },
    /// Sign a JWT with a local key, for development and tests (e.g. the quickstart key).
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// PKCS#8 PEM private key (RS*/PS*/ES*/EdDSA) or a file holding the HMAC secret (HS*).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "ES256")]
    alg: String,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    iss: String,
    #[arg(long, default_value = "")]
    sub: String,
    /// Audience (repeatable).
    #[arg(long)]
    aud: Vec<String>,
    /// Space-separated scopes for the `scope` claim.
    #[arg(long)]
    scope: Option<String>,
    /// Lifetime, e.g. 1h or 30m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Extra claim NAME=VALUE (VALUE parsed as JSON when it is JSON); repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
}

pub fn run(command: TokenCommand) -> ExitCode {
    let result = match command {
        TokenCommand::Inspect { token } => inspect(&token),
        TokenCommand::Sign(args) => sign(&args),
    };
    match result {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn sign(args: &SignArgs) -> Result<String, String> {
    let alg: Algorithm = args.alg.parse()?;
    let material = std::fs::read(&args.key)
        .map_err(|err| format!("cannot read {}: {err}", args.key.display()))?;
    let key = match alg.family() {
        crate::jwt::KeyFamily::Hmac => Ok(jsonwebtoken::EncodingKey::from_secret(
            material.trim_ascii_end(),
        )),
        crate::jwt::KeyFamily::Rsa => jsonwebtoken::EncodingKey::from_rsa_pem(&material),
        crate::jwt::KeyFamily::EcP256 | crate::jwt::KeyFamily::EcP384 => {
            jsonwebtoken::EncodingKey::from_ec_pem(&material)
        }
        crate::jwt::KeyFamily::Ed25519 => jsonwebtoken::EncodingKey::from_ed_pem(&material),
    }
    .map_err(|err| {
        format!(
            "cannot use {} as a {alg} signing key: {err}",
            args.key.display()
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| err.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(args.iss.clone()));
    if !args.sub.is_empty() {
        claims.insert("sub".into(), Value::from(args.sub.clone()));
    }
    match args.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), Value::from(one.clone()));
        }
        many => {
            claims.insert("aud".into(), Value::from(many.to_vec()));
        }
    }
    if let Some(scope) = &args.scope {
        claims.insert("scope".into(), Value::from(scope.clone()));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + args.ttl.as_secs()));
    for claim in &args.claims {
        let (name, raw) = claim
            .split_once('=')
            .ok_or_else(|| format!("--claim takes NAME=VALUE, got {claim:?}"))?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
        claims.insert(name.to_owned(), value);
    }
    let mut header = jsonwebtoken::Header::new(alg.to_jsonwebtoken());
    header.kid = args.kid.clone();
    header.typ = Some("JWT".to_owned());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|err| format!("cannot sign: {err}"))
}

fn inspect(token: &str) -> Result<String, String> {
    let token = if token == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|_| "cannot read the token from stdin".to_owned())?;
        input.trim().to_owned()
    } else {
        token.trim().to_owned()
    };
    decode(&token).map_err(|message| format!("cannot inspect token: {message}"))
}

/// The unverified header and claims as pretty JSON.
fn decode(token: &str) -> Result<String, String> {
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(format!("expected 3 segments, found {}", segments.len()));
    }
    let part = |segment: &str, name: &str| -> Result<serde_json::Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| format!("{name} is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| format!("{name} is not JSON"))
    };
    let output = serde_json::json!({
        "verified": false,
        "warning": "UNVERIFIED: decoded without checking the signature or any claim",
        "header": part(segments[0], "header")?,
        "claims": part(segments[1], "claims")?,
    });
    serde_json::to_string_pretty(&output).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_labels_unverified() {
        let token = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"alice"}"#)
        );
        let out = decode(&token).unwrap();
        assert!(out.contains("\"verified\": false"));
        assert!(out.contains("alice"));
        assert!(decode("a.b").is_err());
    }
}
