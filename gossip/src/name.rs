//! Node names: the key of the member table, and what logs, `meshd status` and commands print.
//!
//! A name is what a hostname may be: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 . _ -`, starting
//! with a letter or digit. Nothing else reaches a terminal or a log from a record: no control
//! characters, no escape sequences, no spaces, no name that reads as a flag (`-x`) or a path
//! (`..`). The config refuses other names with this rule's words, and a record from the wire
//! under another name is refused and counted.

/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// What a node name may be, in words (for error messages).
pub const NAME_RULE: &str =
    "1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit";

/// Whether `name` is a valid node name (see the module doc).
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_pass_and_terminal_tricks_do_not() {
        for ok in [
            "n1",
            "node-1",
            "worker_3.eu-west.example",
            "0",
            &"a".repeat(64),
        ] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(65),
            "-rf",
            ".",
            "..",
            "_x",
            "a b",
            "n\u{1b}[31m",
            "n\n",
            "n\t",
            "nöde",
            "a/b",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
