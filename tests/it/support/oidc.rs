//! The real OpenID provider (npm `oidc-provider`, tests/oidc) as a child process on
//! 127.0.0.1. Needs `node` and tests/oidc/node_modules (scripts/provision/oidc.sh); under
//! CI=true a missing provider fails the test, elsewhere the test is skipped with a message.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// A running provider; stopped (SIGTERM) when dropped.
pub struct Provider {
    child: Child,
    pub issuer: String,
    pub kid: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Whether the provider can run here; under CI=true it must.
pub fn available() -> bool {
    let ok = provider_dir().join("node_modules/oidc-provider").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the OpenID provider is required (run scripts/provision/oidc.sh)"
        );
        eprintln!(
            "SKIPPED: node or tests/oidc/node_modules missing; run scripts/provision/oidc.sh"
        );
    }
    ok
}

/// A free loopback port (the provider's issuer URL includes it, so restarts reuse it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the provider on `port` with the signing key in `key_file` (a new key with `rotate`).
pub fn start(port: u16, key_file: &Path, rotate: bool) -> Provider {
    let mut command = Command::new("node");
    command
        .arg(provider_dir().join("provider.mjs"))
        .args(["--port", &port.to_string(), "--key-file"])
        .arg(key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if rotate {
        command.arg("--rotate");
    }
    let mut child = command.spawn().expect("node starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("provider ready line, got {line:?}"));
    assert_eq!(ready["ready"], true);
    Provider {
        child,
        issuer: ready["issuer"].as_str().unwrap().to_owned(),
        kid: ready["kid"].as_str().unwrap().to_owned(),
    }
}
