//! How an adapter behaves in an interactive session: the `[session]` table of a profile, and
//! the built-in one of Codex.
//!
//! ```toml
//! [session]
//! args = ["--cd", "{work_dir}"]        # the interactive command line (default: no arguments)
//! ready_pattern = '(?m)^› '            # screen text that means "ready for the next input"
//! busy_pattern = 'esc to interrupt'    # ...unless this shows too (a turn in progress, a menu)
//! settle_ms = 400                      # output pauses this long before it is judged and answered
//! submit_wait_ms = 3000                # after Enter: busy until the busy pattern shows, or this
//! quiet_ms = 800                       # without a ready pattern: this much silence is idle
//!
//! [[session.expect]]                   # answered by the bridge
//! pattern = 'Do you trust the files in this folder\?'
//! region = "screen"
//! send = "y\r"
//!
//! [[session.expect]]                   # a person must answer: state `waiting_for_input`
//! pattern = '(?i)password:'
//! ask_person = true
//! ```
//!
//! Patterns are regular expressions matched against the rendered screen, not the raw byte
//! stream, so a TUI that redraws a prompt with cursor moves still matches it. By default a rule
//! looks only at the line the cursor is on, where a line-based program asks its question;
//! `region = "screen"` looks at the whole screen, for full-screen programs.

use regex::Regex;
use serde::Deserialize;

use super::keys;

/// The `[session]` table of an adapter profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// The interactive command line; `{prompt}` is the request's optional first prompt (an
    /// argument holding it is left out when there is none).
    #[serde(default)]
    pub args: Vec<String>,
    /// A regular expression on the screen that means the tool is ready for input.
    pub ready_pattern: Option<String>,
    /// A regular expression on the screen that means the tool is not ready even though the
    /// ready pattern shows: a full-screen tool keeps its input line drawn while it works.
    pub busy_pattern: Option<String>,
    /// Milliseconds the output must pause before the screen is judged against the ready
    /// pattern (default 100). Set, it also holds automatic answers (otherwise typed at once)
    /// until the screen is judged, which without a ready pattern is after `quiet_ms`. For a
    /// full-screen tool that draws a screen before it reads its keys, or its input line
    /// again before it starts working.
    pub settle_ms: Option<u64>,
    /// After input holding Enter, the tool counts as busy until its busy pattern shows, or
    /// for this many milliseconds: a tool that takes a moment to show it is working would
    /// look idle in between. Needs `busy_pattern`.
    pub submit_wait_ms: Option<u64>,
    /// Without a ready pattern: milliseconds of silence after which the tool counts as idle.
    pub quiet_ms: Option<u64>,
    /// Prompts answered by the bridge or handed to a person.
    #[serde(default)]
    pub expect: Vec<ExpectRule>,
}

/// One expect rule: a pattern and what to do when the screen shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRule {
    pub pattern: String,
    #[serde(default)]
    pub region: Region,
    /// Text to type in answer.
    pub send: Option<String>,
    /// Named keys to press in answer (see the keys module).
    pub keys: Option<Vec<String>>,
    /// A person must answer: the session waits in state `waiting_for_input`.
    #[serde(default)]
    pub ask_person: bool,
}

/// Where on the screen a rule looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// The line the cursor is on.
    #[default]
    CursorLine,
    /// The whole screen.
    Screen,
}

/// The longest quiet window a profile or request may set: beyond it "idle" means nothing.
pub const MAX_QUIET_MS: u64 = 60_000;

impl SessionSpec {
    /// Checks patterns, keys and the quiet window; the message names the problem.
    pub fn check(&self) -> Result<(), String> {
        if let Some(pattern) = &self.ready_pattern {
            Regex::new(pattern)
                .map_err(|e| format!("`session.ready_pattern` is not a valid regex: {e}"))?;
        }
        if let Some(pattern) = &self.busy_pattern {
            Regex::new(pattern)
                .map_err(|e| format!("`session.busy_pattern` is not a valid regex: {e}"))?;
        }
        if self.submit_wait_ms.is_some() && self.busy_pattern.is_none() {
            return Err("`session.submit_wait_ms` needs a `busy_pattern` to wait for".into());
        }
        let windows = [
            ("quiet_ms", self.quiet_ms),
            ("settle_ms", self.settle_ms),
            ("submit_wait_ms", self.submit_wait_ms),
        ];
        for (name, value) in windows {
            if let Some(ms) = value
                && !(1..=MAX_QUIET_MS).contains(&ms)
            {
                return Err(format!(
                    "`session.{name}` must be between 1 and {MAX_QUIET_MS}"
                ));
            }
        }
        for rule in &self.expect {
            Regex::new(&rule.pattern).map_err(|e| {
                format!(
                    "`session.expect` pattern `{}` is not a valid regex: {e}",
                    rule.pattern
                )
            })?;
            let actions = usize::from(rule.send.is_some())
                + usize::from(rule.keys.is_some())
                + usize::from(rule.ask_person);
            if actions != 1 {
                return Err(format!(
                    "`session.expect` rule `{}` needs exactly one of `send`, `keys` and \
                     `ask_person = true`",
                    rule.pattern
                ));
            }
            if let Some(names) = &rule.keys {
                keys::encode(names, false).map_err(|e| format!("`session.expect` rule: {e}"))?;
            }
        }
        Ok(())
    }
}

/// What a matched rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Type these bytes.
    Send(Vec<u8>),
    /// Wait for a person.
    AskPerson,
}

/// A rule ready to match.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub pattern: Regex,
    pub region: Region,
    pub action: Action,
    /// Re-armed once the rule stops matching or a client types, so an answered prompt that
    /// stays on screen is not answered again.
    armed: bool,
}

/// What the rules found on one screen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Matches {
    /// Bytes to type now (each automatic answer fires once per appearance of its prompt).
    pub answers: Vec<(String, Vec<u8>)>,
    /// The first person rule that matches: its pattern and the question's text.
    pub question: Option<(String, String)>,
}

/// A session's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub ready: Option<Regex>,
    busy: Option<Regex>,
    rules: Vec<CompiledRule>,
}

impl Rules {
    /// Compiles a checked spec; `application_cursor` is not known yet, so keys are encoded
    /// for the normal cursor mode.
    pub fn compile(spec: &SessionSpec) -> Result<Self, String> {
        let ready = spec
            .ready_pattern
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        let busy = spec
            .busy_pattern
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for rule in &spec.expect {
            let action = match (&rule.send, &rule.keys) {
                (Some(text), _) => Action::Send(text.clone().into_bytes()),
                (None, Some(names)) => {
                    Action::Send(keys::encode(names, false).map_err(|e| e.to_string())?)
                }
                (None, None) => Action::AskPerson,
            };
            rules.push(CompiledRule {
                pattern: Regex::new(&rule.pattern).map_err(|e| e.to_string())?,
                region: rule.region,
                action,
                armed: true,
            });
        }
        Ok(Self { ready, busy, rules })
    }

    /// Matches every rule against a screen: `cursor_line` is the text of the cursor's row.
    /// Without `answer`, rules that type are left out (and keep their arming): the screen is
    /// looked at before it has settled, and the program would not read the answer yet.
    pub fn evaluate(&mut self, screen: &str, cursor_line: &str, answer: bool) -> Matches {
        let mut found = Matches::default();
        for rule in &mut self.rules {
            if !answer && matches!(rule.action, Action::Send(_)) {
                continue;
            }
            let text = match rule.region {
                Region::CursorLine => cursor_line,
                Region::Screen => screen,
            };
            let Some(hit) = rule.pattern.find(text) else {
                rule.armed = true;
                continue;
            };
            match &rule.action {
                Action::Send(bytes) if rule.armed => {
                    rule.armed = false;
                    found
                        .answers
                        .push((rule.pattern.to_string(), bytes.clone()));
                }
                Action::Send(_) => {}
                Action::AskPerson if found.question.is_none() => {
                    let question = line_around(text, hit.start());
                    found.question = Some((rule.pattern.to_string(), question));
                }
                Action::AskPerson => {}
            }
        }
        found
    }

    /// A client typed: every answered prompt may be answered again when it shows next.
    pub fn rearm(&mut self) {
        for rule in &mut self.rules {
            rule.armed = true;
        }
    }

    /// Whether the screen shows the busy pattern.
    pub fn is_busy(&self, screen: &str) -> bool {
        self.busy.as_ref().is_some_and(|busy| busy.is_match(screen))
    }

    /// Whether the screen shows the ready pattern and not the busy one; `None` without a
    /// ready pattern.
    pub fn is_ready(&self, screen: &str) -> Option<bool> {
        self.ready
            .as_ref()
            .map(|ready| ready.is_match(screen) && !self.is_busy(screen))
    }
}

/// The trimmed line of `text` that holds byte `at`.
fn line_around(text: &str, at: usize) -> String {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    text[start..end].trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Rules {
        let spec: SessionSpec = toml::from_str(toml_text).expect("a spec parses");
        spec.check().expect("a valid spec");
        Rules::compile(&spec).expect("it compiles")
    }

    #[test]
    fn an_answer_fires_once_per_appearance() {
        let mut rules = rules("[[expect]]\npattern = 'Continue\\?'\nsend = \"y\\r\"\n");
        let first = rules.evaluate("", "Continue? ", true);
        assert_eq!(first.answers.len(), 1);
        assert_eq!(first.answers[0].1, b"y\r");
        assert!(rules.evaluate("", "Continue? y", true).answers.is_empty());
        assert!(rules.evaluate("", "", true).answers.is_empty());
        assert_eq!(rules.evaluate("", "Continue? ", true).answers.len(), 1);
    }

    #[test]
    fn a_person_rule_reports_the_question_line() {
        let mut rules =
            rules("[[expect]]\npattern = 'passphrase'\nregion = \"screen\"\nask_person = true\n");
        let found = rules.evaluate("header\n  Enter passphrase for key:  \nfooter", "", true);
        assert_eq!(
            found.question,
            Some(("passphrase".into(), "Enter passphrase for key:".into()))
        );
    }

    #[test]
    fn the_busy_pattern_overrules_the_ready_one() {
        let rules = rules("ready_pattern = '(?m)^> '\nbusy_pattern = 'esc to interrupt'\n");
        assert_eq!(rules.is_ready("> "), Some(true));
        assert_eq!(
            rules.is_ready("Working (esc to interrupt)\n> "),
            Some(false)
        );
        assert_eq!(rules.is_ready("nothing yet"), Some(false));
    }

    #[test]
    fn rules_need_exactly_one_action() {
        let spec: SessionSpec =
            toml::from_str("[[expect]]\npattern = 'x'\nsend = \"y\"\nask_person = true\n").unwrap();
        assert!(spec.check().unwrap_err().contains("exactly one"));
        let spec: SessionSpec =
            toml::from_str("[[expect]]\npattern = 'x'\nkeys = [\"Nope\"]\n").unwrap();
        assert!(spec.check().unwrap_err().contains("Nope"));
        let spec: SessionSpec = toml::from_str("submit_wait_ms = 100\n").unwrap();
        assert!(spec.check().unwrap_err().contains("busy_pattern"));
        let spec: SessionSpec = toml::from_str("ready_pattern = '('\n").unwrap();
        assert!(spec.check().unwrap_err().contains("ready_pattern"));
    }
}
