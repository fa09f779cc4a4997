//! A request's headers as every surface hands them to the pipeline: name/value pairs
//! borrowed from the decoded request, in the order they arrived. Nothing is copied into a
//! map: the pipeline scans them (a request carries tens of headers, too few for hashing to
//! pay), and ext_authz lends slices of Envoy's message itself (see `grpc::wire`).

use std::collections::HashMap;

/// Borrowed request headers. Names are as the surface received them: Envoy sends them in
/// lower case; an `Authorize` caller may not, so comparisons that must not depend on case
/// say so.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a>(&'a [(&'a str, &'a str)]);

impl<'a> Headers<'a> {
    pub fn new(pairs: &'a [(&'a str, &'a str)]) -> Self {
        Self(pairs)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every header, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0.iter().copied()
    }

    /// The value of the header named exactly `name`; of its last copy if a caller sent it
    /// twice (a protobuf map's last entry wins). Checks that must see every copy iterate.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find_map(|&(candidate, value)| (candidate == name).then_some(value))
    }
}

/// The pairs of a protobuf `map<string, string>` of headers, for [`Headers::new`].
pub fn pairs_of(map: &HashMap<String, String>) -> Vec<(&str, &str)> {
    map.iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_exact_and_take_the_last_copy() {
        let pairs = [
            ("content-type", "application/grpc"),
            ("Content-Type", "text/plain"),
            ("x-a", "1"),
            ("x-a", "2"),
        ];
        let headers = Headers::new(&pairs);
        assert_eq!(headers.get("content-type"), Some("application/grpc"));
        assert_eq!(headers.get("Content-Type"), Some("text/plain"));
        assert_eq!(headers.get("x-a"), Some("2"));
        assert_eq!(headers.get("x-b"), None);
        assert_eq!(headers.len(), 4);
        assert_eq!(
            headers.iter().map(|(_, v)| v).collect::<String>(),
            "application/grpctext/plain12"
        );
    }

    #[test]
    fn a_map_lends_its_pairs() {
        let map = HashMap::from([("authorization".to_owned(), "Bearer x".to_owned())]);
        let pairs = pairs_of(&map);
        assert_eq!(Headers::new(&pairs).get("authorization"), Some("Bearer x"));
    }
}
