//! Secret references: a config value written `env:NAME` or `file:/path` is read from the
//! environment or a file when the config is loaded, so secrets stay out of config files.
//! A value with neither prefix is taken literally. `Debug` never prints the value.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Inline(String),
}

impl SecretRef {
    pub fn parse(raw: &str) -> Self {
        if let Some(name) = raw.strip_prefix("env:") {
            SecretRef::Env(name.to_owned())
        } else if let Some(path) = raw.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else {
            SecretRef::Inline(raw.to_owned())
        }
    }

    /// Reads the secret. A file's trailing newline is dropped (the way Secrets are mounted).
    pub fn resolve(&self) -> Result<Vec<u8>, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(String::into_bytes)
                .map_err(|_| format!("environment variable {name} is not set")),
            SecretRef::File(path) => std::fs::read(path)
                .map(|mut bytes| {
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    bytes
                })
                .map_err(|err| format!("cannot read {}: {err}", path.display())),
            SecretRef::Inline(value) => Ok(value.clone().into_bytes()),
        }
    }

    /// The file a secret lives in, for the config watcher.
    pub fn file(&self) -> Option<&PathBuf> {
        match self {
            SecretRef::File(path) => Some(path),
            _ => None,
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Inline(_) => f.write_str("<inline secret>"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|raw| SecretRef::parse(&raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_an_inline_secret() {
        let secret = SecretRef::parse("hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "<inline secret>");
    }

    #[test]
    fn file_secret_drops_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc\n").unwrap();
        let secret = SecretRef::parse(&format!("file:{}", path.display()));
        assert_eq!(secret.resolve().unwrap(), b"abc");
        assert!(
            SecretRef::parse("env:PORTCULLIS_TEST_UNSET_VAR")
                .resolve()
                .is_err()
        );
    }
}
