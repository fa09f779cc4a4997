//! `portcullis tokens revoke`: adds a JWT revocation to the PostgreSQL denylist
//! (`revocation`), by `jti` or for every token of a subject issued before a time; every
//! replica refuses the token(s) within a second.

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Subcommand};

use super::keys::DatabaseArgs;
use crate::{
    config,
    revocation::{
        Revocation,
        postgres::{self, RevocationError},
    },
};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Revoke one JWT by its `jti`, or every JWT of a subject issued before a time ("log
    /// out everywhere"); every replica refuses them within a second (reason REVOKED).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject"])))]
pub struct RevokeArgs {
    /// The token's `jti` claim.
    #[arg(long)]
    jti: Option<String>,
    /// Every token of this subject (`sub`) issued before `--issued-before`.
    #[arg(long)]
    subject: Option<String>,
    /// Only tokens accepted by this configured issuer (its `name` in the config).
    #[arg(long)]
    issuer: Option<String>,
    /// With `--subject`: tokens issued (`iat`) before this RFC 3339 time are revoked;
    /// default now. Later tokens keep working.
    #[arg(long, value_parser = parse_time)]
    issued_before: Option<SystemTime>,
    /// How long the revocation is kept: the longest lifetime of the tokens concerned.
    /// Default: the config's `revocation.retention`, else 24h.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// `--database-url`, or `--config` (its `revocation.url`, else `api_keys.postgres.url`,
    /// its retention, and its issuer names).
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Longest accepted value of a name, subject or jti (as the schema allows).
const MAX_TEXT: usize = 1024;

fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("{err}; use RFC 3339, e.g. 2026-12-01T10:00:00Z"))
}

pub fn run(command: TokensCommand) -> ExitCode {
    match command {
        TokensCommand::Revoke(args) => revoke(args),
    }
}

fn revoke(args: RevokeArgs) -> ExitCode {
    let (url, retention) = match target(&args) {
        Ok(found) => found,
        Err(err) => {
            eprintln!("portcullis tokens revoke: {err}");
            return ExitCode::from(2);
        }
    };
    let revocation = match revocation(&args) {
        Ok(revocation) => revocation,
        Err(err) => {
            eprintln!("portcullis tokens revoke: {err}");
            return ExitCode::from(2);
        }
    };
    let result: Result<i64, RevocationError> = super::runtime().block_on(async {
        let pool = postgres::pool(&url, Duration::from_secs(10))?;
        postgres::revoke(&pool, &revocation, retention).await
    });
    match result {
        Ok(id) => {
            println!(
                "revoked {} (entry {id}, kept {}); every replica refuses it within a second",
                describe(&revocation),
                humantime::format_duration(retention)
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("portcullis tokens revoke: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The database URL and retention, from the flags or the config.
fn target(args: &RevokeArgs) -> Result<(String, Duration), String> {
    let default_retention = Duration::from_secs(24 * 3600);
    let (url, configured_retention) = if let Some(url) = &args.database.database_url {
        (url.clone(), None)
    } else {
        let path = args
            .database
            .config
            .as_ref()
            .ok_or("give --database-url (or DATABASE_URL) or --config")?;
        let config = config::load_file(path).map_err(|err| err.to_string())?;
        let (secret, retention) = match (&config.revocation, &config.api_keys.postgres) {
            (Some(revocation), _) => (&revocation.url, Some(revocation.retention)),
            (None, Some(postgres)) => (&postgres.url, None),
            (None, None) => return Err("the config has no revocation.url".to_owned()),
        };
        let url = secret
            .resolve_string()
            .map_err(|err| format!("the database URL {err}"))?;
        if let Some(issuer) = &args.issuer
            && !config.issuers.iter().any(|i| &i.name == issuer)
        {
            return Err(format!(
                "--issuer {issuer:?} names no issuer of the config (give its `name`, not its URL)"
            ));
        }
        (url, retention)
    };
    let retention = args
        .retention
        .or(configured_retention)
        .unwrap_or(default_retention);
    if !(Duration::from_secs(60)..=Duration::from_secs(366 * 24 * 3600)).contains(&retention) {
        return Err("--retention must be between 1m and 366d".to_owned());
    }
    Ok((url, retention))
}

/// The revocation the flags describe.
fn revocation(args: &RevokeArgs) -> Result<Revocation, String> {
    let checked = |what: &str, text: &str| {
        if text.is_empty() || text.len() > MAX_TEXT {
            Err(format!("--{what} must be 1 to {MAX_TEXT} bytes"))
        } else {
            Ok(text.to_owned())
        }
    };
    let issuer = args
        .issuer
        .as_deref()
        .map(|issuer| checked("issuer", issuer))
        .transpose()?;
    if issuer.as_deref().is_some_and(|name| name.contains("://")) {
        return Err(
            "--issuer takes the issuer's `name` in the config, not its URL (the `iss` value)"
                .to_owned(),
        );
    }
    if let Some(jti) = &args.jti {
        if args.issued_before.is_some() {
            return Err("--issued-before goes with --subject, not --jti".to_owned());
        }
        return Ok(Revocation::Token {
            jti: checked("jti", jti)?,
            issuer,
        });
    }
    let subject = checked("subject", args.subject.as_deref().unwrap_or_default())?;
    let now = SystemTime::now();
    // Tokens carry whole seconds: "now" is the next second, so a token issued earlier in
    // this second is revoked too.
    let issued_before = args
        .issued_before
        .unwrap_or_else(|| now + Duration::from_secs(1));
    if issued_before > now + Duration::from_secs(300) {
        return Err(
            "--issued-before is in the future: it would revoke tokens not issued yet".to_owned(),
        );
    }
    let seconds = issued_before
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "--issued-before is before 1970".to_owned())?
        .as_secs();
    Ok(Revocation::Subject {
        subject,
        issuer,
        issued_before: i64::try_from(seconds).unwrap_or(i64::MAX),
    })
}

fn describe(revocation: &Revocation) -> String {
    let of = |issuer: &Option<String>| {
        issuer
            .as_ref()
            .map(|name| format!(" of issuer {name:?}"))
            .unwrap_or_default()
    };
    match revocation {
        Revocation::Token { jti, issuer } => format!("the token with jti {jti:?}{}", of(issuer)),
        Revocation::Subject {
            subject,
            issuer,
            issued_before,
        } => format!(
            "every token of subject {subject:?}{} issued before {}",
            of(issuer),
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(u64::try_from(*issued_before).unwrap_or(0))
            )
        ),
    }
}
