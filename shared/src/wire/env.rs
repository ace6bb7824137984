//! A task's environment values, some of them secret. On the wire a value is a string, or
//! `{"value":"...","secret":true}` for one that must never be stored or logged: the master
//! keeps it in the tasks bucket only sealed under its own key ([`EnvValue::Sealed`], never
//! accepted from a submitter), a worker gets it in the assignment, and no `Debug` here or in
//! the parsed task ([`Env`]) prints a value.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

/// One environment value as submitted and recorded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// `"value"`.
    Plain(String),
    /// `{"value":"...","secret":true}` (with `"secret":false`, or without it, a plain value).
    Marked(MarkedValue),
    /// A secret value as the master stores it: sealed under its key, bound to the task.
    Sealed(SealedValue),
}

/// A value in object form.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkedValue {
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

/// A secret value sealed by the master: base64 of nonce and ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedValue {
    pub sealed: String,
}

impl EnvValue {
    /// A secret value.
    pub fn secret(value: impl Into<String>) -> Self {
        EnvValue::Marked(MarkedValue {
            value: value.into(),
            secret: true,
        })
    }

    /// Whether the value is secret (sealed or not).
    pub fn is_secret(&self) -> bool {
        match self {
            EnvValue::Plain(_) => false,
            EnvValue::Marked(m) => m.secret,
            EnvValue::Sealed(_) => true,
        }
    }

    /// The value in clear; `None` while it is sealed.
    pub fn clear(&self) -> Option<&str> {
        match self {
            EnvValue::Plain(v) | EnvValue::Marked(MarkedValue { value: v, .. }) => Some(v),
            EnvValue::Sealed(_) => None,
        }
    }
}

impl From<String> for EnvValue {
    fn from(v: String) -> Self {
        EnvValue::Plain(v)
    }
}

impl From<&str> for EnvValue {
    fn from(v: &str) -> Self {
        EnvValue::Plain(v.to_owned())
    }
}

impl fmt::Debug for MarkedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        EnvValue::Marked(self.clone()).fmt(f)
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvValue::Plain(v) => v.fmt(f),
            EnvValue::Marked(m) if !m.secret => m.value.fmt(f),
            _ => f.write_str("<secret>"),
        }
    }
}

/// A parsed task's environment: names checked (non-empty, no `=` or NUL), values in clear and
/// without NUL. Its `Debug` prints the names only, so no log line can carry a secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        Env(vars)
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl Deref for Env {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_strings_or_marked_objects() {
        let env: BTreeMap<String, EnvValue> = serde_json::from_str(
            r#"{"A":"1","B":{"value":"s3cr3t","secret":true},"C":{"value":"x"}}"#,
        )
        .unwrap();
        assert_eq!(env["A"], EnvValue::Plain("1".into()));
        assert!(env["B"].is_secret());
        assert_eq!(env["B"].clear(), Some("s3cr3t"));
        assert!(!env["C"].is_secret());
        assert!(!format!("{env:?}").contains("s3cr3t"));
        let back = serde_json::to_string(&env).unwrap();
        assert_eq!(
            back,
            r#"{"A":"1","B":{"value":"s3cr3t","secret":true},"C":{"value":"x","secret":false}}"#
        );
    }

    #[test]
    fn unknown_fields_and_other_shapes_are_refused() {
        for bad in [
            r#"{"A":{"value":"1","secret":true,"extra":1}}"#,
            r#"{"A":1}"#,
            r#"{"A":{"secret":true}}"#,
        ] {
            assert!(
                serde_json::from_str::<BTreeMap<String, EnvValue>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_parsed_environment_prints_names_only() {
        let env = Env::new([("TOKEN".to_owned(), "s3cr3t".to_owned())].into());
        assert_eq!(format!("{env:?}"), r#"{"TOKEN"}"#);
    }
}
