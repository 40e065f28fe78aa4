//! The `CNI_*` environment a runtime sets for each invocation, validated once.
//!
//! Names follow the rules the reference libraries enforce: container IDs and network names are
//! `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; interface names are 1–15 bytes without `/`, `:` or whitespace.

use crate::error::{Error, Result};

/// The verb the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// Linux `IFNAMSIZ` less the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// The invocation's environment.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
}

impl Env {
    /// Reads the environment through `var` (so tests need not touch the process environment).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = match nonempty("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    why: format!(
                        "unknown command {other:?}; expected ADD, DEL, CHECK, VERSION, GC or STATUS"
                    ),
                })
            }
            None => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    why: "not set".into(),
                })
            }
        };
        Ok(Env {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
        })
    }

    /// `CNI_CONTAINERID`, required and validated.
    pub fn container_id(&self) -> Result<&str> {
        let id = self.container_id.as_deref().ok_or(Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            why: "not set".into(),
        })?;
        validate_name(id).map_err(|why| Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            why,
        })?;
        Ok(id)
    }

    /// `CNI_IFNAME`, required and validated.
    pub fn ifname(&self) -> Result<&str> {
        let name = self.ifname.as_deref().ok_or(Error::InvalidEnv {
            var: "CNI_IFNAME",
            why: "not set".into(),
        })?;
        validate_ifname(name).map_err(|why| Error::InvalidEnv {
            var: "CNI_IFNAME",
            why,
        })?;
        Ok(name)
    }

    /// `CNI_NETNS`, required (ADD, CHECK).
    pub fn netns(&self) -> Result<&str> {
        self.netns_optional()?.ok_or(Error::InvalidEnv {
            var: "CNI_NETNS",
            why: "not set".into(),
        })
    }

    /// `CNI_NETNS` where the spec lets it be absent or empty (DEL).
    pub fn netns_optional(&self) -> Result<Option<&str>> {
        match self.netns.as_deref() {
            None => Ok(None),
            Some(p) if p.starts_with('/') && !p.contains('\0') => Ok(Some(p)),
            Some(p) => Err(Error::InvalidEnv {
                var: "CNI_NETNS",
                why: format!("{p:?} is not an absolute path"),
            }),
        }
    }
}

/// Container IDs and network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(s: &str) -> std::result::Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{s:?} must start with a letter or digit"))
        }
        Some(_) => {}
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} may contain only letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Interface names the kernel accepts.
pub fn validate_ifname(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_IFNAME {
        return Err(format!("{s:?} is longer than {MAX_IFNAME} bytes"));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{s:?} contains '/', ':', whitespace or a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn commands_parse() {
        for (s, c) in [
            ("ADD", Command::Add),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
        ] {
            assert_eq!(env(&[("CNI_COMMAND", s)]).unwrap().command, c);
        }
        assert_eq!(env(&[("CNI_COMMAND", "add")]).unwrap_err().code(), 4);
        assert_eq!(env(&[]).unwrap_err().code(), 4);
    }

    #[test]
    fn required_variables_are_checked() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!(e.container_id().unwrap_err().code(), 4);
        assert_eq!(e.ifname().unwrap_err().code(), 4);
        assert_eq!(e.netns().unwrap_err().code(), 4);
        assert_eq!(e.netns_optional().unwrap(), None);
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "relative")]).unwrap();
        assert!(e.netns().is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("abc-1.2_3").is_ok());
        assert!(validate_name("-abc").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a-very-long-name0").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("et h0").is_err());
        assert!(validate_ifname("eth:0").is_err());
    }
}
