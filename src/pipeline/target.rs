//! The target of an authorization request, the first thing Authorize and Check establish:
//! the canonical path and host every rule sees (see `policy::canonical`), the gRPC service
//! and method (given, or derived from `POST /package.Service/Method`), and the refusals of
//! requests that would be decided as one thing and served as another: method-override
//! headers or a `_method` parameter naming another method, and headers spelled like an
//! identity header Portcullis sets upstream.

use crate::{
    decision::{Denial, Reason},
    headers::Headers,
    policy::{Resource, canonical_host, canonical_path},
    upstream::UpstreamHeaders,
};

/// The canonical path and host of a request, and where its gRPC service and method are.
#[derive(Debug)]
pub struct Target {
    path: String,
    /// `path` with its trailing slash toggled, for deny rules.
    alternate_path: String,
    host: String,
    /// In `path`: where the service name ends and the method starts.
    grpc: Option<(usize, usize)>,
}

impl Target {
    /// The target of `resource`, or why the request is refused (MALFORMED_REQUEST).
    pub fn of(
        resource: &Resource<'_>,
        headers: Headers<'_>,
        upstream: &UpstreamHeaders,
    ) -> Result<Self, Denial> {
        refuse_identity_header_spellings(headers, upstream)?;
        refuse_method_override(resource.http_method, resource.path, headers)?;
        let path = canonical_path(resource.path)?;
        let host = canonical_host(resource.host)?;
        let grpc = if resource.grpc_service.is_empty() && resource.grpc_method.is_empty() {
            grpc_target(resource.http_method, &path, headers)
        } else {
            None
        };
        let alternate_path = match path.strip_suffix('/') {
            Some("") => String::new(),
            Some(without) => without.to_owned(),
            None => format!("{path}/"),
        };
        Ok(Self {
            path,
            alternate_path,
            host,
            grpc,
        })
    }

    /// `raw` with the canonical path and host, and the derived gRPC service and method.
    pub fn resource<'a>(&'a self, raw: &Resource<'a>) -> Resource<'a> {
        let (grpc_service, grpc_method) = match self.grpc {
            Some((end, start)) => (&self.path[1..end], &self.path[start..]),
            None => (raw.grpc_service, raw.grpc_method),
        };
        Resource {
            grpc_service,
            grpc_method,
            path: &self.path,
            alternate_path: &self.alternate_path,
            host: &self.host,
            ..*raw
        }
    }
}

/// An incoming header spelled like one Portcullis sets upstream but not exactly
/// (`x_user-id` for `x-user-id`) would reach CGI-style upstreams as that header: refused.
fn refuse_identity_header_spellings(
    headers: Headers<'_>,
    upstream: &UpstreamHeaders,
) -> Result<(), Denial> {
    let spoofed = headers.iter().any(|(name, _)| {
        upstream
            .names()
            .any(|set| !name.eq_ignore_ascii_case(set) && same_header_name(name, set))
    });
    if spoofed {
        return Err(Denial::new(
            Reason::MalformedRequest,
            "a request header is another spelling of an identity header Portcullis sets",
        ));
    }
    Ok(())
}

/// Headers some frameworks read as the request's real method: a request whose method they
/// contradict would be decided as one method and served as another.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `name` is `expected` once case and `_`/`-` are ignored (how CGI-style servers
/// read header names).
fn same_header_name(name: &str, expected: &str) -> bool {
    name.len() == expected.len()
        && name.bytes().zip(expected.bytes()).all(|(a, b)| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(a) == fold(b)
        })
}

fn refuse_method_override(method: &str, path: &str, headers: Headers<'_>) -> Result<(), Denial> {
    let contradicts = |value: &str| !value.trim().eq_ignore_ascii_case(method);
    let by_header = headers.iter().any(|(name, value)| {
        METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| same_header_name(name, h))
            && contradicts(value)
    });
    // Express' method-override, Symfony and Rails read a `_method` query parameter too.
    let by_query = path.split_once('?').is_some_and(|(_, query)| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "_method" && contradicts(&value))
    });
    if by_header || by_query {
        return Err(Denial::new(
            Reason::MalformedRequest,
            "a method-override header names another method than the request's",
        ));
    }
    Ok(())
}

/// gRPC through Envoy: `POST /package.Service/Method` (content-type application/grpc, or a
/// service name with a package). Returns where the service name ends and the method starts.
fn grpc_target(method: &str, path: &str, headers: Headers<'_>) -> Option<(usize, usize)> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let is_grpc = headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let (service, rpc) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty()
        && !rpc.is_empty()
        && !rpc.contains('/')
        && (is_grpc || service.contains('.')))
    .then(|| (1 + service.len(), 2 + service.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource<'a>(method: &'a str, path: &'a str) -> Resource<'a> {
        Resource {
            http_method: method,
            path,
            host: "api.example.com",
            ..Resource::default()
        }
    }

    fn target(method: &str, path: &str, h: &[(&str, &str)]) -> Result<Target, Reason> {
        let mapping = [("sub".to_owned(), "x-user-id".to_owned())];
        let upstream = UpstreamHeaders::new(mapping.iter().map(|(c, h)| (c, h)));
        Target::of(&resource(method, path), Headers::new(h), &upstream).map_err(|d| d.reason)
    }

    #[test]
    fn paths_are_canonical_and_deny_rules_see_the_toggled_slash() {
        let t = target("GET", "/a/./b/../c?x=1", &[]).unwrap();
        let raw = resource("GET", "/a/./b/../c?x=1");
        let seen = t.resource(&raw);
        assert_eq!(seen.path, "/a/c");
        assert_eq!(seen.alternate_path, "/a/c/");
        assert_eq!(seen.host, "api.example.com");
        assert_eq!(
            target("GET", "/a%2Fb", &[]).unwrap_err(),
            Reason::MalformedRequest
        );
    }

    #[test]
    fn grpc_service_and_method_come_from_the_path() {
        let t = target(
            "POST",
            "/pkg.Orders/Get",
            &[("content-type", "application/grpc")],
        )
        .unwrap();
        let raw = resource("POST", "/pkg.Orders/Get");
        let seen = t.resource(&raw);
        assert_eq!((seen.grpc_service, seen.grpc_method), ("pkg.Orders", "Get"));
        let t = target("GET", "/pkg.Orders/Get", &[]).unwrap();
        let raw = resource("GET", "/pkg.Orders/Get");
        assert_eq!(t.resource(&raw).grpc_service, "");
    }

    #[test]
    fn requests_decided_as_one_thing_and_served_as_another_are_refused() {
        let refused = [
            ("GET", "/a", vec![("x-http-method-override", "DELETE")]),
            ("GET", "/a", vec![("X_HTTP_Method", "PUT")]),
            ("GET", "/a?_method=DELETE", vec![]),
            ("GET", "/a", vec![("x_user_id", "admin")]),
            ("GET", "/a", vec![("X-User_Id", "admin")]),
        ];
        for (method, path, h) in refused {
            assert_eq!(
                target(method, path, &h).unwrap_err(),
                Reason::MalformedRequest,
                "{path} {h:?}"
            );
        }
        // The same method, or the exact identity header name (overwritten upstream), is fine.
        assert!(target("GET", "/a", &[("x-http-method-override", "get")]).is_ok());
        assert!(target("GET", "/a", &[("x-user-id", "spoof")]).is_ok());
    }
}
