//! The htpasswd file behind HTTP Basic (`basic.htpasswd_file`): `user:hash` lines, blank
//! lines and `#` comments. Only slow, salted hashes are accepted: bcrypt (`$2a$`, `$2b$`,
//! `$2y$`) and argon2id PHC strings (`$argon2id$...`, what `portcullis passwd` writes).
//! `{SHA}`, `$apr1$`, MD5/SHA crypt, DES crypt and plaintext lines are refused at load with an
//! error naming the line number and the format, never the hash.

use std::{collections::HashMap, path::Path};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

/// Why an htpasswd file was refused. Never contains a hash or password.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// One user's stored hash.
#[derive(Clone)]
pub enum StoredHash {
    Bcrypt(String),
    Argon2id(String),
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredHash::Bcrypt(_) => "Bcrypt(..)",
            StoredHash::Argon2id(_) => "Argon2id(..)",
        })
    }
}

/// The most of a password bcrypt reads.
pub const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

impl StoredHash {
    /// Checks a password (slow by design: run it off the async threads).
    pub fn verify(&self, password: &str) -> bool {
        match self {
            // bcrypt ignores bytes past 72: a longer password is refused, never truncated.
            StoredHash::Bcrypt(_) if password.len() > BCRYPT_MAX_PASSWORD_BYTES => false,
            StoredHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            StoredHash::Argon2id(hash) => PasswordHash::new(hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false),
        }
    }
}

/// Users and their hashes.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, StoredHash>,
    /// A real entry's hash, checked for unknown users so they take as long as known ones.
    dummy: Option<StoredHash>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        let mut dummy = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |message: &str| HtpasswdError::Line {
                line,
                message: message.to_owned(),
            };
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (user, hash) = entry
                .split_once(':')
                .ok_or_else(|| fail("expected user:hash"))?;
            if user.is_empty() {
                return Err(fail("empty user name"));
            }
            let stored = classify(hash).map_err(|message| fail(&message))?;
            if users.insert(user.to_owned(), stored.clone()).is_some() {
                return Err(fail("duplicate user"));
            }
            dummy.get_or_insert(stored);
        }
        Ok(Self { users, dummy })
    }

    /// Whether `user` with `password` is valid; unknown users cost one real hash check too.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(dummy) = &self.dummy {
                    let _ = dummy.verify(password);
                }
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Sorts a hash into an accepted kind, or says which refused format it is.
fn classify(hash: &str) -> Result<StoredHash, String> {
    let refuse = |what: &str| {
        Err(format!(
            "{what} entries are refused; use bcrypt or argon2id (`portcullis passwd USER`)"
        ))
    };
    if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        return match hash.parse::<bcrypt::HashParts>() {
            Ok(_) => Ok(StoredHash::Bcrypt(hash.to_owned())),
            Err(_) => Err("malformed bcrypt hash".to_owned()),
        };
    }
    if hash.starts_with("$argon2id$") {
        return match PasswordHash::new(hash) {
            Ok(_) => Ok(StoredHash::Argon2id(hash.to_owned())),
            Err(_) => Err("malformed argon2id hash".to_owned()),
        };
    }
    if hash.starts_with("{SHA}") {
        refuse("{SHA} (unsalted SHA-1)")
    } else if hash.starts_with("$apr1$") {
        refuse("$apr1$ (Apache MD5)")
    } else if hash.starts_with("$argon2i$") || hash.starts_with("$argon2d$") {
        refuse("argon2i/argon2d (only argon2id is accepted)")
    } else if hash.starts_with("$1$") || hash.starts_with("$5$") || hash.starts_with("$6$") {
        refuse("MD5/SHA crypt")
    } else if hash.len() == 13 && !hash.starts_with('$') {
        refuse("DES crypt or plaintext")
    } else {
        refuse("plaintext or unknown-format")
    }
}

/// An htpasswd line for `user` with an argon2id hash of `password` (default parameters).
pub fn argon2id_line(user: &str, password: &str) -> Result<String, HtpasswdError> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
        return Err(HtpasswdError::Hash(
            "the user name must be non-empty, without ':' or whitespace".to_owned(),
        ));
    }
    let hash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|err| HtpasswdError::Hash(err.to_string()))?;
    Ok(format!("{user}:{hash}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_formats_are_refused_naming_the_line_not_the_hash() {
        let cases = [
            ("{SHA}", "alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "{SHA}"),
            ("apr1", "alice:$apr1$abc$0123456789abcdef012345", "$apr1$"),
            ("sha512 crypt", "alice:$6$salt$hashhashhash", "crypt"),
            ("des crypt", "alice:abJnggxhB/yWI", "DES"),
            ("plaintext", "alice:hunter2", "plaintext"),
            (
                "argon2i",
                "alice:$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
                "argon2i",
            ),
            ("no colon", "alice", "user:hash"),
        ];
        for (name, line, expected) in cases {
            let text = format!("# users\n\n{line}\n");
            let err = Htpasswd::parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("line 3: "), "{name}: {err}");
            assert!(err.contains(expected), "{name}: {err}");
            let hash = line.split_once(':').map(|(_, h)| h).unwrap_or("");
            assert!(
                hash.is_empty() || !err.contains(hash),
                "{name}: hash echoed: {err}"
            );
        }
    }

    #[test]
    fn bcrypt_variants_and_argon2id_verify() {
        let bcrypt_b = bcrypt::hash("s3cret:with:colons", 4).unwrap();
        let bcrypt_a = bcrypt_b.replacen("$2b$", "$2a$", 1);
        let bcrypt_y = bcrypt_b.replacen("$2b$", "$2y$", 1);
        let argon = argon2id_line("dave", "pässword").unwrap();
        let text = format!("alice:{bcrypt_b}\nbob:{bcrypt_a}\ncarol:{bcrypt_y}\n{argon}\n");
        let file = Htpasswd::parse(&text).unwrap();
        assert_eq!(file.len(), 4);
        for user in ["alice", "bob", "carol"] {
            assert!(file.verify(user, "s3cret:with:colons"), "{user}");
            assert!(!file.verify(user, "wrong"), "{user}");
        }
        assert!(file.verify("dave", "pässword"));
        assert!(!file.verify("dave", "password"));
        assert!(!file.verify("mallory", "s3cret:with:colons"));
    }
}
