//! `portcullis keys`: generate an API key and its store records, apply the PostgreSQL schema,
//! revoke a key by id.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::{
    config,
    keys::api_keys::{
        ApiKeyRecord,
        file::FileStore,
        format,
        postgres::{self, PostgresError},
    },
    verify::unix_now,
};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new API key (once) and its record for the file store and for PostgreSQL.
    Generate(GenerateArgs),
    /// Apply the embedded PostgreSQL schema (idempotent).
    Migrate(DatabaseArgs),
    /// Disable a key by id; every replica stops accepting it within a second.
    Revoke {
        /// The key's id (as printed by `keys generate`).
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Replace a key with a successor (same subject, scopes and metadata; the old key's
    /// lifetime from now), printed once; the old key keeps working for `--overlap`.
    /// PostgreSQL: applied. A key file (`--file`): the records to write are printed.
    Rotate(RotateArgs),
    /// List the keys of PostgreSQL or of a key file (`--file`): id, subject, scopes,
    /// expiry, state, rotation relation, and (PostgreSQL) uses and last use. Never a key or
    /// digest.
    List(StoreArgs),
    /// Show one key: its record, metadata, and (PostgreSQL) usage and activity: uses, last
    /// use and last client address, as written by the replicas. Never the key or digest.
    Show {
        /// The key's id.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The key's id.
    id: String,
    /// How long the old key keeps working, e.g. 7d or 12h.
    #[arg(long, value_parser = humantime::parse_duration)]
    overlap: Duration,
    /// The successor's lifetime, e.g. 90d. Default: PostgreSQL gives it the old key's
    /// lifetime from now; a key file needs it when the old key expires.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    /// The successor's key prefix; must match `api_keys.prefix`.
    #[arg(long, default_value = "pcl")]
    prefix: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// A key file (`--file`), or the PostgreSQL store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// A key file (`api_keys.file`) instead of PostgreSQL.
    #[arg(long, conflicts_with_all = ["database_url", "config"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Key prefix (1-16 lower-case letters or digits); must match `api_keys.prefix`.
    #[arg(long, default_value = "pcl")]
    prefix: String,
    /// The principal's subject (who the key authenticates as).
    #[arg(long)]
    subject: String,
    /// Scopes, comma- or space-separated; repeatable.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Lifetime such as 90d or 12h; without it the key does not expire.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    /// Record id (default: random).
    #[arg(long)]
    id: Option<String>,
    /// The key's own rate limit, e.g. 10/s, 600/m or 1000/h (with `--burst`).
    #[arg(long, requires = "burst")]
    rate_limit: Option<String>,
    /// Requests the key may make at once under `--rate-limit`.
    #[arg(long, requires = "rate_limit")]
    burst: Option<u32>,
    /// Output: `text` (the key, the file entry and the SQL, for people), `yaml` (the file
    /// entry, the key in a comment), `sql` (the INSERT, the key in a comment) or `json`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Yaml,
    Sql,
    Json,
}

/// Where the database is: a URL, or a config file (`api_keys.postgres.url`; for `tokens
/// revoke`, `revocation.url` first).
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "config"
    )]
    pub(super) database_url: Option<String>,
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
}

impl DatabaseArgs {
    fn url(&self) -> Result<String, String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        let path = self
            .config
            .as_ref()
            .ok_or("give --database-url (or DATABASE_URL) or --config")?;
        let config = config::load_file(path).map_err(|err| err.to_string())?;
        let postgres = config
            .api_keys
            .postgres
            .ok_or("the config has no api_keys.postgres")?;
        postgres
            .url
            .resolve_string()
            .map_err(|err| format!("the database URL {err}"))
    }
}

pub fn run(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Generate(args) => generate(args),
        KeysCommand::Migrate(database) => with_database(&database, |pool| async move {
            postgres::migrate(&pool).await?;
            println!("schema is up to date");
            Ok(())
        }),
        KeysCommand::Revoke { id, database } => with_database(&database, |pool| async move {
            postgres::revoke(&pool, &id).await?;
            println!("revoked {id}");
            Ok(())
        }),
        KeysCommand::Rotate(args) => rotate(args),
        KeysCommand::List(store) => match &store.file {
            Some(path) => list_file(path),
            None => with_database(&store.database, |pool| async move {
                let keys = postgres::list(&pool).await?;
                print_keys(keys.iter().map(|key| KeyLine {
                    id: &key.id,
                    subject: &key.subject,
                    scopes: &key.scopes,
                    expires_at: key.expires_at,
                    disabled: key.disabled,
                    rotated_from: key.rotated_from.as_deref(),
                    rotated_to: key.rotated_to.as_deref(),
                    usage: Some((key.uses, key.last_used)),
                }));
                Ok(())
            }),
        },
        KeysCommand::Show { id, store } => match &store.file {
            Some(path) => show_file(path, &id),
            None => with_database(&store.database, |pool| async move {
                let (key, metadata) = postgres::show(&pool, &id).await?;
                let state = key_state(key.disabled, key.expires_at, unix_now());
                println!("id: {}", key.id);
                println!("subject: {}", key.subject);
                println!("scopes: {}", scopes_text(&key.scopes));
                println!("state: {state}");
                println!("created: {}", rfc3339(key.created_at));
                println!(
                    "expires: {}",
                    key.expires_at.map_or("never".to_owned(), rfc3339)
                );
                if let Some(revoked_at) = key.revoked_at {
                    println!("revoked: {}", rfc3339(revoked_at));
                }
                println!("uses: {}", key.uses);
                println!(
                    "last used: {}",
                    key.last_used.map_or("never".to_owned(), rfc3339)
                );
                println!(
                    "last client address: {}",
                    key.last_address.as_deref().unwrap_or("-")
                );
                println!("metadata: {metadata}");
                Ok(())
            }),
        },
    }
}

/// `keys show` for a key file: the record. Its usage is in the server's `api_key_usage`
/// log lines.
fn show_file(path: &std::path::Path, id: &str) -> ExitCode {
    let store = match FileStore::load(path) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("portcullis keys show: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Some(record) = store.records().map(|(_, r)| r).find(|r| r.id == id) else {
        eprintln!("portcullis keys show: no API key has id {id:?}");
        return ExitCode::FAILURE;
    };
    println!("id: {}", record.id);
    println!("subject: {}", record.subject);
    println!("scopes: {}", scopes_text(&record.scopes));
    println!(
        "state: {}",
        key_state(record.disabled, record.expires_at, unix_now())
    );
    println!(
        "expires: {}",
        record.expires_at.map_or("never".to_owned(), rfc3339)
    );
    println!("usage: in the server's api_key_usage log lines (a key file records none)");
    println!("metadata: {}", Value::Object(record.metadata.clone()));
    ExitCode::SUCCESS
}

fn key_state(disabled: bool, expires_at: Option<i64>, now: i64) -> &'static str {
    if disabled {
        "disabled"
    } else if expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn scopes_text(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "-".to_owned()
    } else {
        scopes.join(",")
    }
}

/// One line of `keys list`.
struct KeyLine<'a> {
    id: &'a str,
    subject: &'a str,
    scopes: &'a [String],
    expires_at: Option<i64>,
    disabled: bool,
    rotated_from: Option<&'a str>,
    rotated_to: Option<&'a str>,
    /// Uses and last use (PostgreSQL); `None` for a key file.
    usage: Option<(i64, Option<i64>)>,
}

fn print_keys<'a>(keys: impl Iterator<Item = KeyLine<'a>>) {
    println!("ID\tSUBJECT\tSCOPES\tEXPIRES\tSTATE\tROTATION\tUSES\tLAST USED");
    let now = unix_now();
    for key in keys {
        let state = key_state(key.disabled, key.expires_at, now);
        let (uses, last_used) = match key.usage {
            Some((uses, last_used)) => (
                uses.to_string(),
                last_used.map_or("never".to_owned(), rfc3339),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let rotation = match (key.rotated_from, key.rotated_to) {
            (_, Some(to)) => format!("rotated to {to}"),
            (Some(from), None) => format!("successor of {from}"),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{state}\t{rotation}\t{uses}\t{last_used}",
            key.id,
            key.subject,
            scopes_text(key.scopes),
            key.expires_at.map_or("never".to_owned(), rfc3339),
        );
    }
}

/// Latest time RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;
/// Longest `--expires-in` and `--overlap` accepted.
const MAX_KEY_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn rfc3339(seconds: i64) -> String {
    if seconds > LAST_RFC3339_SECOND {
        return "after 9999-12-31T23:59:59Z".to_owned();
    }
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Refuses a key duration over 100 years (exit 2), naming the option.
fn check_duration(option: &str, duration: Option<Duration>) -> Result<(), ExitCode> {
    if duration.is_some_and(|d| d > MAX_KEY_DURATION) {
        eprintln!("portcullis keys: {option} is at most 100 years");
        return Err(ExitCode::from(2));
    }
    Ok(())
}

fn list_file(path: &std::path::Path) -> ExitCode {
    match FileStore::load(path) {
        Ok(store) => {
            let mut records: Vec<&ApiKeyRecord> = store.records().map(|(_, r)| r).collect();
            records.sort_by(|a, b| a.id.cmp(&b.id));
            print_keys(records.into_iter().map(|record| KeyLine {
                id: &record.id,
                subject: &record.subject,
                scopes: &record.scopes,
                expires_at: record.expires_at,
                disabled: record.disabled,
                rotated_from: record.metadata.get("rotated_from").and_then(Value::as_str),
                rotated_to: record.metadata.get("rotated_to").and_then(Value::as_str),
                usage: None,
            }));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("portcullis keys list: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A new key and its record id for `keys generate` and `keys rotate`.
fn new_key(prefix: &str, command: &str) -> Result<(String, String), ExitCode> {
    let key = format::generate(prefix).map_err(|err| {
        match err {
            format::FormatError::Prefix => eprintln!(
                "portcullis keys {command}: --prefix must be 1-16 lower-case letters or digits"
            ),
            err => eprintln!("portcullis keys {command}: {err}"),
        }
        ExitCode::from(2)
    })?;
    let id = format::random_base62(12)
        .map(|random| format!("k_{random}"))
        .map_err(|err| {
            eprintln!("portcullis keys {command}: {err}");
            ExitCode::FAILURE
        })?;
    Ok((key, id))
}

fn rotate(args: RotateArgs) -> ExitCode {
    if let Err(code) = check_duration("--overlap", Some(args.overlap))
        .and_then(|()| check_duration("--expires-in", args.expires_in))
    {
        return code;
    }
    let (key, successor_id) = match new_key(&args.prefix, "rotate") {
        Ok(made) => made,
        Err(code) => return code,
    };
    let sha256 = format::hex(&format::digest(&key));
    if let Some(path) = &args.store.file {
        return rotate_in_file(path, &args, &key, &successor_id, &sha256);
    }
    let id = args.id.clone();
    let overlap = args.overlap;
    let lifetime = args.expires_in;
    with_database(&args.store.database, |pool| async move {
        let successor = postgres::Successor {
            id: &successor_id,
            sha256_hex: &sha256,
        };
        let rotated = postgres::rotate(&pool, &id, &successor, overlap, lifetime).await?;
        println!("API key (shown once; only its SHA-256 is stored):\n{key}\n");
        println!(
            "rotated {id} -> {successor_id}: {id} expires at {}, {successor_id} {}",
            rfc3339(rotated.old_expires_at),
            rotated
                .successor_expires_at
                .map_or("does not expire".to_owned(), |at| format!(
                    "expires at {}",
                    rfc3339(at)
                ))
        );
        Ok(())
    })
}

/// `keys rotate --file`: prints the successor's record and the old one with its new expiry,
/// for the operator to write into the file (the file itself is not changed).
fn rotate_in_file(
    path: &std::path::Path,
    args: &RotateArgs,
    key: &str,
    successor_id: &str,
    sha256: &str,
) -> ExitCode {
    let store = match FileStore::load(path) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("portcullis keys rotate: {err}");
            return ExitCode::FAILURE;
        }
    };
    let now = unix_now();
    let Some((digest, old)) = store.records().find(|(_, record)| {
        record.id == args.id
            && !record.disabled
            && record.expires_at.is_none_or(|at| at > now)
            && !record.metadata.contains_key("rotated_to")
    }) else {
        eprintln!(
            "portcullis keys rotate: no active, unrotated key has id {:?} in {}",
            args.id,
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let overlap = i64::try_from(args.overlap.as_secs()).unwrap_or(i64::MAX);
    let old_expires = old.expires_at.map_or(now.saturating_add(overlap), |at| {
        at.min(now.saturating_add(overlap))
    });
    // A key file does not record when a key was made, so not its lifetime either.
    let successor_expires = match (args.expires_in, old.expires_at) {
        (Some(lifetime), _) => {
            Some(now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)))
        }
        (None, None) => None,
        (None, Some(_)) => {
            eprintln!(
                "portcullis keys rotate: {} expires; give the successor's lifetime with --expires-in",
                old.id
            );
            return ExitCode::from(2);
        }
    };
    let entry = |id: &str, sha256: &str, expires: Option<i64>, relation: (&str, &str)| {
        let mut metadata = old.metadata.clone();
        metadata.insert(relation.0.to_owned(), Value::String(relation.1.to_owned()));
        let mut entry = serde_json::json!({
            "id": id,
            "sha256": sha256,
            "subject": old.subject,
            "scopes": old.scopes,
            "metadata": metadata,
        });
        if let Some(at) = expires {
            entry["expires_at"] = Value::String(rfc3339(at));
        }
        if let Some(limit) = &old.rate_limit {
            entry["rate_limit"] = serde_json::to_value(limit.to_config()).unwrap_or_default();
        }
        entry
    };
    let successor = entry(
        successor_id,
        sha256,
        successor_expires,
        ("rotated_from", &old.id),
    );
    let previous = entry(
        &old.id,
        &format::hex(digest),
        Some(old_expires),
        ("rotated_to", successor_id),
    );
    let yaml = serde_norway::to_string(&serde_json::json!({ "keys": [previous, successor] }))
        .unwrap_or_default();
    println!("API key (shown once; only its SHA-256 is stored):\n{key}\n");
    println!(
        "# In {}, replace the entry of {} with these two (the key file is not changed here):\n{yaml}",
        path.display(),
        old.id
    );
    ExitCode::SUCCESS
}

fn with_database<F, Fut>(database: &DatabaseArgs, action: F) -> ExitCode
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<(), PostgresError>>,
{
    let url = match database.url() {
        Ok(url) => url,
        Err(err) => {
            eprintln!("portcullis keys: {err}");
            return ExitCode::from(2);
        }
    };
    let result = super::runtime().block_on(async move {
        let pool = postgres::lazy_pool(&url, 1, Duration::from_secs(10))?;
        action(pool).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portcullis keys: {err}");
            ExitCode::FAILURE
        }
    }
}

fn generate(args: GenerateArgs) -> ExitCode {
    if let Err(code) = check_duration("--expires-in", args.expires_in) {
        return code;
    }
    let (key, random_id) = match new_key(&args.prefix, "generate") {
        Ok(made) => made,
        Err(code) => return code,
    };
    let id = args.id.unwrap_or(random_id);
    let expires_at = args.expires_in.map(|lifetime| {
        let at = SystemTime::now() + lifetime;
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        (i64::try_from(seconds).unwrap_or(i64::MAX), at)
    });
    let scopes: Vec<String> = args
        .scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_owned)
        .collect();
    let rate_limit = match args.rate_limit.as_deref().zip(args.burst) {
        Some((rate, burst)) => match crate::config::RateLimit::new(rate, burst) {
            Ok(limit) => Some(limit),
            Err(message) => {
                eprintln!("portcullis keys generate: --rate-limit: {message}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let record = ApiKeyRecord {
        id,
        subject: args.subject,
        scopes,
        expires_at: expires_at.map(|(seconds, _)| seconds),
        disabled: false,
        metadata: Map::new(),
        rate_limit,
    };
    let sha256 = format::hex(&format::digest(&key));
    let mut entry = serde_json::json!({
        "id": record.id,
        "sha256": sha256,
        "subject": record.subject,
        "scopes": record.scopes,
    });
    if let Some((_, at)) = expires_at {
        entry["expires_at"] = Value::String(humantime::format_rfc3339_seconds(at).to_string());
    }
    if let Some(limit) = &record.rate_limit {
        entry["rate_limit"] = serde_json::to_value(limit.to_config()).unwrap_or_default();
    }
    let yaml =
        serde_norway::to_string(&serde_json::json!({ "keys": [&entry] })).unwrap_or_default();
    let sql = postgres::insert_statement(&sha256, &record);
    match args.format {
        OutputFormat::Text => {
            println!("API key (shown once; only its SHA-256 is stored):\n{key}\n");
            println!("# api_keys.file entry:\n{yaml}");
            println!("-- api_keys.postgres:\n{sql}");
        }
        OutputFormat::Yaml => println!("# API key (shown once): {key}\n{yaml}"),
        OutputFormat::Sql => println!("-- API key (shown once): {key}\n{sql}"),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({"key": key, "file_entry": entry, "sql": sql})
        ),
    }
    ExitCode::SUCCESS
}
