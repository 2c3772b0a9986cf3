//! Identifier newtypes. An id is opaque text chosen by the component that creates the object
//! (Oakestra uses 24-hex-digit MongoDB object ids); wrapping it keeps a cluster id from being
//! passed where a service id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may contain only letters, digits, '-', '_' and '.'")]
    BadCharacter,
}

/// Longest id accepted from outside.
pub const MAX_ID_LEN: usize = 128;

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { max: MAX_ID_LEN });
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the text and wraps it.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// An application (a named group of services owned by one user).
    ApplicationId
);
string_id!(
    /// A service (Oakestra: "microservice" / "job").
    ServiceId
);
string_id!(
    /// A cluster registered at the root.
    ClusterId
);
string_id!(
    /// A worker node registered at a cluster.
    NodeId
);
string_id!(
    /// A user account at the root.
    UserId
);
string_id!(
    /// An organisation at the root (a group of users with roles).
    OrganizationId
);

/// The number of one instance of a service. Oakestra numbers instances from 0 upwards
/// (`next_instance_progressive_number`), and never reuses a number within a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceNumber(pub u32);

impl fmt::Display for InstanceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_object_ids_and_names() {
        assert!(ServiceId::parse("627527c1a4a5edb43d085f37").is_ok());
        assert!(NodeId::parse("worker-1.site_a").is_ok());
    }

    #[test]
    fn ids_reject_bad_text() {
        assert_eq!(ClusterId::parse(""), Err(IdError::Empty));
        assert_eq!(ClusterId::parse("a/b"), Err(IdError::BadCharacter));
        assert_eq!(
            ClusterId::parse("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { max: MAX_ID_LEN })
        );
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let ok: ServiceId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok.as_str(), "abc");
        assert!(serde_json::from_str::<ServiceId>("\"a b\"").is_err());
    }
}
