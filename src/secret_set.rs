//! A named set of secret values: what a source loads, what an answer
//! carries, what the client renders, caches and hands to a program.
//!
//! Why a type and not a `Vec<(String, SecretValue)>`: the set has rules
//! that every user needs kept the same way: order is the order the source
//! or the server gave (files, env files and JSON come out the same on
//! every run), a name is looked up by its exact spelling, a consumer's part
//! of a set is taken all or nothing, and the set prints only its names.
//! It has one JSON form, written by [`SecretSet::to_json`] (the client's
//! `env --format json` and the boot cache).

use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::secret::{SecretBytes, SecretValue};

/// Secret values by name, in the order they were given.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretSet(Vec<(String, SecretValue)>);

impl SecretSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for `n` values.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Adds `value` as `name`, after the values already in the set.
    pub fn push(&mut self, name: impl Into<String>, value: SecretValue) {
        self.0.push((name.into(), value));
    }

    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The values called `names`, in that order; an empty `names` is the
    /// whole set. `Err` holds the first name the set does not have: a part
    /// is taken whole or not at all.
    pub fn select(&self, names: &[String]) -> Result<SecretSet, String> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        names
            .iter()
            .map(|name| {
                self.get(name)
                    .map(|v| (name.clone(), v.clone()))
                    .ok_or_else(|| name.clone())
            })
            .collect()
    }

    /// Keeps the values for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &SecretValue) -> bool) {
        self.0.retain(|(n, v)| keep(n, v));
    }

    /// Every value, so the server can move them into one locked region.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut SecretValue> {
        self.0.iter_mut().map(|(_, v)| v)
    }

    /// One JSON object, name -> value, in the set's order, followed by a
    /// newline. Built in zeroizing memory sized up front (JSON escapes a
    /// byte into at most 6), so the buffer never grows and leaves a copy.
    pub fn to_json(&self) -> SecretBytes {
        let size: usize = 4 + self
            .0
            .iter()
            .map(|(n, v)| 8 + 6 * (n.len() + v.len()))
            .sum::<usize>();
        let mut out = SecretBytes::new(Vec::with_capacity(size));
        out.push(b'{');
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
            out.push(b':');
            serde_json::to_writer(&mut *out, value.expose()).expect("writing to a Vec cannot fail");
        }
        out.extend_from_slice(b"}\n");
        out
    }
}

/// Read-only access as a slice of `(name, value)` pairs: iteration,
/// `len`, `is_empty`, indexing.
impl Deref for SecretSet {
    type Target = [(String, SecretValue)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromIterator<(String, SecretValue)> for SecretSet {
    fn from_iter<I: IntoIterator<Item = (String, SecretValue)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl From<Vec<(String, SecretValue)>> for SecretSet {
    fn from(pairs: Vec<(String, SecretValue)>) -> Self {
        Self(pairs)
    }
}

impl IntoIterator for SecretSet {
    type Item = (String, SecretValue);
    type IntoIter = std::vec::IntoIter<(String, SecretValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SecretSet {
    type Item = &'a (String, SecretValue);
    type IntoIter = std::slice::Iter<'a, (String, SecretValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Names only: a set in a log line or a panic shows what it holds, never
/// a value.
impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(n, v)| (n, v)))
            .finish()
    }
}

/// The JSON object [`SecretSet::to_json`] writes, in its order; also a
/// list of `[name, value]` pairs (the boot cache's form before it used the
/// one encoder, so copies written by an older client still stand in).
impl<'de> Deserialize<'de> for SecretSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = SecretSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of secret values by name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSet, A::Error> {
                let mut set = SecretSet::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((name, value)) = map.next_entry::<String, SecretValue>()? {
                    if set.get(&name).is_some() {
                        return Err(de::Error::custom(format_args!(
                            "the name {name:?} appears twice"
                        )));
                    }
                    set.push(name, value);
                }
                Ok(set)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SecretSet, A::Error> {
                let mut set = SecretSet::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((name, value)) = seq.next_element::<(String, SecretValue)>()? {
                    set.push(name, value);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_any(SetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> SecretSet {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), SecretValue::from(*v)))
            .collect()
    }

    #[test]
    fn debug_shows_names_never_values() {
        let s = set(&[("DB", "hunter2"), ("API", "s3cret")]);
        let shown = format!("{s:?}");
        assert_eq!(shown, r#"{"DB": <redacted>, "API": <redacted>}"#);
    }

    #[test]
    fn json_keeps_order_and_reads_back_in_both_forms() {
        let s = set(&[("z", "1\"\n"), ("a", "ü"), ("m", "")]);
        let json = s.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            "{\"z\":\"1\\\"\\n\",\"a\":\"ü\",\"m\":\"\"}\n"
        );
        let back: SecretSet = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.names().collect::<Vec<_>>(), ["z", "a", "m"]);
        let pairs: SecretSet =
            serde_json::from_str(r#"[["z","1\"\n"],["a","ü"],["m",""]]"#).unwrap();
        assert_eq!(pairs, s);
        let twice = serde_json::from_str::<SecretSet>(r#"{"a":"1","a":"2"}"#).unwrap_err();
        assert!(twice.to_string().contains("\"a\" appears twice"), "{twice}");
    }

    #[test]
    fn select_is_whole_or_names_the_missing_one() {
        let s = set(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let part = s.select(&["c".into(), "a".into()]).unwrap();
        assert_eq!(part, set(&[("c", "3"), ("a", "1")]));
        assert_eq!(s.select(&[]).unwrap(), s);
        assert_eq!(s.select(&["a".into(), "x".into()]).unwrap_err(), "x");
    }
}
