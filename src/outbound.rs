//! Outbound HTTP (JWKS, discovery, introspection): the one client every generation shares,
//! and how its failures are reported.

use std::time::Duration;

/// The shared outbound HTTP client (JWKS, discovery, introspection): rustls on aws-lc-rs,
/// bounded connect time, and no redirects followed: a redirect could carry the client
/// secret and the user's token to another host, or make another host's keys trusted.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| error_chain(&err))
}

/// An error and every cause under it, `: `-separated (reqwest's own message alone says only
/// "builder error" or "error sending request").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
