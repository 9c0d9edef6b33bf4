//! Named keys and what a terminal sends for them.
//!
//! The byte sequences are xterm's (see its ctlseqs documentation, "PC-Style Function Keys"):
//! what a program reading a terminal with `TERM=xterm-256color` expects. The arrow keys, Home
//! and End depend on the cursor-key mode the program chose (DECCKM): `ESC [ A` normally, `ESC O
//! A` in application mode, which full-screen programs such as dialog turn on.

/// A key name no terminal sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown key `{0}`; use Enter, Esc, Tab, BackTab, Backspace, Delete, Insert, Space, Up, Down, \
     Left, Right, Home, End, PageUp, PageDown, F1 to F12, or Ctrl-A to Ctrl-Z"
)]
pub struct UnknownKey(pub String);

/// The bytes of `names`, pressed one after another. `application_cursor` is the program's
/// cursor-key mode.
pub fn encode(names: &[String], application_cursor: bool) -> Result<Vec<u8>, UnknownKey> {
    let mut bytes = Vec::new();
    for name in names {
        bytes.extend(key(name, application_cursor).ok_or_else(|| UnknownKey(name.clone()))?);
    }
    Ok(bytes)
}

/// The bytes of one key, by name (case-insensitive).
fn key(name: &str, application_cursor: bool) -> Option<Vec<u8>> {
    let lower = name.to_ascii_lowercase();
    if let Some(letter) = lower
        .strip_prefix("ctrl-")
        .or_else(|| lower.strip_prefix("ctrl+"))
        .or_else(|| lower.strip_prefix("c-"))
    {
        return control(letter).map(|b| vec![b]);
    }
    let cursor = |last: u8| {
        let prefix: &[u8] = if application_cursor {
            b"\x1bO"
        } else {
            b"\x1b["
        };
        [prefix, &[last]].concat()
    };
    let fixed: &[u8] = match lower.as_str() {
        "enter" | "return" => b"\r",
        "esc" | "escape" => b"\x1b",
        "tab" => b"\t",
        "backtab" | "shift-tab" => b"\x1b[Z",
        "backspace" => b"\x7f",
        "space" => b" ",
        "delete" | "del" => b"\x1b[3~",
        "insert" => b"\x1b[2~",
        "pageup" => b"\x1b[5~",
        "pagedown" => b"\x1b[6~",
        "up" => return Some(cursor(b'A')),
        "down" => return Some(cursor(b'B')),
        "right" => return Some(cursor(b'C')),
        "left" => return Some(cursor(b'D')),
        "home" => return Some(cursor(b'H')),
        "end" => return Some(cursor(b'F')),
        other => return function_key(other),
    };
    Some(fixed.to_vec())
}

/// Ctrl with a letter, or with one of `@[\]^_`: the character's code with the top bits off.
fn control(letter: &str) -> Option<u8> {
    let [c] = letter.as_bytes() else { return None };
    match c {
        b'a'..=b'z' => Some(c - b'a' + 1),
        b'@' | b'[' | b'\\' | b']' | b'^' | b'_' => Some(c & 0x1f),
        _ => None,
    }
}

fn function_key(name: &str) -> Option<Vec<u8>> {
    let n: u8 = name.strip_prefix('f')?.parse().ok()?;
    let bytes: &[u8] = match n {
        1 => b"\x1bOP",
        2 => b"\x1bOQ",
        3 => b"\x1bOR",
        4 => b"\x1bOS",
        5 => b"\x1b[15~",
        6 => b"\x1b[17~",
        7 => b"\x1b[18~",
        8 => b"\x1b[19~",
        9 => b"\x1b[20~",
        10 => b"\x1b[21~",
        11 => b"\x1b[23~",
        12 => b"\x1b[24~",
        _ => return None,
    };
    Some(bytes.to_vec())
}

/// Text wrapped as a bracketed paste (xterm's mode 2004) when the program asked for it, so it
/// reads the text as pasted, not typed: a newline in it does not submit.
pub fn paste(text: &str, bracketed: bool) -> Vec<u8> {
    if !bracketed {
        return text.as_bytes().to_vec();
    }
    // A paste that held the end marker could break out of the paste, and removing the marker
    // once is not enough (`ESC[20` + marker + `1~` leaves a marker behind). No escape sequence
    // belongs in pasted text, so every ESC (and the 8-bit CSI) goes, as xterm filters them.
    let text: String = text
        .chars()
        .filter(|c| !matches!(c, '\x1b' | '\u{9b}'))
        .collect();
    [b"\x1b[200~".as_slice(), text.as_bytes(), b"\x1b[201~"].concat()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("Enter", false, b"\r".as_slice())]
    #[case("esc", false, b"\x1b")]
    #[case("Ctrl-C", false, b"\x03")]
    #[case("ctrl+d", false, b"\x04")]
    #[case("Up", false, b"\x1b[A")]
    #[case("Up", true, b"\x1bOA")]
    #[case("Left", false, b"\x1b[D")]
    #[case("F5", false, b"\x1b[15~")]
    #[case("Tab", false, b"\t")]
    fn keys_have_their_xterm_bytes(
        #[case] name: &str,
        #[case] application: bool,
        #[case] expected: &[u8],
    ) {
        assert_eq!(encode(&[name.to_owned()], application).unwrap(), expected);
    }

    #[rstest]
    #[case("Hyper")]
    #[case("Ctrl-1")]
    #[case("F13")]
    #[case("")]
    fn unknown_keys_are_refused(#[case] name: &str) {
        assert_eq!(
            encode(&[name.to_owned()], false),
            Err(UnknownKey(name.to_owned()))
        );
    }

    #[test]
    fn a_bracketed_paste_cannot_end_early() {
        assert_eq!(
            paste("a\x1b[201~b\n", true),
            b"\x1b[200~a[201~b\n\x1b[201~".to_vec()
        );
        // Removing the end marker once would leave one behind here.
        let nested = paste("safe\x1b[20\x1b[201~1~INJECTED\r", true);
        let inner = &nested[6..nested.len() - 6];
        assert!(
            !inner.contains(&0x1b),
            "{:?}",
            String::from_utf8_lossy(&nested)
        );
        assert!(!paste("x\u{9b}201~y", true)[6..].starts_with("x\u{9b}".as_bytes()));
        assert_eq!(paste("a\n", false), b"a\n".to_vec());
    }
}
