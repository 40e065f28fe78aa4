//! Every way the plugin can fail, and the one place where a failure becomes the CNI error JSON.
//!
//! The spec (SPEC.md, "Error" and "Well-known Error Codes") reserves codes 0–99; the codes
//! 100 and up used here are ours and documented on their variants.

use std::io;

use serde_json::json;

use crate::version::Version;

/// A failure of one plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration asks for a `cniVersion` we do not speak (code 1).
    #[error("incompatible CNI version {asked:?}")]
    IncompatibleVersion { asked: String, why: String },
    /// A known field has a value we deliberately do not implement (code 2).
    #[error("unsupported field {field}: {value}")]
    UnsupportedField {
        field: String,
        value: String,
        why: String,
    },
    /// The container or attachment named by the runtime does not exist (code 3).
    #[error("unknown container: {0}")]
    UnknownContainer(String),
    /// A `CNI_*` environment variable is missing or malformed (code 4).
    #[error("invalid environment variable {var}: {why}")]
    InvalidEnv { var: &'static str, why: String },
    /// Reading or writing a file failed (code 5).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A kernel request over rtnetlink failed (code 5: an I/O failure with the kernel).
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Input could not be decoded as the JSON we expect (code 6).
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The configuration decodes but makes no sense (code 7).
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// meshd is not ready yet; the runtime should retry later (code 11).
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot serve ADD now (code 50).
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// STATUS: the plugin cannot serve ADD, and pods already attached may have limited
    /// connectivity (code 51): meshd stopped answering, or its bridge is gone.
    #[error("plugin not available, attached pods may have limited connectivity: {0}")]
    Degraded(String),
    /// ADD for an attachment that already exists (code 100): DEL it first.
    #[error("attachment already exists: {0}")]
    AlreadyAttached(String),
    /// CHECK found the attachment differs from what ADD made (code 101); one entry per problem.
    #[error("check failed: {}", .0.join("; "))]
    CheckFailed(Vec<String>),
    /// Every address of the node subnet is in use (code 102).
    #[error("no free address in {0}")]
    PoolExhausted(String),
}

impl Error {
    /// The CNI error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => 1,
            Error::UnsupportedField { .. } => 2,
            Error::UnknownContainer(_) => 3,
            Error::InvalidEnv { .. } => 4,
            Error::Io { .. } | Error::Netlink { .. } => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig(_) => 7,
            Error::TryAgainLater(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::Degraded(_) => 51,
            Error::AlreadyAttached(_) => 100,
            Error::CheckFailed(_) => 101,
            Error::PoolExhausted(_) => 102,
        }
    }

    /// The error object the spec asks for, in the caller's `cniVersion` when we know it.
    pub fn to_json(&self, version: Option<Version>) -> serde_json::Value {
        let version = version.unwrap_or(Version::LATEST);
        json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }

    /// Longer text for `details`: what the operator should do about it.
    fn details(&self) -> String {
        match self {
            Error::IncompatibleVersion { why, .. } => why.clone(),
            Error::UnsupportedField { why, .. } => why.clone(),
            Error::UnknownContainer(_) => {
                "the runtime asked about an attachment this plugin never made".into()
            }
            Error::InvalidEnv { .. } => {
                "the runtime must set CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME as \
                 the spec requires for this verb"
                    .into()
            }
            Error::Io { source, .. } => format!("os error: {source}"),
            Error::Netlink { source, .. } => format!("kernel said: {source}"),
            Error::Decode { source, .. } => {
                format!("line {} column {}", source.line(), source.column())
            }
            Error::InvalidConfig(_) => {
                "fix the network configuration or meshd's runtime file and retry".into()
            }
            Error::TryAgainLater(_) | Error::NotAvailable(_) | Error::Degraded(_) => {
                "start meshd on this node and wait until it has joined the mesh and \
                 written its subnet"
                    .into()
            }
            Error::AlreadyAttached(_) => "call DEL for this container and interface first".into(),
            Error::CheckFailed(problems) => problems.join("\n"),
            Error::PoolExhausted(_) => {
                "delete unused pods, or run GC to release leaked addresses".into()
            }
        }
    }

    /// Shorthand for an [`Error::Io`] about a path.
    pub fn io(what: &str, path: &std::path::Path, source: io::Error) -> Self {
        Error::Io {
            what: format!("{what} {}", path.display()),
            source,
        }
    }

    /// A kernel object that should exist after we made it, but does not.
    pub fn vanished(what: String) -> Self {
        Error::Io {
            what,
            source: io::Error::from(io::ErrorKind::NotFound),
        }
    }

    /// Shorthand for an [`Error::Netlink`].
    pub fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for the plugin.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        let e = Error::InvalidEnv {
            var: "CNI_IFNAME",
            why: "missing".into(),
        };
        assert_eq!(e.code(), 4);
        let j = e.to_json(Some(Version::V0_4_0));
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(j["code"], 4);
        assert!(j["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        assert_eq!(Error::TryAgainLater("x".into()).code(), 11);
        assert_eq!(Error::NotAvailable("x".into()).code(), 50);
        assert_eq!(Error::Degraded("x".into()).code(), 51);
    }
}
