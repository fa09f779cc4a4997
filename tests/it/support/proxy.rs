//! Real reverse proxies (nginx, Caddy) the forward-auth and DPoP tests put in front of
//! Portcullis: finding their binaries, and stopping them by PID whatever the test's end.

/// A proxy binary the tests run: `env` if set, else the first candidate that exists. Under
/// CI=true it must be there; elsewhere its tests skip with a message.
pub fn proxy_binary(
    env: &str,
    candidates: &[std::path::PathBuf],
    provision: &str,
) -> Option<std::path::PathBuf> {
    let found = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(candidates.iter().cloned())
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: {env} is required (run {provision})"
        );
        eprintln!("SKIPPED: no {env}; run {provision}");
    }
    found
}

/// Kills the proxy when the test ends, however it ends.
pub struct Proxy(pub std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` on 127.0.0.1 accepts connections.
pub async fn listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the proxy did not listen on {port}");
}
