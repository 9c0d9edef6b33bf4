//! A session's recording as an asciinema v2 cast: a JSON header line, then one JSON array per
//! event, `[seconds, "o", text]` for output, `"i"` for input and `"r"` for a resize
//! (<https://docs.asciinema.org/manual/asciicast/v2/>). `asciinema play` replays it.
//!
//! Output arrives in chunks that may split a UTF-8 character, so an incomplete tail is held
//! for the next chunk. The file is capped; past the cap one marker event says so and the rest
//! is dropped, so a session that floods its terminal cannot fill the disk.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::redact::Redactor;

/// The last output of a cast cut at its size limit.
const CUT_MARKER: &str = "\r\n[headless-bridge: recording cut at its size limit]\r\n";

/// Writes one cast file.
pub struct Recording {
    file: Option<BufWriter<File>>,
    started: Instant,
    written: u64,
    max_bytes: u64,
    /// Bytes of output that end in the middle of a UTF-8 character.
    carry: Vec<u8>,
    /// The end of the output so far that begins a known secret: held until the next output
    /// (or the end) shows whether the secret follows, so it is masked whole.
    held: String,
}

impl Recording {
    /// Creates the cast at `path` for a terminal of `cols` x `rows`.
    pub fn create(path: &Path, cols: u16, rows: u16, max_bytes: u64) -> io::Result<Self> {
        let mut file = BufWriter::new(File::create(path)?);
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({
            "version": 2, "width": cols, "height": rows, "timestamp": timestamp,
            "env": { "TERM": super::TERM },
        });
        let line = format!("{header}\n");
        file.write_all(line.as_bytes())?;
        Ok(Self {
            file: Some(file),
            started: Instant::now(),
            written: line.len() as u64,
            max_bytes,
            carry: Vec::new(),
            held: String::new(),
        })
    }

    /// Records output; `redactor` masks secrets in it, also one cut between two outputs.
    pub fn output(&mut self, bytes: &[u8], redactor: &Redactor) {
        self.carry.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.carry) {
            Ok(_) => self.carry.len(),
            // An error with no length is a character cut short at the end: keep it for later.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&self.carry[..complete]));
        self.carry.drain(..complete);
        let keep = redactor.partial_secret_suffix(&text);
        self.held = text.split_off(text.len() - keep);
        if !text.is_empty() {
            self.event("o", &redactor.redact(&text));
        }
    }

    /// Writes the output held back and everything buffered: the session has ended.
    pub fn finish(&mut self, redactor: &Redactor) {
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            self.event("o", &redactor.redact(&held));
        }
        self.flush();
    }

    /// Records input typed by a client or an expect rule; `redact` masks secrets in it (a
    /// client may type a password the program then hides, or paste a token).
    pub fn input(&mut self, bytes: &[u8], redact: impl Fn(&str) -> String) {
        self.event("i", &redact(&String::from_utf8_lossy(bytes)));
    }

    /// Records a resize.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(e) = file.flush()
        {
            tracing::warn!(error = %e, "failed to write a session recording; it stops here");
            self.file = None;
        }
    }

    fn event(&mut self, kind: &str, data: &str) {
        let Some(file) = &mut self.file else { return };
        let seconds = self.started.elapsed().as_secs_f64();
        let line = format!("{}\n", json!([(seconds * 1e6).round() / 1e6, kind, data]));
        if self.written + line.len() as u64 > self.max_bytes {
            let marker = json!([seconds, "o", CUT_MARKER]);
            let _ = file.write_all(format!("{marker}\n").as_bytes());
            self.flush();
            self.file = None;
            return;
        }
        self.written += line.len() as u64;
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "failed to write a session recording; it stops here");
            self.file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cast_has_a_header_and_events_and_keeps_split_characters_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut cast = Recording::create(&path, 80, 24, 1 << 20).unwrap();
        let euro = "€".as_bytes();
        let none = Redactor::default();
        cast.output(&[b"a".as_slice(), &euro[..1]].concat(), &none);
        cast.output(&euro[1..], &none);
        cast.input(b"y\r", str::to_owned);
        cast.resize(100, 30);
        cast.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(
            (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "a");
        assert_eq!(lines[2][2], "€");
        assert_eq!(
            (lines[3][1].as_str(), lines[3][2].as_str()),
            (Some("i"), Some("y\r"))
        );
        assert_eq!(lines[4][2], "100x30");
    }

    #[test]
    fn typed_secrets_are_masked_in_the_cast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let redactor = crate::redact::Redactor::new(["tok-0123456789abcdefXYZ"]);
        let mut cast = Recording::create(&path, 80, 24, 1 << 20).unwrap();
        cast.input(b"echo tok-0123456789abcdefXYZ\r", |t| redactor.redact(t));
        cast.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    #[test]
    fn a_secret_cut_between_two_outputs_is_masked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let redactor = Redactor::new(["tok-0123456789abcdefXYZ"]);
        let mut cast = Recording::create(&path, 80, 24, 1 << 20).unwrap();
        cast.output(b"token: tok-01234567", &redactor);
        cast.flush();
        cast.output(b"89abcdefXYZ\r\n$ ", &redactor);
        cast.output(b"tok-0", &redactor);
        cast.finish(&redactor);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("tok-01234567"), "{text}");
        assert!(text.contains("token: "), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
        // What was held back and never became a secret is written at the end.
        assert!(text.lines().last().unwrap().contains("tok-0"), "{text}");
    }

    #[test]
    fn a_cast_stops_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut cast = Recording::create(&path, 80, 24, 400).unwrap();
        for _ in 0..100 {
            cast.output(b"0123456789", &Redactor::default());
        }
        cast.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 600, "{}", text.len());
        assert!(text.contains("recording cut"));
    }
}
