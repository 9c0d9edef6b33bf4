//! Turning what a CLI prints into text fit for JSON: invalid UTF-8 replaced, terminal escape
//! sequences (colours, cursor movement, titles) removed, line endings dropped.

/// Cleans one raw output line.
pub fn clean_line(raw: &[u8]) -> String {
    // Valid UTF-8 is the common case, and checking it is much faster than the lossy path.
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(raw),
    };
    let text = text.trim_end_matches(['\n', '\r']);
    if text.contains('\u{1b}') {
        strip_ansi(text)
    } else {
        text.to_owned()
    }
}

/// Removes ANSI escape sequences: CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL` or
/// `ESC ] ... ESC \`), and two-character escapes. See ECMA-48 §5.4 for the CSI grammar.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates run until a final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_cursor_moves_and_titles_are_removed() {
        let raw = "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[2Kdone\u{1b}]0;title\u{7} ok \u{1b}]8;;http://x\u{1b}\\link";
        assert_eq!(strip_ansi(raw), "error: done ok link");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_line_ends_dropped() {
        assert_eq!(
            clean_line(b"caf\xe9 \x1b[32mok\x1b[0m\r\n"),
            "caf\u{fffd} ok"
        );
    }

    #[test]
    fn plain_text_is_untouched() {
        assert_eq!(clean_line(b"a [b] c\n"), "a [b] c");
    }
}
