// The runs page's terminal: draws a session's screen as the bridge's emulator sends it
// (`cells`: per row, runs of text with one look) and encodes what a person types as the bytes
// an xterm would send. No emulation happens here; the bridge's emulator is the only one.
// Screen text is untrusted (a program printed it): it reaches the page through textContent
// only, and colours only through class names or the CSSOM, never through markup.

const MIN_ROWS = 2;
const MIN_COLS = 10;
const MAX_ROWS = 500;
const MAX_COLS = 1000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// xterm's 256 colours beyond the 16 base ones: a 6×6×6 cube, then 24 greys.
function colour256(index) {
  if (index >= 232) {
    const level = 8 + 10 * (index - 232);
    return `rgb(${level}, ${level}, ${level})`;
  }
  const n = index - 16;
  const level = (v) => (v === 0 ? 0 : 55 + 40 * v);
  return `rgb(${level(Math.floor(n / 36))}, ${level(Math.floor(n / 6) % 6)}, ${level(n % 6)})`;
}

// Gives `node` the colour `value` (`"default"`, 0-255 or `"#rrggbb"`) as text or background.
function paint(node, value, background) {
  const prefix = background ? 'bg' : 'fg';
  if (value === 'default' || value === undefined || value === null) return;
  if (value === 'inverse-default') {
    node.classList.add(background ? 'bg-fg' : 'fg-bg');
  } else if (Number.isInteger(value) && value >= 0 && value < 16) {
    node.classList.add(`${prefix}-${value}`);
  } else if (Number.isInteger(value) && value < 256) {
    node.style.setProperty(background ? 'background-color' : 'color', colour256(value));
  } else if (typeof value === 'string' && /^#[0-9a-f]{6}$/i.test(value)) {
    node.style.setProperty(background ? 'background-color' : 'color', value);
  }
}

function runSpan(run, text, cursor) {
  const span = el('span', cursor ? 'cursor' : null, text);
  let { fg, bg } = run;
  if (run.inverse) {
    [fg, bg] = [bg === 'default' ? 'inverse-default' : bg, fg === 'default' ? 'inverse-default' : fg];
  }
  paint(span, fg, false);
  paint(span, bg, true);
  if (run.bold) span.classList.add('b');
  if (run.dim) span.classList.add('d');
  if (run.italic) span.classList.add('i');
  if (run.underline) span.classList.add('u');
  return span;
}

// Columns a character takes: two for East Asian wide and emoji ranges, as the emulator
// counts them; approximate, and only used to place the cursor.
function charWidth(ch) {
  const c = ch.codePointAt(0);
  const wide = (c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) || (c >= 0xac00 && c <= 0xd7a3)
    || (c >= 0xf900 && c <= 0xfaff) || (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60)
    || (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1faff) || (c >= 0x20000 && c <= 0x3fffd);
  return wide ? 2 : 1;
}

// One row: its runs, with the run under the cursor split around it.
function drawRow(runs, cursorCol) {
  const row = el('div', 'row');
  let placed = cursorCol === null;
  for (const run of runs) {
    const chars = [...run.text];
    if (!placed && cursorCol >= run.col) {
      let col = run.col;
      const at = chars.findIndex((ch) => {
        const hit = col >= cursorCol;
        col += charWidth(ch);
        return hit || col > cursorCol;
      });
      if (at >= 0) {
        if (at > 0) row.append(runSpan(run, chars.slice(0, at).join(''), false));
        row.append(runSpan(run, chars[at], true));
        if (at + 1 < chars.length) row.append(runSpan(run, chars.slice(at + 1).join(''), false));
        placed = true;
        continue;
      }
    }
    row.append(runSpan(run, run.text, false));
  }
  if (!placed) row.append(el('span', 'cursor', ' '));
  return row;
}

// Draws `screen` into `grid`, one element per row; `drawn` remembers what each row shows, so
// a screen event redraws only the rows that changed.
export function drawCells(grid, screen, drawn) {
  grid.dataset.rows = String(screen.rows);
  grid.dataset.cols = String(screen.cols);
  const cursor = screen.cursor || {};
  while (grid.childElementCount > screen.cells.length) grid.lastChild.remove();
  screen.cells.forEach((runs, index) => {
    const cursorCol = cursor.visible && cursor.row === index ? cursor.col : null;
    const key = `${cursorCol}|${JSON.stringify(runs)}`;
    const old = grid.children[index];
    if (old && drawn[index] === key) return;
    drawn[index] = key;
    const row = drawRow(runs, cursorCol);
    if (old) old.replaceWith(row);
    else grid.append(row);
  });
  drawn.length = screen.cells.length;
}

// The rows and columns that fill `width` × `height` pixels, from `measure`, an element
// holding ten characters in the terminal's font; null while the area has no size.
export function measureFit(measure, width, height) {
  const cell = measure.getBoundingClientRect();
  const cellWidth = cell.width / 10;
  if (!cellWidth || !cell.height || !width || !height) return null;
  const clamp = (n, lo, hi) => Math.max(lo, Math.min(hi, n));
  return {
    rows: clamp(Math.floor(height / cell.height), MIN_ROWS, MAX_ROWS),
    cols: clamp(Math.floor(width / cellWidth), MIN_COLS, MAX_COLS),
  };
}

const FUNCTION_KEYS = {
  F1: '\x1bOP', F2: '\x1bOQ', F3: '\x1bOR', F4: '\x1bOS', F5: '\x1b[15~', F6: '\x1b[17~',
  F7: '\x1b[18~', F8: '\x1b[19~', F9: '\x1b[20~', F10: '\x1b[21~', F11: '\x1b[23~', F12: '\x1b[24~',
};

// What an xterm sends for a key press (its ctlseqs, "PC-Style Function Keys"), or null for
// one the browser should keep: Ctrl-Shift-letter (copy, paste...) and Ctrl-V (paste).
// `applicationCursor` is the cursor-key mode the program chose (DECCKM).
export function keyBytes(event, applicationCursor) {
  const { key } = event;
  if (event.isComposing || event.metaKey) return null;
  const cursor = applicationCursor ? '\x1bO' : '\x1b[';
  const named = {
    Enter: '\r',
    Backspace: '\x7f',
    Tab: event.shiftKey ? '\x1b[Z' : '\t',
    Escape: '\x1b',
    ArrowUp: `${cursor}A`,
    ArrowDown: `${cursor}B`,
    ArrowRight: `${cursor}C`,
    ArrowLeft: `${cursor}D`,
    Home: `${cursor}H`,
    End: `${cursor}F`,
    PageUp: '\x1b[5~',
    PageDown: '\x1b[6~',
    Delete: '\x1b[3~',
    Insert: '\x1b[2~',
    ...FUNCTION_KEYS,
  };
  const alt = event.altKey && !event.getModifierState('AltGraph') ? '\x1b' : '';
  if (Object.hasOwn(named, key)) return alt + named[key];
  if ([...key].length !== 1) return null;
  if (event.ctrlKey && !event.getModifierState('AltGraph')) {
    if (event.shiftKey && /^[a-z]$/i.test(key)) return null;
    const lower = key.toLowerCase();
    if (lower === 'v') return null;
    if (/^[a-z]$/.test(lower)) return alt + String.fromCharCode(lower.charCodeAt(0) - 96);
    const controls = { ' ': '\x00', '@': '\x00', '[': '\x1b', '\\': '\x1c', ']': '\x1d', '^': '\x1e', _: '\x1f', '?': '\x7f' };
    return Object.hasOwn(controls, key) ? alt + controls[key] : null;
  }
  return alt + key;
}

// A paste, as one piece: newlines as Enter (a terminal's convention), and wrapped as a
// bracketed paste when the program asked for one, without any ESC that could end it early.
export function pasteText(text, bracketed) {
  const typed = text.replace(/\r?\n/g, '\r');
  return bracketed ? `\x1b[200~${typed.replace(/[\x1b\x9b]/g, '')}\x1b[201~` : typed;
}
