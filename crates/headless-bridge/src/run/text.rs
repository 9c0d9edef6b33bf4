//! Turning what a CLI prints into text fit for JSON: invalid UTF-8 replaced, terminal escape
//! sequences (colours, cursor movement, titles, device control strings) and control
//! characters removed, line endings dropped.

/// Cleans one raw output line.
pub fn clean_line(raw: &[u8]) -> String {
    // Valid UTF-8 is the common case, and checking it is much faster than the lossy path.
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(raw),
    };
    let text = text.trim_end_matches(['\n', '\r']);
    if text.bytes().any(is_removed_control) {
        strip_controls(text)
    } else {
        text.to_owned()
    }
}

/// The C0 control characters that carry no text: all but tab, line feed and carriage return
/// (kept, as CRLF line ends are common and a bare CR is how progress bars redraw). ESC is
/// among them; it starts the escape sequences [`strip_controls`] removes whole.
fn is_removed_control(byte: u8) -> bool {
    byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r')
}

/// Removes terminal escape sequences and control characters (see ECMA-48, §5.4 for CSI and
/// §5.6 for control strings):
/// - CSI, `ESC [` parameters and intermediates up to a final byte in `@`..`~`;
/// - the control strings OSC (`ESC ]`), DCS (`ESC P`), SOS (`ESC X`), PM (`ESC ^`) and APC
///   (`ESC _`), payload included, up to ST (`ESC \`) or BEL (which xterm takes for ST);
/// - other escapes, `ESC` with intermediates (0x20..0x2F) and one final character, such as
///   `ESC ( B`;
/// - the C0 controls but tab, line feed and carriage return: NUL, backspace, BEL...
pub fn strip_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            if !u8::try_from(c).is_ok_and(is_removed_control) {
                out.push(c);
            }
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
            Some(']' | 'P' | 'X' | '^' | '_') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            Some(' '..='/') => {
                while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                chars.next();
            }
            _ => {}
        }
    }
    out
}

/// The end of `text`: its last `max` bytes at most, starting on a character boundary.
pub fn last_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    &text[text.ceil_char_boundary(text.len() - max)..]
}

/// `text` cut to its first `max` bytes at most (on a character boundary), followed by a note
/// of how many bytes were cut.
pub fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let kept = text.floor_char_boundary(max);
    format!("{} [{} more bytes]", &text[..kept], text.len() - kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_cursor_moves_and_titles_are_removed() {
        let raw = "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[2Kdone\u{1b}]0;title\u{7} ok \u{1b}]8;;http://x\u{1b}\\link";
        assert_eq!(strip_controls(raw), "error: done ok link");
    }

    /// Regression: a DCS string (`ESC P 1;2q ESC \`) left its payload `1;2q` in the output.
    #[test]
    fn control_strings_are_removed_with_their_payload() {
        let raw = "a\u{1b}P1;2q\u{1b}\\b\u{1b}Xsos\u{1b}\\c\u{1b}^pm\u{1b}\\d\u{1b}_apc\u{7}e";
        assert_eq!(strip_controls(raw), "abcde");
        assert_eq!(clean_line(b"\x1bP1;2q\x1b\\sixel done\n"), "sixel done");
    }

    #[test]
    fn escapes_with_intermediates_are_removed_whole() {
        assert_eq!(strip_controls("\u{1b}(Bplain\u{1b}=\u{1b}#8"), "plain");
    }

    #[test]
    fn nul_backspace_and_other_c0_controls_are_dropped_but_tab_and_cr_kept() {
        assert_eq!(
            clean_line(b"a\x00b\x08c\x07d\x7fe\tf\rg\x1ah\r\n"),
            "abcd\x7fe\tf\rgh"
        );
        assert_eq!(
            clean_line(b"progress 10%\rprogress 20%"),
            "progress 10%\rprogress 20%"
        );
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
        assert_eq!(
            clean_line("naïve – ünïcode\n".as_bytes()),
            "naïve – ünïcode"
        );
    }

    #[test]
    fn long_text_is_cut_on_character_boundaries() {
        assert_eq!(last_bytes("short", 10), "short");
        assert_eq!(last_bytes("abcdef", 3), "def");
        assert_eq!(last_bytes("aé", 1), "");
        assert_eq!(shortened("short", 10), "short");
        assert_eq!(shortened("abcdef", 3), "abc [3 more bytes]");
        assert_eq!(shortened("éa", 1), " [3 more bytes]");
    }
}
