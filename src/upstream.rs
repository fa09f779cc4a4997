//! Response shaping for allowed requests: upstream identity headers built from the principal
//! (`response.claims_to_headers`), and the full list of header names Portcullis may set
//! (which ext_authz strips from incoming requests so callers cannot spoof identity), with the
//! names some upstreams read as the same header (`x_user_id` for `x-user-id`, CGI-style).
//!
//! Values are percent-encoded so that an upstream's HTTP parser can neither trim nor split
//! them: control bytes, non-ASCII, `%` and `,` always, a space at either end of a value, and
//! inside list items (scopes, JSON strings) also spaces, `"` and `\`. Percent-decoding a
//! value (or each JSON string of an array or object value) gives back the original.

use serde_json::Value;

use crate::decision::Principal;

/// Where one upstream header's value comes from.
#[derive(Debug, Clone)]
enum Source {
    Subject,
    Issuer,
    CredentialType,
    KeyId,
    Scopes,
    Claim(Vec<String>),
}

/// The configured claims-to-headers mapping, parsed once, and the identity token's header.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHeaders {
    mappings: Vec<(Source, String)>,
    /// `response.identity_token.header`, when identity tokens are minted.
    identity_header: Option<String>,
    /// `_` / `-` spellings of the set names that are not set themselves.
    aliases: Vec<String>,
}

impl UpstreamHeaders {
    /// `mapping`: dotted claim path (or `principal.subject|issuer|credential_type|key_id|scopes`)
    /// to a lower-case header name.
    pub fn new<'a>(mapping: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mappings = mapping
            .into_iter()
            .map(|(path, header)| {
                let source = match path.as_str() {
                    "principal.subject" => Source::Subject,
                    "principal.issuer" => Source::Issuer,
                    "principal.credential_type" => Source::CredentialType,
                    "principal.key_id" => Source::KeyId,
                    "principal.scopes" => Source::Scopes,
                    claim => Source::Claim(claim.split('.').map(str::to_owned).collect()),
                };
                (source, header.clone())
            })
            .collect::<Vec<_>>();
        Self {
            mappings,
            identity_header: None,
            aliases: Vec::new(),
        }
        .with_aliases()
    }

    /// The same, also setting `header` to the identity token (`None`: none is minted).
    pub fn with_identity_header(mut self, header: Option<&str>) -> Self {
        self.identity_header = header.map(str::to_owned);
        self.with_aliases()
    }

    fn with_aliases(mut self) -> Self {
        let names: Vec<&str> = self.names().collect();
        let mut aliases: Vec<String> = names
            .iter()
            .flat_map(|header| [header.replace('-', "_"), header.replace('_', "-")])
            .filter(|alias| !names.contains(&alias.as_str()))
            .collect();
        aliases.sort();
        aliases.dedup();
        self.aliases = aliases;
        self
    }

    /// Every header name this mapping can set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.mappings
            .iter()
            .map(|(_, header)| header.as_str())
            .chain(self.identity_header.as_deref())
    }

    /// Other spellings of those names that some upstreams treat as the same header.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.aliases.iter().map(String::as_str)
    }

    /// The headers to set for `principal` (a claim that is absent sets nothing), and the
    /// identity token's header when one was minted.
    pub fn render(
        &self,
        principal: &Principal,
        identity_token: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut headers = Vec::with_capacity(self.mappings.len() + 1);
        for (source, header) in &self.mappings {
            let value = match source {
                Source::Subject => Some(encode_text(&principal.subject)),
                Source::Issuer => Some(encode_text(&principal.issuer)),
                Source::CredentialType => Some(principal.credential_type.as_str().to_owned()),
                Source::KeyId => Some(encode_text(&principal.key_id)),
                Source::Scopes => Some(
                    principal
                        .scopes
                        .iter()
                        .map(|scope| encode_item(scope))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                Source::Claim(path) => principal.claim_at(path).as_ref().and_then(encode_value),
            };
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                headers.push((header.clone(), value));
            }
        }
        if let (Some(header), Some(token)) = (&self.identity_header, identity_token) {
            headers.push((header.clone(), token.to_owned()));
        }
        headers
    }
}

/// Scalars as text; arrays and objects as compact JSON whose strings are encoded list items;
/// null as nothing.
fn encode_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(encode_text(text)),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => serde_json::to_string(&encode_strings(value)).ok(),
    }
}

/// The same JSON value with every string (object keys included) encoded as a list item, so
/// that the serialized form has `,` and `"` only as JSON syntax.
fn encode_strings(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(encode_item(text)),
        Value::Array(items) => Value::Array(items.iter().map(encode_strings).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, value)| (encode_item(key), encode_strings(value)))
                .collect(),
        ),
        scalar => scalar.clone(),
    }
}

/// A single header value: printable ASCII passes through except `%` and `,`; a space at either
/// end is encoded (parsers trim it); every other byte (controls, DEL, non-ASCII UTF-8) is
/// percent-encoded, so CR, LF and NUL can never reach a header.
pub fn encode_text(text: &str) -> String {
    let last = text.len().saturating_sub(1);
    encode_with(text, |i, byte| {
        byte == b' ' && (i == 0 || i == last) || matches!(byte, b'%' | b',')
    })
}

/// An item of a list value (a scope, a JSON string): also spaces, `"` and `\` are encoded.
fn encode_item(text: &str) -> String {
    encode_with(text, |_, byte| {
        matches!(byte, b'%' | b',' | b' ' | b'"' | b'\\')
    })
}

fn encode_with(text: &str, also_encode: impl Fn(usize, u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, byte) in text.bytes().enumerate() {
        if (0x20..0x7f).contains(&byte) && !also_encode(i, byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::CredentialType;
    use serde_json::json;

    #[test]
    fn values_are_encoded_safely() {
        let Value::Object(claims) = json!({
            "email": "a@example.com",
            "evil": "x\r\nX-Injected: 1\u{0}",
            "name": "José",
            "roles": ["a", "b\nc"],
            "org": {"id": 7},
            "n": 3,
            "none": null,
        }) else {
            unreachable!()
        };
        let principal = Principal::new(
            "alice".into(),
            "corp".into(),
            CredentialType::Jwt,
            claims,
            vec!["r".into(), "w".into()],
            None,
            "k".into(),
        );
        let mapping: Vec<(String, String)> = [
            ("email", "x-email"),
            ("evil", "x-evil"),
            ("name", "x-name"),
            ("roles", "x-roles"),
            ("org.id", "x-org"),
            ("n", "x-n"),
            ("none", "x-none"),
            ("missing", "x-missing"),
            ("principal.subject", "x-user"),
            ("principal.scopes", "x-scopes"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let headers =
            UpstreamHeaders::new(mapping.iter().map(|(a, b)| (a, b))).render(&principal, None);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(h, _)| h == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-email"), Some("a@example.com"));
        assert_eq!(get("x-evil"), Some("x%0D%0AX-Injected: 1%00"));
        assert_eq!(get("x-name"), Some("Jos%C3%A9"));
        assert_eq!(get("x-roles"), Some(r#"["a","b%0Ac"]"#));
        assert_eq!(get("x-org"), Some("7"));
        assert_eq!(get("x-n"), Some("3"));
        assert_eq!(get("x-none"), None);
        assert_eq!(get("x-missing"), None);
        assert_eq!(get("x-user"), Some("alice"));
        assert_eq!(get("x-scopes"), Some("r w"));
        for (_, value) in &headers {
            assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
        }
    }

    #[test]
    fn values_cannot_be_trimmed_or_split_by_the_upstream() {
        let Value::Object(claims) = json!({
            "groups": ["a,b", "c"],
            "nested": {"k,1": "v \"x\""},
            "title": "x, y",
        }) else {
            unreachable!()
        };
        let principal = Principal::new(
            " admin ".into(),
            "corp".into(),
            CredentialType::Jwt,
            claims,
            vec!["read write".into(), "admin".into()],
            None,
            "k".into(),
        );
        let mapping: Vec<(String, String)> = [
            ("principal.subject", "x-user-id"),
            ("principal.scopes", "x-scopes"),
            ("groups", "x-groups"),
            ("nested", "x-nested"),
            ("title", "x_title"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let upstream = UpstreamHeaders::new(mapping.iter().map(|(a, b)| (a, b)));
        let headers = upstream.render(&principal, None);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(h, _)| h == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-user-id"), Some("%20admin%20"));
        assert_eq!(get("x-scopes"), Some("read%20write admin"));
        assert_eq!(get("x-groups"), Some(r#"["a%2Cb","c"]"#));
        assert_eq!(get("x-nested"), Some(r#"{"k%2C1":"v%20%22x%22"}"#));
        assert_eq!(get("x_title"), Some("x%2C y"));
        let aliases: Vec<&str> = upstream.aliases().collect();
        assert_eq!(
            aliases,
            ["x-title", "x_groups", "x_nested", "x_scopes", "x_user_id"]
        );
    }
}
