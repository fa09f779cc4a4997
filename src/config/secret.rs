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

    /// The secret as text (URLs, names): UTF-8 or an error.
    pub fn resolve_string(&self) -> Result<String, String> {
        String::from_utf8(self.resolve()?).map_err(|_| "is not UTF-8".to_owned())
    }

    /// A `file:` secret with a relative path is made relative to `base`.
    pub fn resolve_relative_to(&mut self, base: &std::path::Path) {
        if let SecretRef::File(path) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
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
        deserializer.deserialize_any(SecretVisitor)
    }
}

impl schemars::JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A secret: env:NAME (an environment variable), file:/path (a file), or a literal string (keep secrets out of config files).",
            "type": "string"
        })
    }
}

/// Accepts a string only, and never echoes a value of another type: serde's own "invalid
/// type" error would quote it (an all-digit secret is a YAML number).
struct SecretVisitor;

const NOT_A_STRING: &str =
    "a secret must be a string (quote it, or use env:NAME or file:/path); the value is not shown";

macro_rules! refuse_non_strings {
    ($($method:ident: $type:ty),* $(,)?) => {
        $(fn $method<E: serde::de::Error>(self, _: $type) -> Result<SecretRef, E> {
            Err(E::custom(NOT_A_STRING))
        })*
    };
}

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret string")
    }

    fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<SecretRef, E> {
        Ok(SecretRef::parse(raw))
    }

    refuse_non_strings!(
        visit_bool: bool,
        visit_i64: i64,
        visit_i128: i128,
        visit_u64: u64,
        visit_u128: u128,
        visit_f64: f64,
        visit_char: char,
        visit_bytes: &[u8],
    );

    fn visit_unit<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(serde::de::Error::custom(NOT_A_STRING))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(serde::de::Error::custom(NOT_A_STRING))
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
    fn a_secret_of_another_type_is_refused_without_echoing_it() {
        for yaml in [
            "123456789012",
            "-98765432109",
            "1234.5678",
            "true",
            "[314159265]",
            "{a: 271828}",
            "~",
        ] {
            let err = serde_norway::from_str::<SecretRef>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains("must be a string"), "{yaml}: {err}");
            for digits in [
                "123456789012",
                "98765432109",
                "1234",
                "5678",
                "314159265",
                "271828",
            ] {
                assert!(!err.contains(digits), "{yaml}: {err}");
            }
        }
        assert_eq!(
            serde_norway::from_str::<SecretRef>("\"123456\"").unwrap(),
            SecretRef::Inline("123456".to_owned())
        );
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
