//! A principal's claims, kept once and compactly: as the encoded `google.protobuf.Struct`
//! its answers carry (the `claims` of an encoded `portcullis.v1.Principal`, Envoy's dynamic
//! metadata), read back by scanning those bytes for the claim asked for.
//!
//! A verified-credential cache holds one principal per credential, so the claims' form is
//! most of what an entry costs: a `serde_json` map of a typical access token takes about
//! 1.1 KB, its encoded `Struct` about 0.3 KB, and the answers need the encoding anyway.
//!
//! `Struct` holds numbers as doubles. A claim read back is exact: integers up to 2^53 come
//! back as integers and other numbers as floats, and claims holding a number that would not
//! come back the same (a larger integer, a float such as `1.0`) are also kept as the
//! parsed map, which lookups then read.

use bytes::{Buf, Bytes};
use prost::{
    Message,
    encoding::{WireType, decode_key, decode_varint},
};
use serde_json::{Map, Number, Value};

/// Integers of at most this magnitude are exact as doubles.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Claims as an encoded `google.protobuf.Struct`.
#[derive(Debug, Clone)]
pub struct Claims {
    encoded: Bytes,
    /// The claims as parsed, when the encoding would not give all of them back as they were.
    exact: Option<Box<Map<String, Value>>>,
}

impl Claims {
    /// The claims of `object`, encoded.
    pub fn new(object: Map<String, Value>) -> Self {
        let encoded = Bytes::from(json_object_to_struct(&object).encode_to_vec());
        Self::with_encoding(object, encoded)
    }

    /// `object` whose `google.protobuf.Struct` encoding is `encoded` (a slice of a larger
    /// message that embeds it).
    pub(crate) fn with_encoding(object: Map<String, Value>, encoded: Bytes) -> Self {
        let exact = (!object.values().all(survives_encoding)).then(|| Box::new(object));
        Self { encoded, exact }
    }

    /// The encoded `google.protobuf.Struct`.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The claim `name`.
    pub fn get(&self, name: &str) -> Option<Value> {
        if let Some(exact) = &self.exact {
            return exact.get(name).cloned();
        }
        let value = struct_entries(&self.encoded)
            .find_map(|(key, value)| (key == name.as_bytes()).then_some(value))?;
        prost_types::Value::decode(value)
            .ok()
            .map(|v| proto_to_json(&v))
    }

    /// Whether the claim `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        match &self.exact {
            Some(exact) => exact.contains_key(name),
            None => struct_entries(&self.encoded).any(|(key, _)| key == name.as_bytes()),
        }
    }

    /// The claim at a dotted path (`realm_access.roles`), split into its segments.
    pub fn at(&self, path: &[String]) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.get(first)?;
        for segment in rest {
            value = match value {
                Value::Object(mut map) => map.remove(segment.as_str())?,
                _ => return None,
            };
        }
        Some(value)
    }

    /// Every claim, as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        if let Some(exact) = &self.exact {
            return (**exact).clone();
        }
        prost_types::Struct::decode(self.encoded.clone())
            .map(|object| struct_to_json(&object))
            .unwrap_or_default()
    }

    /// Every claim, as a `google.protobuf.Struct`.
    pub fn to_struct(&self) -> prost_types::Struct {
        prost_types::Struct::decode(self.encoded.clone()).unwrap_or_default()
    }
}

/// The (key, encoded value) of each entry of an encoded `google.protobuf.Struct`. The
/// encoding is this module's own, so a malformed one (impossible) ends the iteration.
fn struct_entries(encoded: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut fields = message_fields(encoded);
    std::iter::from_fn(move || {
        for (tag, entry) in fields.by_ref() {
            if tag != 1 {
                continue;
            }
            let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
            for (entry_tag, field) in message_fields(entry) {
                match entry_tag {
                    1 => key = field,
                    2 => value = field,
                    _ => {}
                }
            }
            return Some((key, value));
        }
        None
    })
}

/// The length-delimited fields of an encoded message, as (tag, contents); it stops at the
/// first field of another wire type or that does not decode (the Struct encoding has none).
fn message_fields(mut buf: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if wire_type != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
        if len > buf.remaining() {
            return None;
        }
        let (field, rest) = buf.split_at(len);
        buf = rest;
        Some((tag, field))
    })
}

/// Whether `value` comes back from its `Struct` encoding as it is.
fn survives_encoding(value: &Value) -> bool {
    match value {
        Value::Number(number) => number.as_f64().and_then(number_from_f64).as_ref() == Some(number),
        Value::Array(items) => items.iter().all(survives_encoding),
        Value::Object(object) => object.values().all(survives_encoding),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

/// A double as a JSON number: an integer when it is one exactly, else a float.
fn number_from_f64(x: f64) -> Option<Number> {
    if x.fract() == 0.0 && x.abs() <= EXACT_INTEGER_LIMIT && !(x == 0.0 && x.is_sign_negative()) {
        // Exact: integral and within ±2^53.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Some(if x >= 0.0 {
            Number::from(x as u64)
        } else {
            Number::from(x as i64)
        });
    }
    Number::from_f64(x)
}

/// Converts a JSON object into a `google.protobuf.Struct`, preserving nesting.
pub fn json_object_to_struct(object: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), json_to_proto(value)))
            .collect(),
    }
}

fn json_to_proto(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_proto).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Converts a `google.protobuf.Struct` into a JSON object.
pub fn struct_to_json(object: &prost_types::Struct) -> Map<String, Value> {
    object
        .fields
        .iter()
        .map(|(key, value)| (key.clone(), proto_to_json(value)))
        .collect()
}

fn proto_to_json(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(x)) => number_from_f64(*x).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(proto_to_json).collect())
        }
        Some(Kind::StructValue(object)) => Value::Object(struct_to_json(object)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Claims {
        match value {
            Value::Object(object) => Claims::new(object),
            _ => unreachable!("the tests pass objects"),
        }
    }

    #[test]
    fn every_claim_reads_back_as_it_was_verified() {
        let original = json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": ["a", "b"],
            "exp": 1_764_593_600, "nbf": -5, "ratio": 0.25, "admin": true, "none": null,
            "realm_access": {"roles": ["reader", {"deep": [1, 2.5]}]}, "empty": {},
            "unicode": "caf\u{e9} \u{1F600}",
        });
        let kept = claims(original.clone());
        assert!(kept.exact.is_none(), "typical claims are kept encoded only");
        for (name, value) in original.as_object().into_iter().flatten() {
            assert_eq!(kept.get(name).as_ref(), Some(value), "{name}");
            assert!(kept.contains(name));
        }
        assert_eq!(Value::Object(kept.to_map()), original);
        assert_eq!(kept.get("missing"), None);
        assert!(!kept.contains("missing"));
        assert_eq!(kept.get("su"), None, "a key's prefix is not the key");
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            kept.at(&path("realm_access.roles")),
            Some(json!(["reader", {"deep": [1, 2.5]}]))
        );
        assert_eq!(kept.at(&path("realm_access.missing")), None);
        assert_eq!(kept.at(&path("sub.deeper")), None);
    }

    /// A number a double cannot hold exactly would come back as another number: a rule or
    /// a revocation by `jti` would then compare against the wrong value.
    #[test]
    fn numbers_a_double_would_change_are_kept_exactly() {
        for number in [
            json!(9_007_199_254_740_993_u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.0),
            json!(0.0),
        ] {
            let kept = claims(json!({"jti": number, "nested": [{"n": number}]}));
            assert!(kept.exact.is_some(), "{number}");
            assert_eq!(kept.get("jti"), Some(number.clone()));
            assert_eq!(kept.at(&["nested".into()]), Some(json!([{"n": number}])));
        }
        let limit =
            claims(json!({"n": 9_007_199_254_740_992_u64, "m": -9_007_199_254_740_992_i64}));
        assert!(limit.exact.is_none());
        assert_eq!(limit.get("n"), Some(json!(9_007_199_254_740_992_u64)));
        assert_eq!(limit.get("m"), Some(json!(-9_007_199_254_740_992_i64)));
        let negative_zero = claims(json!({"z": -0.0}));
        assert!(negative_zero.exact.is_none());
        assert_eq!(negative_zero.get("z"), Some(json!(-0.0)));
    }

    #[test]
    fn the_encoding_is_the_struct_answers_carry() {
        let original = json!({"sub": "alice", "n": 3, "list": [true, null]});
        let kept = claims(original.clone());
        let decoded = prost_types::Struct::decode(kept.encoded().clone()).expect("a Struct");
        assert_eq!(Value::Object(struct_to_json(&decoded)), original);
        assert_eq!(kept.to_struct(), decoded);
    }
}
