//! Credential extraction (SPEC §2, §4): which credential a request carries and where it came
//! from — the explicit `Credential` oneof, the `authorization` header, a configured API key
//! header, or an `access_token` query parameter. Nothing is verified here; shape problems
//! become denials.
//!
//! Exactly one credential, from exactly one place (RFC 6750 §3.1): two sources, a repeated
//! header (surfaces join repeated headers with `,`, as HTTP does) or a repeated query
//! parameter is AMBIGUOUS_CREDENTIAL, and every source obeys `max_credential_bytes`.

use std::collections::HashMap;

use crate::{
    config::CredentialsConfig,
    decision::{Denial, Reason},
    pb,
};

/// One credential, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    Basic {
        encoded: Option<&'a str>,
        username: &'a str,
        password: &'a str,
    },
}

/// Finds the request's single credential. `query_credentials`: every `access_token` value of
/// the URL query string.
pub fn extract<'a>(
    credential: Option<&'a pb::Credential>,
    headers: &'a HashMap<String, String>,
    query_credentials: &'a [String],
    config: &CredentialsConfig,
) -> Result<Extracted<'a>, Denial> {
    let from_message = credential
        .and_then(|c| c.kind.as_ref())
        .map(from_oneof)
        .transpose()?;
    let mut from_headers = None;
    for (name, value) in headers {
        let found = if name.eq_ignore_ascii_case("authorization") {
            Some(parse_authorization(value)?)
        } else if config
            .api_key_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            Some(api_key(value)?)
        } else {
            None
        };
        if let Some(found) = found {
            if from_headers.is_some() {
                return Err(ambiguous());
            }
            from_headers = Some(found);
        }
    }
    let from_query = match query_credentials {
        [] => None,
        [token] => Some(bearer(token)?),
        _ => return Err(ambiguous()),
    };
    let found = match (from_message, from_headers, from_query) {
        (Some(found), None, None) | (None, Some(found), None) | (None, None, Some(found)) => found,
        (None, None, None) => {
            return Err(Denial::new(
                Reason::MissingCredential,
                "no credential presented",
            ));
        }
        _ => return Err(ambiguous()),
    };
    check_size(&found, config.max_credential_bytes)?;
    Ok(found)
}

fn ambiguous() -> Denial {
    Denial::new(
        Reason::AmbiguousCredential,
        "more than one credential presented",
    )
}

fn non_empty(value: &str) -> Result<&str, Denial> {
    let value = value.trim();
    if value.is_empty() {
        Err(Denial::new(Reason::MalformedCredential, "empty credential"))
    } else {
        Ok(value)
    }
}

/// An API key header value; a `,` means the header was repeated.
fn api_key(value: &str) -> Result<Extracted<'_>, Denial> {
    if value.contains(',') {
        return Err(ambiguous());
    }
    non_empty(value).map(Extracted::ApiKey)
}

fn from_oneof(kind: &pb::credential::Kind) -> Result<Extracted<'_>, Denial> {
    match kind {
        pb::credential::Kind::BearerToken(token) => bearer(token.trim()),
        pb::credential::Kind::ApiKey(key) => api_key(key),
        pb::credential::Kind::Basic(basic) => Ok(Extracted::Basic {
            encoded: None,
            username: &basic.username,
            password: &basic.password,
        }),
        pb::credential::Kind::Authorization(value) => parse_authorization(value),
    }
}

/// Parses an Authorization header value; the scheme is case-insensitive (RFC 9110 §11.1).
/// No scheme's credential contains `,`: one means the header was sent more than once.
pub fn parse_authorization(value: &str) -> Result<Extracted<'_>, Denial> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Denial::new(
            Reason::AmbiguousCredential,
            "Authorization header has no value",
        ));
    }
    if value.contains(',') {
        return Err(Denial::new(
            Reason::AmbiguousCredential,
            "more than one Authorization header value",
        ));
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        bearer(rest)
    } else if scheme.eq_ignore_ascii_case("basic") {
        Ok(Extracted::Basic {
            encoded: Some(rest),
            username: "",
            password: "",
        })
    } else if scheme.eq_ignore_ascii_case("apikey") {
        api_key(rest)
    } else {
        Err(Denial::new(
            Reason::UnsupportedCredential,
            "authorization scheme is not supported",
        ))
    }
}

/// A bearer token must be an RFC 6750 §2.1 b64token.
fn bearer(token: &str) -> Result<Extracted<'_>, Denial> {
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if valid {
        Ok(Extracted::Bearer(token))
    } else {
        Err(Denial::new(
            Reason::MalformedCredential,
            "bearer token is empty or has characters RFC 6750 does not allow",
        ))
    }
}

fn check_size(found: &Extracted<'_>, max: usize) -> Result<(), Denial> {
    let size = match found {
        Extracted::Bearer(token) | Extracted::ApiKey(token) => token.len(),
        Extracted::Basic {
            encoded: Some(encoded),
            ..
        } => encoded.len(),
        Extracted::Basic {
            username, password, ..
        } => username.len() + password.len(),
    };
    if size > max {
        return Err(Denial::new(
            Reason::MalformedCredential,
            format!("credential is larger than {max} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reason(result: Result<Extracted<'_>, Denial>) -> Option<Reason> {
        result.err().map(|d| d.reason)
    }

    #[test]
    fn extraction_table() {
        let config = CredentialsConfig::default();
        let cases: Vec<(&str, HashMap<String, String>, Option<Reason>)> = vec![
            (
                "bearer",
                headers(&[("authorization", "Bearer abc.def.ghi")]),
                None,
            ),
            (
                "scheme is case-insensitive",
                headers(&[("authorization", "bEaReR abc")]),
                None,
            ),
            ("api key header", headers(&[("x-api-key", "pcl_x")]), None),
            (
                "nothing",
                headers(&[("accept", "*/*")]),
                Some(Reason::MissingCredential),
            ),
            (
                "empty authorization",
                headers(&[("authorization", " ")]),
                Some(Reason::AmbiguousCredential),
            ),
            (
                "two credentials",
                headers(&[("authorization", "Bearer a"), ("x-api-key", "k")]),
                Some(Reason::AmbiguousCredential),
            ),
            (
                "bearer without token",
                headers(&[("authorization", "Bearer")]),
                Some(Reason::MalformedCredential),
            ),
            (
                "bearer with bad chars",
                headers(&[("authorization", "Bearer a\"b")]),
                Some(Reason::MalformedCredential),
            ),
            (
                "unknown scheme",
                headers(&[("authorization", "Digest x")]),
                Some(Reason::UnsupportedCredential),
            ),
            (
                "repeated authorization header, joined",
                headers(&[("authorization", "Bearer a.b.c, Bearer x.y.z")]),
                Some(Reason::AmbiguousCredential),
            ),
            (
                "repeated API key header, joined",
                headers(&[("x-api-key", "pcl_a,pcl_b")]),
                Some(Reason::AmbiguousCredential),
            ),
            (
                "two authorization entries differing in case",
                headers(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]),
                Some(Reason::AmbiguousCredential),
            ),
            (
                "oversized",
                headers(&[("authorization", &format!("Bearer {}", "a".repeat(9000)))]),
                Some(Reason::MalformedCredential),
            ),
        ];
        for (name, h, expected) in cases {
            assert_eq!(reason(extract(None, &h, &[], &config)), expected, "{name}");
        }
    }

    #[test]
    fn query_credentials_are_single_bounded_and_exclusive() {
        let config = CredentialsConfig::default();
        let none = HashMap::new();
        let one = ["abc.def.ghi".to_owned()];
        assert_eq!(
            extract(None, &none, &one, &config).unwrap(),
            Extracted::Bearer("abc.def.ghi")
        );
        let two = ["a".to_owned(), "b".to_owned()];
        assert_eq!(
            reason(extract(None, &none, &two, &config)),
            Some(Reason::AmbiguousCredential)
        );
        let with_header = headers(&[("authorization", "Bearer x.y.z")]);
        assert_eq!(
            reason(extract(None, &with_header, &one, &config)),
            Some(Reason::AmbiguousCredential)
        );
        let huge = ["a".repeat(config.max_credential_bytes + 1)];
        assert_eq!(
            reason(extract(None, &none, &huge, &config)),
            Some(Reason::MalformedCredential)
        );
        let empty = [String::new()];
        assert_eq!(
            reason(extract(None, &none, &empty, &config)),
            Some(Reason::MalformedCredential)
        );
    }

    #[test]
    fn message_and_header_credentials_together_are_ambiguous() {
        let credential = pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken("a.b.c".into())),
        };
        let h = headers(&[("authorization", "Bearer x.y.z")]);
        let config = CredentialsConfig::default();
        assert_eq!(
            reason(extract(Some(&credential), &h, &[], &config)),
            Some(Reason::AmbiguousCredential)
        );
        assert_eq!(
            extract(Some(&credential), &HashMap::new(), &[], &config).unwrap(),
            Extracted::Bearer("a.b.c")
        );
    }
}
