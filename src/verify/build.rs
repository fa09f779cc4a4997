//! Builds the verifiers of one config generation: loads the API key file and the htpasswd
//! file, resolves introspection secrets, loads client CAs, and reuses the PostgreSQL store of
//! the previous generation when its settings are unchanged (so a reload keeps its pool,
//! listener and cache). Problems are reported with their config paths.

use std::path::PathBuf;

use crate::{
    config::{Config, ConfigError},
    keys::{
        api_keys::{file::FileStore, postgres::PostgresStore},
        htpasswd::Htpasswd,
    },
    pipeline::BuildMode,
};

use super::{
    api_key::ApiKeyVerifier, basic::BasicVerifier, certificate::CertificateVerifier,
    introspection::Introspector,
};

/// The verifiers besides JWT, as configured.
#[derive(Debug, Default)]
pub struct Verifiers {
    pub api_keys: Option<ApiKeyVerifier>,
    pub basic: Option<BasicVerifier>,
    pub opaque: Option<Introspector>,
    pub certificates: Option<CertificateVerifier>,
}

fn push(errors: &mut Vec<ConfigError>, path: &str, message: impl Into<String>) {
    errors.push(ConfigError {
        path: path.to_owned(),
        message: message.into(),
    });
}

pub fn build_verifiers(
    config: &Config,
    client: &reqwest::Client,
    previous: Option<&ApiKeyVerifier>,
    mode: BuildMode,
    errors: &mut Vec<ConfigError>,
) -> Verifiers {
    let mut built = Verifiers::default();
    let max_entries = config.cache.max_entries;
    let max_ttl = config.cache.max_ttl;

    if config.api_keys.is_configured() {
        let file = config.api_keys.file.as_ref().and_then(|path| {
            FileStore::load(path)
                .map(std::sync::Arc::new)
                .map_err(|err| push(errors, "api_keys.file", err.to_string()))
                .ok()
        });
        let postgres = config.api_keys.postgres.as_ref().and_then(|settings| {
            let url = settings
                .url
                .resolve()
                .map_err(|err| push(errors, "api_keys.postgres.url", err))
                .ok()
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|_| push(errors, "api_keys.postgres.url", "is not UTF-8"))
                        .ok()
                })?;
            if mode == BuildMode::Check {
                return crate::keys::api_keys::postgres::connect_options(&url)
                    .map_err(|err| push(errors, "api_keys.postgres.url", err.to_string()))
                    .ok()
                    .and(None);
            }
            if let Some(store) = previous
                .and_then(|p| p.postgres.as_ref())
                .filter(|store| store.same_settings(settings))
            {
                return Some(store.clone());
            }
            PostgresStore::new(settings, &url, max_entries, true)
                .map_err(|err| push(errors, "api_keys.postgres.url", err.to_string()))
                .ok()
        });
        built.api_keys = Some(ApiKeyVerifier {
            prefix: config.api_keys.prefix.clone(),
            file,
            postgres,
        });
    }

    if let Some(path) = &config.basic.htpasswd_file {
        match Htpasswd::load(path) {
            Ok(htpasswd) => match BasicVerifier::new(htpasswd, &config.basic, max_entries, max_ttl)
            {
                Ok(verifier) => built.basic = Some(verifier),
                Err(err) => push(errors, "basic", err),
            },
            Err(err) => push(
                errors,
                "basic.htpasswd_file",
                format!("{}: {err}", path.display()),
            ),
        }
    }

    let opaque_issuer = config.credentials.opaque_token_issuer.as_deref();
    for (i, issuer) in config.issuers.iter().enumerate() {
        if issuer.introspection.is_none() || opaque_issuer.is_some_and(|name| name != issuer.name) {
            continue;
        }
        match Introspector::new(
            issuer,
            client.clone(),
            max_entries,
            config.cache.max_bytes,
            max_ttl,
        ) {
            Ok(introspector) => built.opaque = introspector,
            Err(err) => push(errors, &format!("issuers[{i}]"), err),
        }
    }

    let mut ca_files: Vec<PathBuf> = config.client_certificates.ca_files.clone();
    if let Some(ca) = config
        .server
        .tls
        .as_ref()
        .and_then(|t| t.client_ca_file.clone())
    {
        ca_files.push(ca);
    }
    match CertificateVerifier::load(&ca_files) {
        Ok(verifier) => built.certificates = verifier,
        Err(err) => push(errors, "client_certificates.ca_files", err),
    }
    built
}
