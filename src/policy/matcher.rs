//! Request matching for rules: glob sets compiled once, path normalization before matching
//! (so `/public/../admin` cannot reach a rule for `/admin` through `/public/*`), and exact
//! `context_extensions`.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::Resource;

/// A compiled glob list; `None` matches anything (the field was not set).
pub(super) struct Globs(Option<GlobSet>);

impl Globs {
    /// `segments`: `*` does not cross `/` (paths). `case_insensitive`: hosts.
    pub(super) fn new(
        patterns: &[String],
        segments: bool,
        case_insensitive: bool,
    ) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Globs(None));
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(segments)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(|err| format!("bad pattern {pattern:?}: {err}"))?;
            builder.add(glob);
        }
        builder
            .build()
            .map(|set| Globs(Some(set)))
            .map_err(|err| err.to_string())
    }

    fn matches(&self, value: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.is_match(value))
    }
}

pub(super) struct Matcher {
    pub grpc_services: Globs,
    pub grpc_methods: Globs,
    pub hosts: Globs,
    pub http_methods: Vec<String>,
    pub paths: Globs,
    pub context_extensions: BTreeMap<String, String>,
}

impl Matcher {
    pub(super) fn matches(&self, resource: &Resource<'_>) -> bool {
        let host = resource
            .host
            .rsplit_once(':')
            .map_or(resource.host, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    resource.host
                }
            });
        self.grpc_services.matches(resource.grpc_service)
            && self.grpc_methods.matches(resource.grpc_method)
            && self.hosts.matches(host)
            && (self.http_methods.is_empty()
                || self
                    .http_methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(resource.http_method)))
            && self.paths.matches(resource.path)
            && self.context_extensions.iter().all(|(key, value)| {
                resource.context_extensions.and_then(|ext| ext.get(key)) == Some(value)
            })
    }
}

/// The path a rule sees: query string and fragment dropped, `%2e` decoded, `.`/`..` segments
/// removed (RFC 3986 §5.2.4) and repeated slashes collapsed.
pub fn normalize_path(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        normalized.push('/');
    }
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/public/../admin?x=1"), "/admin");
        assert_eq!(normalize_path("/a//b/./c/"), "/a/b/c/");
        assert_eq!(normalize_path("/a/%2e%2e/b"), "/b");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/../.."), "/");
    }
}
