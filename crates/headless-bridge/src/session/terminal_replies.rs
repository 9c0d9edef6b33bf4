//! Answers to the questions a program asks its terminal.
//!
//! Full-screen programs ask the terminal where the cursor is (DSR 6, `ESC [ 6 n`) and what it
//! is (DA, `ESC [ c`), and some wait for the answer before they draw anything: crossterm, which
//! the Codex TUI uses, gives up after two seconds. The emulator does not answer these itself,
//! so its callbacks collect the answers xterm would give, and the session writes them back.

/// Collects the replies owed to the program, in order.
#[derive(Debug, Default)]
pub struct Replies {
    pub pending: Vec<u8>,
}

impl vt100::Callbacks for Replies {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied().unwrap_or(0);
        match (i1, c, first) {
            // Device status: "OK".
            (None, 'n', 5) => self.pending.extend_from_slice(b"\x1b[0n"),
            (None, 'n', 6) => {
                let (row, col) = screen.cursor_position();
                let reply = format!("\x1b[{};{}R", row + 1, col + 1);
                self.pending.extend_from_slice(reply.as_bytes());
            }
            // Primary device attributes: a VT100 with advanced video, as xterm's minimum.
            (None, 'c', 0) => self.pending.extend_from_slice(b"\x1b[?1;2c"),
            // Secondary device attributes: terminal type 0, version 0.
            (Some(b'>'), 'c', 0) => self.pending.extend_from_slice(b"\x1b[>0;0;0c"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;

    #[test]
    fn cursor_and_attribute_queries_are_answered() {
        let size = |n| NonZeroU16::new(n).expect("not zero");
        let mut parser =
            vt100::Parser::new_with_callbacks(size(5), size(20), 0, Replies::default());
        parser.process(b"ab\r\ncd\x1b[6n\x1b[c");
        assert_eq!(parser.callbacks().pending, b"\x1b[2;3R\x1b[?1;2c");
    }
}
