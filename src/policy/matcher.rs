//! Request matching for rules: glob sets compiled once and matched against the canonical
//! path and host (see `canonical`), and exact `context_extensions`.

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
    /// Whether this `match` applies. `deny`: also try the path with its trailing slash
    /// toggled, since many servers serve `/a` and `/a/` alike: a deny rule for one must
    /// catch the other (allow rules match the canonical path only).
    pub(super) fn matches(&self, resource: &Resource<'_>, deny: bool) -> bool {
        self.grpc_services.matches(resource.grpc_service)
            && self.grpc_methods.matches(resource.grpc_method)
            && self.hosts.matches(resource.host)
            && (self.http_methods.is_empty()
                || self
                    .http_methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(resource.http_method)))
            && (self.paths.matches(resource.path)
                || (deny
                    && !resource.alternate_path.is_empty()
                    && self.paths.matches(resource.alternate_path)))
            && self.context_extensions.iter().all(|(key, value)| {
                resource.context_extensions.and_then(|ext| ext.get(key)) == Some(value)
            })
    }
}
