//! Newtype ids. Both end up inside NATS subjects, so both are restricted to one subject token:
//! ASCII letters, digits, `-` and `_`, at most [`MAX_ID_LEN`] bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::VgaError;

/// Longest id accepted; keeps subjects short and bounds what a client can make us store.
pub const MAX_ID_LEN: usize = 64;

fn check_token(kind: &'static str, s: &str) -> Result<(), VgaError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(VgaError::InvalidId {
            kind,
            value: s.chars().take(80).collect(),
        })
    }
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks that `s` is one subject token of at most [`MAX_ID_LEN`] bytes.
            pub fn parse(s: &str) -> Result<Self, VgaError> {
                check_token($kind, s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = VgaError;
            fn from_str(s: &str) -> Result<Self, VgaError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = VgaError;
            fn try_from(s: String) -> Result<Self, VgaError> {
                check_token($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

token_id!(
    /// A task's id: chosen by the submitter (so it can subscribe to the events first) or made
    /// by the master as a UUID.
    TaskId,
    "task id"
);
token_id!(
    /// A worker's id, stable for the life of one worker process.
    WorkerId,
    "worker id"
);

token_id!(
    /// A build's id (`vgas build` makes one per build): its updates subject and the subject
    /// its submitter offers the build's sources on.
    BuildId,
    "build id"
);

impl TaskId {
    /// A fresh random id (UUID v4, simple form).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl BuildId {
    /// A fresh random id (UUID v4, simple form).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl WorkerId {
    /// `<host>-<8 hex>`: readable in `vgas status`, unique across restarts.
    pub fn generate(host: &str) -> Self {
        let host: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let host = if host.is_empty() {
            "worker".into()
        } else {
            host
        };
        Self(format!("{host}-{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(TaskId::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn ids_are_single_subject_tokens() {
        check("abc-123_X", true);
        check("", false);
        check("a.b", false);
        check("a*", false);
        check("a>", false);
        check("a b", false);
        check(&"x".repeat(MAX_ID_LEN), true);
        check(&"x".repeat(MAX_ID_LEN + 1), false);
    }

    #[test]
    fn serde_rejects_bad_ids() {
        assert!(serde_json::from_str::<TaskId>("\"a.b\"").is_err());
        let id: TaskId = serde_json::from_str("\"ok-1\"").unwrap();
        assert_eq!(id.as_str(), "ok-1");
        assert!(WorkerId::parse(WorkerId::generate("my.host name").as_str()).is_ok());
    }
}
