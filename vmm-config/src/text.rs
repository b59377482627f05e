//! Text from clients and guests on its way to logs and terminals: names are
//! checked against one rule, and anything else is escaped so a control
//! character can never forge a log line or drive an operator's terminal.

use alloc::string::String;
use core::fmt::Write;

/// Longest VM, image, cluster or profile name.
pub const MAX_NAME_LEN: usize = 32;

/// The naming rule for VMs, images, clusters and console profiles: 1 to
/// [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 _ . -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The rule in words, for error messages.
pub const NAME_RULE: &str = "must be 1 to 32 characters of A-Z a-z 0-9 _ . -";

/// `s` with every control character (C0, DEL, C1) and backslash escaped as
/// `\n`, `\r`, `\t`, `\\` or `\u{..}`; printable text is unchanged.
pub fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// One byte of guest console output as it may appear in the node log:
/// printable ASCII and tab as is, anything else `\xNN` (newlines are the
/// caller's business: they end a log line).
pub fn escape_byte(b: u8, out: &mut String) {
    match b {
        b'\t' | 0x20..=0x7e if b != b'\\' => out.push(b as char),
        _ => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_config_rule() {
        assert!(valid_name("web-1.a_b"));
        assert!(valid_name(&"a".repeat(32)));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name(""));
        assert!(!valid_name("web\nvm web stopped: exit-code=0"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("é"));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("web\nvm x stopped"), "web\\nvm x stopped");
        assert_eq!(escape_control("\x1b[2J\u{85}\u{7f}"), "\\u{1b}[2J\\u{85}\\u{7f}");
        assert_eq!(escape_control("a\\nb"), "a\\\\nb");
        assert_eq!(escape_control("plain text é"), "plain text é");
    }

    #[test]
    fn escaped_text_has_no_control_characters() {
        for b in 0u8..=255 {
            let mut s = String::new();
            escape_byte(b, &mut s);
            assert!(s.chars().all(|c| !c.is_control() || c == '\t'), "{b:#x} -> {s:?}");
            let e = escape_control(core::str::from_utf8(&[b]).unwrap_or("?"));
            assert!(e.chars().all(|c| !c.is_control()), "{b:#x} -> {e:?}");
        }
    }
}
