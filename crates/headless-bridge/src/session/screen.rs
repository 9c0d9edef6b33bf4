//! What the API shows of a session's terminal: the rendered screen as text lines, and on
//! request its cells with their attributes, grouped in runs of the same look.

use serde::Serialize;
use serde_json::{Value, json};

/// The screen as text, with the cursor and the modes a client needs to drive the program.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub rows: u16,
    pub cols: u16,
    /// Each row's text, trailing blanks removed.
    pub lines: Vec<String>,
    pub cursor: Cursor,
    /// The program uses the alternate screen (a full-screen program).
    pub alternate_screen: bool,
    /// The program asked for bracketed paste.
    pub bracketed_paste: bool,
    /// The program chose application cursor keys (DECCKM): a terminal typing for it sends
    /// `ESC O A` for Up rather than `ESC [ A`.
    pub application_cursor: bool,
    /// Rows of runs of cells with one look each, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells: Option<Vec<Vec<Value>>>,
}

/// Where the cursor is (0-based) and whether the program shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cursor {
    pub row: u16,
    pub col: u16,
    pub visible: bool,
}

/// Takes a snapshot of `screen`, with cells when `with_cells`; `redact` masks secrets.
pub fn snapshot(
    screen: &vt100::Screen,
    with_cells: bool,
    redact: impl Fn(&str) -> String,
) -> Snapshot {
    let (rows, cols) = screen.size();
    let (rows, cols) = (rows.get(), cols.get());
    let lines = screen
        .rows(0, cols)
        .map(|line| redact(line.trim_end()))
        .collect();
    let (row, col) = screen.cursor_position();
    Snapshot {
        rows,
        cols,
        lines,
        cursor: Cursor {
            row,
            col,
            visible: !screen.hide_cursor(),
        },
        alternate_screen: screen.alternate_screen(),
        bracketed_paste: screen.bracketed_paste(),
        application_cursor: screen.application_cursor(),
        cells: with_cells.then(|| cell_runs(screen, rows, cols, &redact)),
    }
}

/// The screen's text joined with newlines, and the text of the cursor's row: what expect
/// rules and the ready pattern look at.
pub fn texts(screen: &vt100::Screen) -> (String, String) {
    let (_, cols) = screen.size();
    let lines: Vec<String> = screen
        .rows(0, cols.get())
        .map(|l| l.trim_end().to_owned())
        .collect();
    let (row, _) = screen.cursor_position();
    let cursor_line = lines.get(usize::from(row)).cloned().unwrap_or_default();
    (lines.join("\n"), cursor_line)
}

/// The look of one cell, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    fg: Value,
    bg: Value,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    inverse: bool,
}

impl Look {
    fn of(cell: &vt100::Cell) -> Self {
        Self {
            fg: color(cell.fgcolor()),
            bg: color(cell.bgcolor()),
            bold: cell.bold(),
            dim: cell.dim(),
            italic: cell.italic(),
            underline: cell.underline(),
            inverse: cell.inverse(),
        }
    }

    fn run(&self, col: u16, text: &str) -> Value {
        let mut run = json!({ "col": col, "text": text, "fg": self.fg, "bg": self.bg });
        for (name, on) in [
            ("bold", self.bold),
            ("dim", self.dim),
            ("italic", self.italic),
            ("underline", self.underline),
            ("inverse", self.inverse),
        ] {
            if on {
                run[name] = Value::Bool(true);
            }
        }
        run
    }
}

/// `"default"`, an index 0-255, or `"#rrggbb"`.
fn color(color: vt100::Color) -> Value {
    match color {
        vt100::Color::Default => json!("default"),
        vt100::Color::Idx(i) => json!(i),
        vt100::Color::Rgb(r, g, b) => json!(format!("#{r:02x}{g:02x}{b:02x}")),
    }
}

fn cell_runs(
    screen: &vt100::Screen,
    rows: u16,
    cols: u16,
    redact: &impl Fn(&str) -> String,
) -> Vec<Vec<Value>> {
    (0..rows)
        .map(|row| {
            let mut runs = Vec::new();
            let mut current: Option<(u16, Look, String)> = None;
            for col in 0..cols {
                let Some(cell) = screen.cell(row, col) else {
                    continue;
                };
                if cell.is_wide_continuation() {
                    continue;
                }
                let look = Look::of(cell);
                let text = if cell.has_contents() {
                    cell.contents()
                } else {
                    " "
                };
                match &mut current {
                    Some((_, same, buffer)) if *same == look => buffer.push_str(text),
                    _ => {
                        if let Some((start, look, buffer)) = current.take() {
                            runs.push(look.run(start, &redact(&buffer)));
                        }
                        current = Some((col, look, text.to_owned()));
                    }
                }
            }
            if let Some((start, look, buffer)) = current {
                runs.push(look.run(start, &redact(&buffer)));
            }
            runs
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;

    fn parser(bytes: &[u8]) -> vt100::Parser {
        let size = |n| NonZeroU16::new(n).expect("not zero");
        let mut parser = vt100::Parser::new(size(4), size(20), 0);
        parser.process(bytes);
        parser
    }

    #[test]
    fn lines_cursor_and_runs_follow_the_escape_codes() {
        let parser = parser(b"plain \x1b[1;31mred\x1b[0m\r\nnext");
        let shot = snapshot(parser.screen(), true, str::to_owned);
        assert_eq!(shot.lines, ["plain red", "next", "", ""]);
        assert_eq!((shot.cursor.row, shot.cursor.col), (1, 4));
        let runs = shot.cells.expect("cells were asked for");
        assert_eq!(runs[0][0]["text"], "plain ");
        assert_eq!(runs[0][1]["text"], "red");
        assert_eq!(runs[0][1]["fg"], 1);
        assert_eq!(runs[0][1]["bold"], true);
    }

    #[test]
    fn the_cursor_key_mode_is_the_programs() {
        let normal = snapshot(parser(b"").screen(), false, str::to_owned);
        assert!(!normal.application_cursor);
        let application = snapshot(parser(b"\x1b[?1h").screen(), false, str::to_owned);
        assert!(application.application_cursor);
    }

    #[test]
    fn the_cursor_line_is_the_cursors_row() {
        let parser = parser(b"first\r\nName? ");
        let (screen, cursor_line) = texts(parser.screen());
        assert_eq!(cursor_line, "Name?");
        assert!(screen.starts_with("first\nName?"));
    }
}
