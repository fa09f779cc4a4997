//! The HTTP forward-auth surface (`server.http_listen`, SPEC §9): reverse proxies ask it
//! whether to let a request through, on the same pipeline and rules as Envoy's Check. One
//! path per proxy convention, so a header meant for one convention is never read under
//! another:
//!
//! - `/nginx`: nginx `auth_request`: the original request in `X-Original-Method`,
//!   `X-Original-URI` and `X-Original-Host` (set by the documented nginx config).
//! - `/ingress-nginx`: ingress-nginx `auth-url`, which sets `X-Original-Method` and the
//!   absolute `X-Original-URL` (and passes a client's `X-Original-URI` through untouched,
//!   which is why it has a path of its own).
//! - `/forwarded`: Traefik ForwardAuth and Caddy `forward_auth`: `X-Forwarded-Method`,
//!   `X-Forwarded-Host` and `X-Forwarded-Uri`.
//! - `/envoy/...`: Envoy's HTTP ext_authz (`http_service` with `path_prefix: /envoy`): the
//!   request itself, its path after the prefix.
//!
//! The header conventions take the request from headers, so they answer only peers listed
//! in `credentials.trusted_proxies` (anyone else could name any request): others get 400.
//! Allow: 200 with the identity headers (`response.claims_to_headers`) for the proxy to copy
//! upstream. Deny: the reason's status (401/403/400/429/503), `WWW-Authenticate`, and the JSON
//! body `{reason, message}`; never a 2xx. Unlike Check, this surface cannot make the proxy
//! remove headers, and proxies copy only the headers an answer carries: a request that
//! already carries an identity header Portcullis sets is refused (400), so a forged copy can
//! never reach the upstream beside (or instead of) the verified one.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::Response,
    routing::any,
};

use crate::{
    credentials::{self, Carried},
    decision::{Decision, Denial, Reason},
    dpop::split_absolute_url,
    headers::Headers,
    pipeline::{Pipeline, RequestAttrs},
    policy::Resource,
    telemetry::{self, TraceCarrier, metrics::Surface},
};
use tracing::Instrument;

/// Most request headers read from one forward-auth request.
const MAX_HEADERS: usize = 256;

/// Where a forward-auth request says what the original request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convention {
    /// `X-Original-*` (nginx).
    Original,
    /// `X-Original-Method` and `X-Original-URL` (ingress-nginx).
    OriginalUrl,
    /// `X-Forwarded-*` (Traefik, Caddy).
    Forwarded,
    /// The request itself, under the `/envoy` prefix (Envoy `http_service`).
    Envoy,
}

/// The forward-auth routes on the serving pipeline.
pub fn router(pipeline: Arc<ArcSwap<Pipeline>>) -> Router {
    Router::new()
        .route("/nginx", any(nginx))
        .route("/ingress-nginx", any(ingress_nginx))
        .route("/forwarded", any(forwarded))
        .route("/envoy", any(envoy))
        .route("/envoy/", any(envoy))
        .route("/envoy/{*rest}", any(envoy))
        .with_state(pipeline)
}

async fn nginx(State(pipeline): State<Arc<ArcSwap<Pipeline>>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    decide(&pipeline, Convention::Original, &parts).await
}

async fn ingress_nginx(
    State(pipeline): State<Arc<ArcSwap<Pipeline>>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    decide(&pipeline, Convention::OriginalUrl, &parts).await
}

async fn forwarded(State(pipeline): State<Arc<ArcSwap<Pipeline>>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    decide(&pipeline, Convention::Forwarded, &parts).await
}

async fn envoy(State(pipeline): State<Arc<ArcSwap<Pipeline>>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    decide(&pipeline, Convention::Envoy, &parts).await
}

/// The original request a forward-auth request describes.
struct Original<'a> {
    method: &'a str,
    /// `http` or `https` (`X-Forwarded-Proto`, or the absolute URL); empty: unknown.
    scheme: &'a str,
    host: &'a str,
    /// Path and query, as the client sent them.
    uri: &'a str,
}

async fn decide(pipeline: &ArcSwap<Pipeline>, convention: Convention, request: &Parts) -> Response {
    let pipeline = pipeline.load_full();
    // Set by the listener on every request (`serve`); without it no peer is trusted.
    let peer = request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let headers = match header_pairs(&request.headers) {
        Ok(headers) => headers,
        Err(denial) => return refused(&pipeline, &denial),
    };
    if let Some(name) = headers.iter().map(|(name, _)| *name).find(|name| {
        pipeline
            .upstream_header_names()
            .chain(pipeline.upstream_header_aliases())
            .any(|set| set.eq_ignore_ascii_case(name))
    }) {
        let denial = Denial::new(
            Reason::MalformedRequest,
            format!(
                "the request carries {name}, an identity header Portcullis sets: the proxy must not pass it on"
            ),
        );
        return refused(&pipeline, &denial);
    }
    let envoy_uri;
    let original = match convention {
        Convention::Envoy => {
            let uri = &request.uri;
            let path = uri.path().strip_prefix("/envoy").unwrap_or_default();
            envoy_uri = match (path.is_empty(), uri.query()) {
                (true, None) => "/".to_owned(),
                (true, Some(query)) => format!("/?{query}"),
                (false, None) => path.to_owned(),
                (false, Some(query)) => format!("{path}?{query}"),
            };
            Original {
                method: request.method.as_str(),
                scheme: Headers::new(&headers)
                    .get("x-forwarded-proto")
                    .unwrap_or_default(),
                host: Headers::new(&headers).get("host").unwrap_or_default(),
                uri: &envoy_uri,
            }
        }
        Convention::Original | Convention::OriginalUrl | Convention::Forwarded => {
            let trusted = pipeline.extraction().trusted_proxies.trusts_peer(peer);
            if !trusted {
                let denial = Denial::new(
                    Reason::MalformedRequest,
                    "forward-auth headers from a peer not in credentials.trusted_proxies",
                );
                return refused(&pipeline, &denial);
            }
            match original_from_headers(convention, Headers::new(&headers)) {
                Ok(original) => original,
                Err(denial) => return refused(&pipeline, &denial),
            }
        }
    };
    let query_tokens = credentials::query_access_tokens(original.uri);
    let attrs = RequestAttrs {
        carried: Carried {
            query_credentials: &query_tokens,
            peer_address: peer,
            ..Carried::headers_only(Headers::new(&headers))
        },
        audience: "",
        required_scopes: &[],
        resource: Resource {
            http_method: original.method,
            host: original.host,
            path: original.uri,
            ..Resource::default()
        },
        scheme: original.scheme,
    };
    let span = telemetry::request_span(
        "forward_auth",
        &[TraceCarrier::Headers(Headers::new(&headers))],
    );
    let decision = pipeline
        .run(Surface::forward_auth, attrs)
        .instrument(span)
        .await;
    answer(&pipeline, &decision)
}

/// The request's headers as pairs; MALFORMED_REQUEST past [`MAX_HEADERS`] or for a value
/// that is not visible ASCII.
fn header_pairs(headers: &HeaderMap) -> Result<Vec<(&str, &str)>, Denial> {
    if headers.len() > MAX_HEADERS {
        return Err(Denial::new(
            Reason::MalformedRequest,
            "too many request headers",
        ));
    }
    headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().map_err(|_| {
                Denial::new(
                    Reason::MalformedRequest,
                    "a request header value is not visible ASCII",
                )
            })?;
            Ok((name.as_str(), value))
        })
        .collect()
}

/// The original request from the convention's headers: each must be there exactly once.
fn original_from_headers<'a>(
    convention: Convention,
    headers: Headers<'a>,
) -> Result<Original<'a>, Denial> {
    let one = |name: &str| {
        let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (Some(value), None) => Ok(value),
            (None, _) => Err(Denial::new(
                Reason::MalformedRequest,
                format!("the forward-auth request has no {name} header"),
            )),
            (Some(_), Some(_)) => Err(Denial::new(
                Reason::MalformedRequest,
                format!("the forward-auth request has more than one {name} header"),
            )),
        }
    };
    let not_a_path = || Denial::new(Reason::MalformedRequest, "the original URI is not a path");
    // The scheme only names the URL a DPoP proof must match: optional, one at most.
    let forwarded_proto = || match headers
        .iter()
        .filter(|(n, _)| *n == "x-forwarded-proto")
        .count()
    {
        0 => Ok(""),
        _ => one("x-forwarded-proto"),
    };
    let (method, scheme, host, uri) = match convention {
        Convention::Original => (
            one("x-original-method")?,
            forwarded_proto()?,
            one("x-original-host")?,
            one("x-original-uri")?,
        ),
        Convention::OriginalUrl => {
            let url = one("x-original-url")?;
            let (scheme, host, uri) = split_absolute_url(url).ok_or_else(|| {
                Denial::new(
                    Reason::MalformedRequest,
                    "X-Original-URL is not an absolute http(s) URL",
                )
            })?;
            (one("x-original-method")?, scheme, host, uri)
        }
        Convention::Forwarded | Convention::Envoy => (
            one("x-forwarded-method")?,
            forwarded_proto()?,
            one("x-forwarded-host")?,
            one("x-forwarded-uri")?,
        ),
    };
    if !uri.starts_with('/') {
        return Err(not_a_path());
    }
    Ok(Original {
        method,
        scheme,
        host,
        uri,
    })
}

/// A request refused before the pipeline: counted and audited like the others.
fn refused(pipeline: &Pipeline, denial: &Denial) -> Response {
    pipeline.refused(Surface::forward_auth, denial);
    denied(denial, &pipeline.challenge(denial))
}

fn answer(pipeline: &Pipeline, decision: &Decision) -> Response {
    match decision {
        Decision::Allow {
            principal,
            identity_token,
            ..
        } => {
            let mut response = Response::new(Body::empty());
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Some(principal) = principal {
                for (name, value) in pipeline.upstream_headers(principal, identity_token.as_deref())
                {
                    // Names were validated at config load; a value that cannot be a header
                    // value was already refused by the renderer (see `upstream`).
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        headers.insert(name, value);
                    }
                }
            }
            response
        }
        Decision::Deny { denial, .. } => denied(denial, &pipeline.challenge(denial)),
    }
}

/// A deny answer for `denial`, with its `WWW-Authenticate` value `challenge` (empty: none).
fn denied(denial: &Denial, challenge: &str) -> Response {
    let row = denial.reason.row();
    let body = serde_json::json!({"reason": denial.reason.as_str(), "message": denial.message})
        .to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(row.http_status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(challenge)
        && !challenge.is_empty()
    {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    for (name, value) in denial.rate_limit.iter().flat_map(|limit| limit.headers()) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_answer_carries_retry_after_and_ratelimit_headers() {
        let denial = Denial::rate_limited(crate::decision::RateLimitExceeded {
            policy: "key",
            retry_after: 3,
            quota: 20,
            window: 2,
        });
        let response = denied(&denial, &denial.www_authenticate("portcullis"));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("retry-after"), Some("3"));
        assert_eq!(header("ratelimit"), Some("\"key\";r=0;t=3"));
        assert_eq!(header("ratelimit-policy"), Some("\"key\";q=20;w=2"));
    }

    #[test]
    fn the_original_request_needs_each_header_exactly_once() {
        let pairs = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", "/orders/1?x=1"),
            ("x-original-uri", "/admin"),
        ];
        let original =
            original_from_headers(Convention::Forwarded, Headers::new(&pairs)).expect("complete");
        assert_eq!(
            (original.method, original.host, original.uri),
            ("GET", "api.example.com", "/orders/1?x=1"),
            "only the convention's own headers are read"
        );
        let missing = original_from_headers(Convention::Original, Headers::new(&pairs));
        assert!(missing.is_err(), "nginx's headers are not Traefik's");
        let twice = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", "/public"),
            ("x-forwarded-uri", "/admin"),
        ];
        assert!(original_from_headers(Convention::Forwarded, Headers::new(&twice)).is_err());
        let absolute = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "a"),
            ("x-forwarded-uri", "http://evil/admin"),
        ];
        assert!(original_from_headers(Convention::Forwarded, Headers::new(&absolute)).is_err());
    }

    #[test]
    fn ingress_nginx_names_the_request_with_an_absolute_url_only() {
        let pairs = [
            ("x-original-method", "GET"),
            ("x-original-url", "https://api.example.com/orders/1?x=1"),
            ("x-original-uri", "/public"),
        ];
        let original =
            original_from_headers(Convention::OriginalUrl, Headers::new(&pairs)).expect("complete");
        assert_eq!(
            (original.method, original.host, original.uri),
            ("GET", "api.example.com", "/orders/1?x=1"),
            "a client's X-Original-URI is not read here"
        );
        for url in [
            "/orders/1",
            "ftp://a/b",
            "https://user:pw@a/b",
            "https:///b",
            "https://a?x=1",
        ] {
            let pairs = [("x-original-method", "GET"), ("x-original-url", url)];
            assert!(
                original_from_headers(Convention::OriginalUrl, Headers::new(&pairs)).is_err(),
                "{url}"
            );
        }
        assert_eq!(split_absolute_url("http://a"), Some(("http", "a", "/")));
    }
}
