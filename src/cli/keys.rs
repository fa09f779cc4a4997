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
        ApiKeyRecord, format,
        postgres::{self, PostgresError},
    },
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

/// Where the database is: a URL, or the `api_keys.postgres.url` of a config file.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "config"
    )]
    database_url: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
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
        let bytes = postgres.url.resolve()?;
        String::from_utf8(bytes).map_err(|_| "the database URL is not UTF-8".to_owned())
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
    }
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
    let key = match format::generate(&args.prefix) {
        Ok(key) => key,
        Err(format::FormatError::Prefix) => {
            eprintln!(
                "portcullis keys generate: --prefix must be 1-16 lower-case letters or digits"
            );
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("portcullis keys generate: {err}");
            return ExitCode::FAILURE;
        }
    };
    let id = match args.id {
        Some(id) => id,
        None => match format::random_base62(12) {
            Ok(random) => format!("k_{random}"),
            Err(err) => {
                eprintln!("portcullis keys generate: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
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
    let record = ApiKeyRecord {
        id,
        subject: args.subject,
        scopes,
        expires_at: expires_at.map(|(seconds, _)| seconds),
        disabled: false,
        metadata: Map::new(),
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
