//! One canonical form for what a request accesses, or a refusal (SPEC §2 MALFORMED_REQUEST).
//!
//! Rules match only the canonical path and host, so no spelling of a path can reach a rule
//! meant for another one or slip past a deny rule:
//! - Path (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded, every other
//!   percent-encoding is upper-cased, characters outside RFC 3986 `pchar` are
//!   percent-encoded, dot segments are resolved and repeated slashes merged. The query string
//!   is not part of it.
//! - Refused, because common upstream servers disagree on what they mean: an encoded `/` or
//!   `\`, a raw `\`, `;` path parameters (raw or encoded), control bytes and NUL (raw or
//!   encoded), a `#`, double encoding (`%25` followed by two hex digits), malformed
//!   percent-encoding, bytes that are not UTF-8 once decoded, and a path that does not start
//!   with `/`.
//! - Host: lower-cased, the port and one trailing dot removed; anything that is not a DNS
//!   name (letters, digits, `-`, `_`), an IPv4 address or a bracketed IPv6 address is refused.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::decision::{Denial, Reason};

fn malformed(message: &str) -> Denial {
    Denial::new(Reason::MalformedRequest, message)
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `;` (refused), plus `/`: what may stay unencoded.
fn stays_raw(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(byte >> 4)] as char);
    out.push(HEX[usize::from(byte & 0xf)] as char);
}

/// The canonical form of a request path (the query string, if any, is dropped), or
/// MALFORMED_REQUEST. An empty path is `/`.
pub fn canonical_path(raw: &str) -> Result<String, Denial> {
    let path = raw.split_once('?').map_or(raw, |(path, _)| path);
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    if !path.starts_with('/') {
        return Err(malformed("the request path does not start with '/'"));
    }
    let bytes = path.as_bytes();
    let mut encoded = String::with_capacity(path.len());
    // Every byte the path stands for, for the UTF-8 check.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let value = match (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) {
                    (Some(high), Some(low)) => (high << 4) | low,
                    _ => return Err(malformed("the request path has a malformed %-encoding")),
                };
                i += 3;
                match value {
                    b'/' | b'\\' => {
                        return Err(malformed(
                            "the request path has an encoded '/' or '\\' (%2F, %5C)",
                        ));
                    }
                    b';' => return Err(malformed("the request path has an encoded ';' (%3B)")),
                    0..=0x1f | 0x7f => {
                        return Err(malformed(
                            "the request path has an encoded control character",
                        ));
                    }
                    b'%' if bytes.get(i).copied().and_then(hex_value).is_some()
                        && bytes.get(i + 1).copied().and_then(hex_value).is_some() =>
                    {
                        return Err(malformed("the request path is percent-encoded twice"));
                    }
                    _ if is_unreserved(value) => encoded.push(value as char),
                    _ => push_encoded(&mut encoded, value),
                }
                decoded.push(value);
                continue;
            }
            b'\\' => return Err(malformed("the request path has a '\\'")),
            b';' => {
                return Err(malformed(
                    "the request path has ';' path parameters, which servers read differently",
                ));
            }
            b'#' => return Err(malformed("the request path has a '#'")),
            0..=0x1f | 0x7f => {
                return Err(malformed("the request path has a control character"));
            }
            _ if stays_raw(byte) => encoded.push(byte as char),
            _ => push_encoded(&mut encoded, byte),
        }
        decoded.push(byte);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(malformed("the request path is not UTF-8 once decoded"));
    }
    // Double encoding also when its hex digits were themselves encoded (`%25%32%65`).
    if encoded
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
    {
        return Err(malformed("the request path is percent-encoded twice"));
    }
    remove_dot_segments(&encoded)
}

/// RFC 3986 §5.2.4 on an absolute path, then empty segments merged; a trailing slash stays.
/// A `..` that would remove an empty segment is refused: servers that merge slashes first
/// (`/a//../b` is `/b`) and those that do not (`/a/b`) disagree on it.
fn remove_dot_segments(path: &str) -> Result<String, Denial> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.strip_prefix('/').unwrap_or(path).split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "." => {}
            ".." => {
                if segments.pop() == Some("") {
                    return Err(malformed(
                        "the request path has '..' after an empty segment, which servers resolve differently",
                    ));
                }
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in segments.iter().filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && out.len() > 1) {
        out.push('/');
    }
    Ok(out)
}

/// The canonical form of a request's host (`Host` / `:authority`), without its port, or
/// MALFORMED_REQUEST. An empty host stays empty.
pub fn canonical_host(raw: &str) -> Result<String, Denial> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let bad = || malformed("the request host is not a valid host name or IP address");
    if let Some(rest) = raw.strip_prefix('[') {
        let (address, after) = rest.split_once(']').ok_or_else(bad)?;
        check_port(after.strip_prefix(':'), after.is_empty()).ok_or_else(bad)?;
        let address: Ipv6Addr = address.parse().map_err(|_| bad())?;
        return Ok(format!("[{address}]"));
    }
    let (name, port) = match raw.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (raw, None),
    };
    check_port(port, port.is_none()).ok_or_else(bad)?;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(bad());
    }
    let last_label_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()));
    if last_label_numeric {
        // Only a dotted-quad IPv4 address may end in a number (no octal, hex or short forms).
        let address: Ipv4Addr = name.parse().map_err(|_| bad())?;
        return Ok(address.to_string());
    }
    Ok(name.to_ascii_lowercase())
}

/// `Some` when the port part is absent (`absent_ok`) or 1-5 digits within u16.
fn check_port(port: Option<&str>, absent_ok: bool) -> Option<()> {
    match port {
        None if absent_ok => Some(()),
        None => None,
        Some(port) => (!port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok())
        .then_some(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_one_canonical_form() {
        let cases = [
            ("/public/../admin?x=1", "/admin"),
            ("/a//b/./c/", "/a/b/c/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/.%2E/b", "/b"),
            ("", "/"),
            ("/../..", "/"),
            ("/%69nternal/x", "/internal/x"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a%20b", "/a%20b"),
            ("/~user/%7Euser", "/~user/~user"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%25", "/%25"),
            ("/%25zz", "/%25zz"),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical_path(raw).as_deref(), Ok(expected), "{raw:?}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/public/..%2Fadmin/users",
            "/public/..%2fadmin/users",
            "/public/..;/admin/users",
            "/public/..\\admin/users",
            "/public/..%5Cadmin/users",
            "/internal;jsessionid=1/x",
            "/internal%3Bx/y",
            "/a%00b",
            "/a\0b",
            "/a%0d%0ab",
            "/a\r\nb",
            "/a%7Fb",
            "/a%ffb",
            "/a%c3",
            "/a%2",
            "/a%zz",
            "/a%252e%252e/b",
            "/public/%25%32%65%25%32%65/admin",
            "/a/%254%31",
            "/admin//../public/x",
            "/admin/.//../x",
            "/a#frag",
            "admin",
            "*",
            "http://evil.example/admin",
        ] {
            let denial = canonical_path(raw).expect_err(raw);
            assert_eq!(denial.reason, Reason::MalformedRequest, "{raw:?}");
        }
    }

    #[test]
    fn hosts_have_one_canonical_form() {
        let cases = [
            ("Admin.Example", "admin.example"),
            ("admin.example.", "admin.example"),
            ("admin.example.:443", "admin.example"),
            ("admin.example:8080", "admin.example"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]:443", "[::1]"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("svc_internal.local", "svc_internal.local"),
            ("", ""),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical_host(raw).as_deref(), Ok(expected), "{raw:?}");
        }
        for raw in [
            "admin.example..",
            "a..b",
            "admin.example:",
            "admin.example:99999",
            "admin.example:80:80",
            "user@admin.example",
            "admin%2eexample",
            "admin example",
            "-admin.example",
            "0x7f.0.0.1",
            "2130706433",
            "127.1",
            "010.0.0.1",
            "[::1",
            "[::1]x",
            "::1",
            "admin.example\0",
        ] {
            let denial = canonical_host(raw).expect_err(raw);
            assert_eq!(denial.reason, Reason::MalformedRequest, "{raw:?}");
        }
    }
}
