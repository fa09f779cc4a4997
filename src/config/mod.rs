//! The YAML configuration (SPEC §6): typed sections, strict loading that reports every error
//! at once with its path, and the semantic checks that make a config safe to serve.

mod load;
mod secret;
mod types;
mod verifiers;

pub use load::{ConfigError, ConfigErrors, load_file, load_str};
pub use secret::SecretRef;
pub use types::*;
pub use verifiers::*;
