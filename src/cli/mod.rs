//! The `portcullis` command line: `serve`, `check-config`, `keys`, `passwd`, `token` and
//! `authenticate`.

mod authenticate;
mod keys;
mod passwd;
mod policy;
mod token;
mod tokens;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    build::{self, BuildMode},
    config, server,
};

/// Exit code for a bad configuration (EX_CONFIG is 78; the SPEC fixes 64, EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "gRPC token-validation service")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC and admin listeners.
    Serve {
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: print every error and exit 64, or exit 0.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        /// Check structure, values, globs and CEL only; do not read referenced files or
        /// variables.
        #[arg(long)]
        offline: bool,
    },
    /// Print the JSON Schema of the configuration file (for editors and the Helm chart).
    ConfigSchema,
    /// Work with tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Revoke JWTs (by jti, or every token of a subject) on every replica.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// Call a running server's Authenticate and print the result as JSON.
    Authenticate(authenticate::AuthenticateArgs),
    /// API keys: generate, and the PostgreSQL store's schema and revocation.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Print an htpasswd line (argon2id) for USER; the password comes from a prompt or stdin.
    Passwd { user: String },
    /// Test the config's rules offline against listed requests and expected decisions.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Serve { config } => serve(config),
            Command::CheckConfig { config, offline } => check_config(&config, offline),
            Command::ConfigSchema => match serde_json::to_string_pretty(&config::json_schema()) {
                Ok(schema) => {
                    println!("{schema}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("cannot print the schema: {err}");
                    ExitCode::FAILURE
                }
            },
            Command::Token { command } => token::run(command),
            Command::Tokens { command } => tokens::run(command),
            Command::Authenticate(args) => authenticate::run(args),
            Command::Keys { command } => keys::run(command),
            Command::Passwd { user } => passwd::run(&user),
            Command::Policy { command } => policy::run(command),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts") // invariant: only fails without OS threads/timers
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match config::load_file(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", path.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    runtime().block_on(async move {
        // Inside the runtime: the OTLP exporter needs it.
        let telemetry = match crate::telemetry::init(&config.telemetry) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("portcullis: {err}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        let running = match server::start(config, Some(path)).await {
            Ok(running) => running,
            Err(server::ServeError::Config(errors)) => {
                eprintln!("invalid configuration:\n{errors}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            Err(err) => {
                eprintln!("portcullis: {err}");
                return ExitCode::FAILURE;
            }
        };
        server::wait_for_signal().await;
        let result = running.shutdown().await;
        telemetry.flush();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("portcullis: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check_config(path: &std::path::Path, offline: bool) -> ExitCode {
    // Every error in one run: what parsed is checked further even when other parts failed,
    // and every glob and CEL expression is compiled in any case.
    let (config, mut errors) = config::load_file_partial(path);
    // Nothing is served: these metrics are never read.
    let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new(false));
    if !errors.is_empty() || offline {
        if let Err(mut rule_errors) = crate::policy::Policy::build(&config.authorization, metrics) {
            errors.append(&mut rule_errors);
        }
    } else {
        match crate::outbound::http_client() {
            Ok(client) => {
                if let Err(config::ConfigErrors(mut build_errors)) =
                    build::pipeline(config, &client, &metrics, None, BuildMode::Check)
                {
                    errors.append(&mut build_errors);
                }
            }
            Err(err) => errors.push(config::ConfigError {
                path: String::new(),
                message: err,
            }),
        }
    }
    let result = if errors.is_empty() {
        Ok(())
    } else {
        Err(config::ConfigErrors(errors))
    };
    match result {
        Ok(()) => {
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", path.display());
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}
