//! `portcullis token inspect`: shows a JWT's header and claims, clearly marked unverified.

use std::{io::Read, process::ExitCode};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a JWT without verifying it (`-` reads it from stdin).
    Inspect { token: String },
}

pub fn run(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::Inspect { token } => inspect(&token),
    }
}

fn inspect(token: &str) -> ExitCode {
    let token = if token == "-" {
        let mut input = String::new();
        if std::io::stdin().read_to_string(&mut input).is_err() {
            eprintln!("cannot read the token from stdin");
            return ExitCode::FAILURE;
        }
        input.trim().to_owned()
    } else {
        token.trim().to_owned()
    };
    match decode(&token) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cannot inspect token: {message}");
            ExitCode::FAILURE
        }
    }
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
