//! Credential extraction, the first phase of every request (SPEC §2, §4): which single
//! credential a request carries, classified and decoded, with the certificate chain it
//! presented and the client address it comes from. Nothing is verified here; shape problems
//! become denials.
//!
//! Exactly one credential, from exactly one place (RFC 6750 §3.1): the explicit `Credential`
//! oneof, the `authorization` header, a configured API key header, or an `access_token` query
//! parameter. Two sources, a repeated header (surfaces join repeated headers with `,`, as
//! HTTP does) or a repeated query parameter is AMBIGUOUS_CREDENTIAL, and every source obeys
//! `max_credential_bytes`. A bearer token is a JWT when it is shaped like one, an API key when
//! it carries the configured key prefix, and an opaque token otherwise. With no other
//! credential, a presented client certificate is the credential.

use std::{borrow::Cow, net::IpAddr};

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls_pki_types::CertificateDer;

use crate::{
    client_address::TrustedProxies,
    decision::{CredentialType, Denial, Reason},
    headers::Headers,
    jwt, pb,
};

/// Largest `client_certificate_pem` accepted (a certificate chain), in bytes.
const MAX_CERTIFICATE_PEM_BYTES: usize = 64 * 1024;

/// What a request carries that extraction looks at, as every surface hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Carried<'a> {
    pub credential: Option<&'a pb::Credential>,
    pub headers: Headers<'a>,
    /// Every `access_token` value of the URL query string (ext_authz).
    pub query_credentials: &'a [String],
    /// `client_certificate_pem` from the request (empty: none).
    pub client_certificate_pem: &'a str,
    /// The chain the TLS peer presented, leaf first (empty: none or no mTLS).
    pub peer_certificates: &'a [CertificateDer<'static>],
    /// The caller's address: the gRPC peer, or Envoy's `source.address`.
    pub peer_address: Option<IpAddr>,
}

/// Every `access_token` value in the query string of `path` (RFC 6750 §2.3), decoded; none
/// without a query string. What the HTTP surfaces hand over as `query_credentials`.
pub fn query_access_tokens(path: &str) -> Vec<String> {
    match path.split_once('?') {
        Some((_, query)) if !query.is_empty() => form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "access_token")
            .map(|(_, value)| value.into_owned())
            .collect(),
        _ => Vec::new(),
    }
}

impl<'a> Carried<'a> {
    /// A request that carries headers only: no credential field, query string, certificate
    /// or peer address (`policy test`, tests, benchmarks).
    pub fn headers_only(headers: Headers<'a>) -> Self {
        Self {
            credential: None,
            headers,
            query_credentials: &[],
            client_certificate_pem: "",
            peer_certificates: &[],
            peer_address: None,
        }
    }
}

/// How credentials are found, from `credentials` and `api_keys` in the config.
#[derive(Debug, Clone)]
pub struct Extraction {
    pub api_key_headers: Vec<String>,
    pub max_credential_bytes: usize,
    /// The API key prefix when API keys are configured: a bearer token carrying it is a key.
    pub api_key_prefix: Option<String>,
    pub trusted_proxies: TrustedProxies,
}

/// One credential, classified and decoded, borrowed from the request where it can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    Jwt(&'a str),
    OpaqueToken(&'a str),
    ApiKey(&'a str),
    Basic {
        user: Cow<'a, str>,
        password: Cow<'a, str>,
    },
    /// The certificate chain (in [`Presented::chain`]) is the credential.
    ClientCertificate,
}

impl Credential<'_> {
    pub fn kind(&self) -> CredentialType {
        match self {
            Credential::Jwt(_) => CredentialType::Jwt,
            Credential::OpaqueToken(_) => CredentialType::OpaqueToken,
            Credential::ApiKey(_) => CredentialType::ApiKey,
            Credential::Basic { .. } => CredentialType::Basic,
            Credential::ClientCertificate => CredentialType::ClientCertificate,
        }
    }

    /// The text a log's short digest of this credential is taken from: for Basic the user
    /// name only (a digest of a password would be guessable); none for a certificate.
    pub fn digest_source(&self) -> Option<&str> {
        match self {
            Credential::Jwt(text) | Credential::OpaqueToken(text) | Credential::ApiKey(text) => {
                Some(text)
            }
            Credential::Basic { user, .. } => Some(user),
            Credential::ClientCertificate => None,
        }
    }
}

/// The authorization scheme an access token came with (RFC 6750 `Bearer`, RFC 9449 `DPoP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenScheme {
    /// `Bearer`, or any source other than `Authorization: DPoP`.
    #[default]
    Bearer,
    Dpop,
}

/// Everything extraction found in one request.
#[derive(Debug, Clone)]
pub struct Presented<'a> {
    /// `DPoP` when the credential came as `Authorization: DPoP <token>`.
    pub scheme: TokenScheme,
    /// The request's headers, where a DPoP proof is looked for (only for DPoP-bound tokens:
    /// see [`dpop_proof`]).
    pub headers: Headers<'a>,
    /// The credential, or why the request has none that can be used (MISSING_CREDENTIAL
    /// when it presented nothing).
    pub credential: Result<Credential<'a>, Denial>,
    /// The certificate chain presented (`client_certificate_pem`, else the TLS peer's), leaf
    /// first: the credential itself, or what an RFC 8705 token is bound to.
    pub chain: Option<Cow<'a, [CertificateDer<'static>]>>,
    /// The client address, through trusted proxies (for throttling).
    pub client: Option<IpAddr>,
    /// Whether the URL query string carried a credential (RFC 6750 §2.3: refused unless a
    /// rule allows it).
    pub in_query: bool,
}

impl Presented<'_> {
    /// The credential's kind, if one was recognised.
    pub fn kind(&self) -> Option<CredentialType> {
        self.credential.as_ref().ok().map(Credential::kind)
    }
}

/// Finds the request's single credential.
pub fn extract<'a>(carried: &Carried<'a>, settings: &Extraction) -> Presented<'a> {
    let chain = presented_chain(carried);
    let mut scheme = TokenScheme::Bearer;
    let credential = match &chain {
        Err(denial) => Err(denial.clone()),
        Ok(chain) => match find(carried, settings) {
            Ok(found) => {
                if matches!(found, Found::Dpop(_)) {
                    scheme = TokenScheme::Dpop;
                }
                classify(found, settings)
            }
            Err(denial) if denial.reason == Reason::MissingCredential && chain.is_some() => {
                Ok(Credential::ClientCertificate)
            }
            Err(denial) => Err(denial),
        },
    };
    Presented {
        scheme,
        headers: carried.headers,
        credential,
        chain: chain.ok().flatten(),
        client: settings
            .trusted_proxies
            .client(carried.peer_address, carried.headers),
        in_query: !carried.query_credentials.is_empty(),
    }
}

/// A credential as found, before classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found<'a> {
    Bearer(&'a str),
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1).
    Dpop(&'a str),
    ApiKey(&'a str),
    /// `Authorization: Basic <base64>`.
    BasicEncoded(&'a str),
    /// The `Credential.basic` message.
    BasicPair {
        user: &'a str,
        password: &'a str,
    },
}

fn classify<'a>(found: Found<'a>, settings: &Extraction) -> Result<Credential<'a>, Denial> {
    Ok(match found {
        Found::Bearer(token) | Found::Dpop(token) if jwt::looks_like_jwt(token) => {
            Credential::Jwt(token)
        }
        // An API key sent as a bearer token is recognised by its prefix (a damaged one too:
        // its checksum then refuses it), so it never reaches a third-party introspection.
        Found::Bearer(token) | Found::Dpop(token)
            if settings
                .api_key_prefix
                .as_deref()
                .is_some_and(|prefix| crate::keys::api_keys::format::has_prefix(token, prefix)) =>
        {
            Credential::ApiKey(token)
        }
        Found::Bearer(token) | Found::Dpop(token) => Credential::OpaqueToken(token),
        Found::ApiKey(key) => Credential::ApiKey(key),
        Found::BasicEncoded(encoded) => {
            let (user, password) = decode_basic(encoded)?;
            Credential::Basic {
                user: Cow::Owned(user),
                password: Cow::Owned(password),
            }
        }
        Found::BasicPair { user, password } => Credential::Basic {
            user: Cow::Borrowed(user),
            password: Cow::Borrowed(password),
        },
    })
}

/// Splits base64 `user:password` (RFC 7617).
pub fn decode_basic(encoded: &str) -> Result<(String, String), Denial> {
    let malformed = |message: &str| Denial::basic(Reason::MalformedCredential, message);
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed("Basic credentials are not valid base64"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| malformed("Basic credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| malformed("Basic credentials have no ':' between user and password"))?;
    if user.is_empty() {
        return Err(malformed("Basic credentials have an empty user name"));
    }
    Ok((user.to_owned(), password.to_owned()))
}

/// The one credential the request carries, from wherever it is.
fn find<'a>(carried: &Carried<'a>, settings: &Extraction) -> Result<Found<'a>, Denial> {
    let from_message = carried
        .credential
        .and_then(|c| c.kind.as_ref())
        .map(from_oneof)
        .transpose()?;
    let mut from_headers = None;
    for (name, value) in carried.headers.iter() {
        let found = if name.eq_ignore_ascii_case("authorization") {
            Some(parse_authorization(value)?)
        } else if settings
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
    let from_query = match carried.query_credentials {
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
    check_size(&found, settings.max_credential_bytes)?;
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
fn api_key(value: &str) -> Result<Found<'_>, Denial> {
    if value.contains(',') {
        return Err(ambiguous());
    }
    non_empty(value).map(Found::ApiKey)
}

fn from_oneof(kind: &pb::credential::Kind) -> Result<Found<'_>, Denial> {
    match kind {
        pb::credential::Kind::BearerToken(token) => bearer(token.trim()),
        pb::credential::Kind::ApiKey(key) => api_key(key),
        pb::credential::Kind::Basic(basic) => Ok(Found::BasicPair {
            user: &basic.username,
            password: &basic.password,
        }),
        pb::credential::Kind::Authorization(value) => parse_authorization(value),
    }
}

/// Parses an Authorization header value; the scheme is case-insensitive (RFC 9110 §11.1).
/// No scheme's credential contains `,`: one means the header was sent more than once.
fn parse_authorization(value: &str) -> Result<Found<'_>, Denial> {
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
    } else if scheme.eq_ignore_ascii_case("dpop") {
        match bearer(rest)? {
            Found::Bearer(token) => Ok(Found::Dpop(token)),
            other => Ok(other),
        }
    } else if scheme.eq_ignore_ascii_case("basic") {
        Ok(Found::BasicEncoded(rest))
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
fn bearer(token: &str) -> Result<Found<'_>, Denial> {
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if valid {
        Ok(Found::Bearer(token))
    } else {
        Err(Denial::new(
            Reason::MalformedCredential,
            "bearer token is empty or has characters RFC 6750 does not allow",
        ))
    }
}

fn check_size(found: &Found<'_>, max: usize) -> Result<(), Denial> {
    let size = match found {
        Found::Bearer(token)
        | Found::Dpop(token)
        | Found::ApiKey(token)
        | Found::BasicEncoded(token) => token.len(),
        Found::BasicPair { user, password } => user.len() + password.len(),
    };
    if size > max {
        return Err(Denial::new(
            Reason::MalformedCredential,
            format!("credential is larger than {max} bytes"),
        ));
    }
    Ok(())
}

/// The request's `DPoP` header: none, or exactly one compact JWS of at most `max` bytes.
/// Sent twice (or joined with `,`) it is refused (RFC 9449 §4.3: one header at most).
pub fn dpop_proof<'a>(headers: Headers<'a>, max: usize) -> Result<Option<&'a str>, Denial> {
    let invalid = |reason, message: String| Denial::dpop(reason, true, message);
    let mut found = None;
    for (name, value) in headers.iter() {
        if !name.eq_ignore_ascii_case("dpop") {
            continue;
        }
        if found.is_some() || value.contains(',') {
            return Err(invalid(
                Reason::AmbiguousCredential,
                "more than one DPoP proof header".to_owned(),
            ));
        }
        found = Some(value.trim());
    }
    let Some(proof) = found else {
        return Ok(None);
    };
    if proof.len() > max {
        return Err(invalid(
            Reason::MalformedCredential,
            format!("DPoP proof is larger than {max} bytes"),
        ));
    }
    if proof.is_empty()
        || !proof
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            Reason::MalformedCredential,
            "DPoP proof is not a compact JWS".to_owned(),
        ));
    }
    Ok(Some(proof))
}

/// Every certificate in a PEM text, in order.
pub fn parse_pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut chain = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| format!("invalid PEM: {err}"))?;
        if block.label == "CERTIFICATE" {
            chain.push(CertificateDer::from(block.contents));
        }
    }
    if chain.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(chain)
}

/// The certificate chain the request presented: `client_certificate_pem`, else the TLS
/// peer's. Both present and naming different certificates is ambiguous.
fn presented_chain<'a>(
    carried: &Carried<'a>,
) -> Result<Option<Cow<'a, [CertificateDer<'static>]>>, Denial> {
    let pem = carried.client_certificate_pem.trim();
    if pem.is_empty() {
        return Ok((!carried.peer_certificates.is_empty())
            .then_some(Cow::Borrowed(carried.peer_certificates)));
    }
    if pem.len() > MAX_CERTIFICATE_PEM_BYTES {
        return Err(Denial::new(
            Reason::MalformedCredential,
            format!("client_certificate_pem is larger than {MAX_CERTIFICATE_PEM_BYTES} bytes"),
        ));
    }
    let chain = parse_pem_chain(pem).map_err(|err| {
        Denial::new(
            Reason::MalformedCredential,
            format!("client_certificate_pem: {err}"),
        )
    })?;
    if let (Some(peer), Some(given)) = (carried.peer_certificates.first(), chain.first())
        && peer != given
    {
        return Err(Denial::new(
            Reason::AmbiguousCredential,
            "the TLS peer certificate and client_certificate_pem differ",
        ));
    }
    Ok(Some(Cow::Owned(chain)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Scheme;

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    fn settings() -> Extraction {
        Extraction {
            api_key_headers: vec!["x-api-key".to_owned()],
            max_credential_bytes: 8192,
            api_key_prefix: Some("pcl".to_owned()),
            trusted_proxies: TrustedProxies::default(),
        }
    }

    fn carried<'a>(
        headers: &'a [(&'a str, &'a str)],
        query: &'a [String],
        credential: Option<&'a pb::Credential>,
    ) -> Carried<'a> {
        Carried {
            credential,
            headers: Headers::new(headers),
            query_credentials: query,
            client_certificate_pem: "",
            peer_certificates: &[],
            peer_address: None,
        }
    }

    fn from_headers<'a>(h: &'a [(&'a str, &'a str)]) -> Result<Credential<'a>, Denial> {
        extract(&carried(h, &[], None), &settings()).credential
    }

    fn reason(result: Result<Credential<'_>, Denial>) -> Option<Reason> {
        result.err().map(|d| d.reason)
    }

    #[test]
    fn query_tokens_are_every_decoded_access_token() {
        assert!(query_access_tokens("/a").is_empty());
        assert!(query_access_tokens("/a?").is_empty());
        assert_eq!(
            query_access_tokens("/a?x=1&access_token=a%2Eb&access_token=c"),
            ["a.b", "c"]
        );
        assert!(query_access_tokens("/a?access_tokenx=1").is_empty());
    }

    #[test]
    fn extraction_table() {
        let long = format!("Bearer {}", "a".repeat(9000));
        type Pairs<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(&str, Pairs<'_>, Option<Reason>)> = vec![
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
                headers(&[("authorization", &long)]),
                Some(Reason::MalformedCredential),
            ),
        ];
        for (name, h, expected) in cases {
            assert_eq!(reason(from_headers(&h)), expected, "{name}");
        }
    }

    #[test]
    fn bearer_tokens_are_classified_by_shape_and_api_key_prefix() {
        let cases = [
            ("Bearer aaa.bbb.ccc", CredentialType::Jwt),
            ("Bearer 2YotnFZFEjr1zCsicMWpAA", CredentialType::OpaqueToken),
            ("Bearer pcl_0123456789abcdef", CredentialType::ApiKey),
            ("ApiKey pcl_0123456789abcdef", CredentialType::ApiKey),
        ];
        for (value, kind) in cases {
            let h = headers(&[("authorization", value)]);
            assert_eq!(from_headers(&h).unwrap().kind(), kind, "{value}");
        }
        // Without API keys configured, a prefixed token is just an opaque token.
        let h = headers(&[("authorization", "Bearer pcl_0123456789abcdef")]);
        let without_keys = Extraction {
            api_key_prefix: None,
            ..settings()
        };
        assert_eq!(
            extract(&carried(&h, &[], None), &without_keys).kind(),
            Some(CredentialType::OpaqueToken)
        );
    }

    #[test]
    fn query_credentials_are_single_bounded_and_exclusive() {
        let none = Vec::<(&str, &str)>::new();
        let query = |q: &[String]| {
            let presented = extract(&carried(&none, q, None), &settings());
            assert!(presented.in_query);
            presented.credential.map(|c| c.kind()).map_err(|d| d.reason)
        };
        assert_eq!(query(&["abc.def.ghi".to_owned()]), Ok(CredentialType::Jwt));
        assert_eq!(
            query(&["a".to_owned(), "b".to_owned()]),
            Err(Reason::AmbiguousCredential)
        );
        let with_header = headers(&[("authorization", "Bearer x.y.z")]);
        let one = ["abc.def.ghi".to_owned()];
        assert_eq!(
            reason(extract(&carried(&with_header, &one, None), &settings()).credential),
            Some(Reason::AmbiguousCredential)
        );
        assert_eq!(
            query(&["a".repeat(settings().max_credential_bytes + 1)]),
            Err(Reason::MalformedCredential)
        );
        assert_eq!(query(&[String::new()]), Err(Reason::MalformedCredential));
        assert!(!extract(&carried(&none, &[], None), &settings()).in_query);
    }

    #[test]
    fn message_and_header_credentials_together_are_ambiguous() {
        let credential = pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken("a.b.c".into())),
        };
        let h = headers(&[("authorization", "Bearer x.y.z")]);
        assert_eq!(
            reason(extract(&carried(&h, &[], Some(&credential)), &settings()).credential),
            Some(Reason::AmbiguousCredential)
        );
        let none = Vec::<(&str, &str)>::new();
        assert_eq!(
            extract(&carried(&none, &[], Some(&credential)), &settings())
                .credential
                .unwrap(),
            Credential::Jwt("a.b.c")
        );
    }

    #[test]
    fn basic_credentials_are_decoded_per_rfc7617() {
        let enc = |s: &[u8]| STANDARD.encode(s);
        let basic = |encoded: &str| {
            let value = format!("Basic {encoded}");
            let h = headers(&[("authorization", &value)]);
            match extract(&carried(&h, &[], None), &settings()).credential? {
                Credential::Basic { user, password } => {
                    Ok((user.into_owned(), password.into_owned()))
                }
                other => panic!("not Basic: {other:?}"),
            }
        };
        assert_eq!(
            basic(&enc(b"alice:pa:ss:word")).unwrap(),
            ("alice".to_owned(), "pa:ss:word".to_owned())
        );
        assert_eq!(basic(&enc("jös:ü".as_bytes())).unwrap().0, "jös");
        let cases: [(&str, String); 4] = [
            ("no colon", enc(b"alice")),
            ("invalid base64", "***".to_owned()),
            ("invalid UTF-8", enc(b"al\xffice:pw")),
            ("empty user", enc(b":pw")),
        ];
        for (name, value) in cases {
            let denial: Denial = basic(&value).unwrap_err();
            assert_eq!(denial.reason, Reason::MalformedCredential, "{name}");
            assert_eq!(denial.scheme, Scheme::Basic, "{name}");
        }
    }

    #[test]
    fn a_certificate_is_the_credential_only_when_nothing_else_is_presented() {
        let none = Vec::<(&str, &str)>::new();
        let peer = [CertificateDer::from(vec![0x30, 0x00])];
        let only_certificate = Carried {
            peer_certificates: &peer,
            ..carried(&none, &[], None)
        };
        let presented = extract(&only_certificate, &settings());
        assert_eq!(presented.credential, Ok(Credential::ClientCertificate));
        assert_eq!(presented.chain.as_deref(), Some(&peer[..]));
        let h = headers(&[("authorization", "Bearer aaa.bbb.ccc")]);
        let token_and_certificate = Carried {
            peer_certificates: &peer,
            ..carried(&h, &[], None)
        };
        let presented = extract(&token_and_certificate, &settings());
        assert_eq!(presented.kind(), Some(CredentialType::Jwt));
        assert!(presented.chain.is_some(), "kept for RFC 8705 binding");
        let garbage = Carried {
            client_certificate_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n",
            ..carried(&h, &[], None)
        };
        assert_eq!(
            reason(extract(&garbage, &settings()).credential),
            Some(Reason::MalformedCredential)
        );
    }
}
