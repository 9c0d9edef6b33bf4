//! Reading a profile adapter's output: text, one JSON document, or JSON Lines with a named
//! terminal event, as its [`OutputSpec`] says.
//!
//! The reader keeps what it needs as lines arrive (the end of stdout, the terminal event, the
//! text of message events) and decides the run's [`Verdict`] when the CLI has exited. A CLI's
//! own report wins over its exit code: a result event that says it failed is a failure even
//! with exit code 0, and one that says it succeeded needs no particular exit code. When the CLI
//! said nothing structured, the exit code and the profile's `exit_codes` and `reasons` tables
//! say why it failed.

use std::collections::VecDeque;

use serde_json::Value;

use super::Verdict;
use super::profile::{OutputFormat, OutputSpec};
use crate::run::{ReasonCode, Usage, text};

/// Output kept as a text adapter's final message, from the end of stdout.
const TEXT_OUTPUT_BYTES: usize = 64 << 10;
/// Lines of output kept for the readable account.
const ACCOUNT_LINES: usize = 200;
/// An account line longer than this is cut: a record keeps 1 MiB of its account at most, and
/// 200 whole lines of a CLI's longest (4 MiB each) would hold 800 MiB.
const ACCOUNT_LINE_BYTES: usize = 4 << 10;
/// Text collected from message events, at most.
const MESSAGE_TEXT_BYTES: usize = 256 << 10;

/// The output of a profile adapter.
#[derive(Debug)]
pub struct GenericOutput {
    spec: OutputSpec,
    /// The end of stdout: a text adapter's final message, a json adapter's document.
    tail: VecDeque<String>,
    tail_bytes: usize,
    pub(super) account: VecDeque<String>,
    terminal: Option<Value>,
    /// Text of the events named by `text_events`, joined.
    message_text: String,
    /// The first stderr line matching a `reasons` pattern.
    stderr_reason: Option<(ReasonCode, String)>,
    /// The first meaningful stderr line, to explain a failure.
    first_stderr: Option<String>,
}

impl GenericOutput {
    pub(super) fn new(spec: OutputSpec) -> Self {
        Self {
            spec,
            tail: VecDeque::new(),
            tail_bytes: 0,
            account: VecDeque::new(),
            terminal: None,
            message_text: String::new(),
            stderr_reason: None,
            first_stderr: None,
        }
    }

    /// Takes one stdout line; returns it parsed when it is a JSON event.
    pub(super) fn observe(&mut self, line: &str) -> Option<Value> {
        self.remember(line);
        if self.spec.format != OutputFormat::Jsonl {
            return None;
        }
        let event: Value = serde_json::from_str(line).ok().filter(Value::is_object)?;
        let kind = event.get("type").and_then(Value::as_str);
        if kind == self.spec.terminal_type.as_deref() {
            self.terminal = Some(event.clone());
        } else if let Some(text) = self.event_text(&event)
            && self.message_text.len() < MESSAGE_TEXT_BYTES
        {
            self.message_text.push_str(text);
        }
        Some(event)
    }

    /// Takes one stderr line, for the reasons it may give.
    pub(super) fn observe_stderr(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if self.first_stderr.is_none() {
            self.first_stderr = Some(line.to_owned());
        }
        if self.stderr_reason.is_none()
            && let Some(reason) = self.reason_in(line)
        {
            self.stderr_reason = Some((reason, line.to_owned()));
        }
    }

    fn event_text<'a>(&self, event: &'a Value) -> Option<&'a str> {
        let wanted = self.spec.text_events.as_ref()?;
        if event.get("type").and_then(Value::as_str) != Some(wanted.event_type.as_str()) {
            return None;
        }
        let matches = wanted
            .matching
            .iter()
            .all(|(field, value)| field_of(event, field).and_then(Value::as_str) == Some(value));
        matches
            .then(|| field_of(event, &wanted.field).and_then(Value::as_str))
            .flatten()
    }

    fn remember(&mut self, line: &str) {
        self.account
            .push_back(text::shortened(line, ACCOUNT_LINE_BYTES));
        if self.account.len() > ACCOUNT_LINES {
            self.account.pop_front();
        }
        // A line longer than the whole tail leaves its end, which is the end of stdout.
        let line = text::last_bytes(line, TEXT_OUTPUT_BYTES - 1);
        self.tail.push_back(line.to_owned());
        self.tail_bytes += line.len() + 1;
        while self.tail_bytes > TEXT_OUTPUT_BYTES {
            let Some(dropped) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= dropped.len() + 1;
        }
    }

    /// The result the CLI reported: the terminal event, or the JSON document.
    fn result(&self) -> Option<Value> {
        match self.spec.format {
            OutputFormat::Text => None,
            OutputFormat::Jsonl => self.terminal.clone(),
            OutputFormat::Json => {
                let text: String = self.tail.iter().map(|l| format!("{l}\n")).collect();
                serde_json::from_str(&text).ok().filter(Value::is_object)
            }
        }
    }

    pub(super) fn verdict(&self, exit_code: Option<i32>) -> Verdict {
        let Some(result) = self.result() else {
            return self.verdict_without_result(exit_code);
        };
        if !self.failed(&result) {
            return Verdict::Succeeded;
        }
        let message = self.error_message(&result);
        let reason = self
            .reason_in(&message)
            .or_else(|| self.exit_reason(exit_code))
            .or_else(|| self.stderr_reason.as_ref().map(|(r, _)| *r))
            .unwrap_or(ReasonCode::UpstreamError);
        Verdict::Failed { reason, message }
    }

    fn verdict_without_result(&self, exit_code: Option<i32>) -> Verdict {
        let text_exit_zero = self.spec.format == OutputFormat::Text && exit_code == Some(0);
        if text_exit_zero {
            return Verdict::Succeeded;
        }
        let mapped = self
            .exit_reason(exit_code)
            .or_else(|| self.stderr_reason.as_ref().map(|(r, _)| *r));
        let detail = self
            .stderr_reason
            .as_ref()
            .map(|(_, line)| line.clone())
            .or_else(|| self.first_stderr.clone());
        match (mapped, exit_code, self.spec.format) {
            (Some(reason), code, _) => Verdict::Failed {
                reason,
                message: explain(code, detail),
            },
            (None, Some(code), OutputFormat::Text) => Verdict::Failed {
                reason: ReasonCode::CliError,
                message: explain(Some(code), detail),
            },
            (None, _, _) => Verdict::NoOutcome,
        }
    }

    fn failed(&self, result: &Value) -> bool {
        let flagged = self
            .spec
            .error_field
            .as_deref()
            .and_then(|f| field_of(result, f))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let status_ok = match self.spec.status_field.as_deref() {
            None => true,
            Some(field) => {
                let status = field_of(result, field).and_then(Value::as_str);
                status.is_some_and(|s| self.spec.success_values.iter().any(|v| v == s))
            }
        };
        flagged || !status_ok
    }

    fn error_message(&self, result: &Value) -> String {
        let fields = [&self.spec.error_message_field, &self.spec.message_field];
        fields
            .into_iter()
            .flatten()
            .find_map(|f| field_of(result, f).and_then(Value::as_str))
            .map_or_else(|| result.to_string(), str::to_owned)
    }

    fn exit_reason(&self, exit_code: Option<i32>) -> Option<ReasonCode> {
        let code = exit_code?.to_string();
        self.spec.exit_codes.get(&code).copied()
    }

    fn reason_in(&self, text: &str) -> Option<ReasonCode> {
        self.spec
            .reasons
            .iter()
            .find(|(pattern, _)| text.contains(pattern.as_str()))
            .map(|(_, reason)| *reason)
    }

    pub(super) fn output(&self) -> String {
        let from_result = self.result().and_then(|result| {
            let field = self.spec.message_field.as_deref()?;
            field_of(&result, field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        match (from_result, self.spec.format) {
            (Some(text), _) => text,
            (None, OutputFormat::Text) => self.tail.iter().map(|l| format!("{l}\n")).collect(),
            (None, _) => self.message_text.clone(),
        }
    }

    pub(super) fn usage(&self) -> Option<Usage> {
        let field = self.spec.usage_field.as_deref()?;
        let usage = field_of(&self.result()?, field)?.clone();
        let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            input_tokens: count("input_tokens"),
            cached_input_tokens: count("cache_read_input_tokens").max(count("cached")),
            output_tokens: count("output_tokens"),
            reasoning_output_tokens: 0,
        })
    }
}

fn explain(exit_code: Option<i32>, detail: Option<String>) -> String {
    let exit = exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));
    match detail {
        Some(detail) => format!("the CLI exited with {exit}: {detail}"),
        None => format!("the CLI exited with {exit}"),
    }
}

/// The value at a dotted path such as `error.message`.
pub fn field_of<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rstest::rstest;

    use super::*;
    use crate::adapter::profile::TextEvents;

    fn claude_like() -> OutputSpec {
        OutputSpec {
            format: OutputFormat::Jsonl,
            terminal_type: Some("result".into()),
            error_field: Some("is_error".into()),
            message_field: Some("result".into()),
            usage_field: Some("usage".into()),
            reasons: BTreeMap::from([("Not logged in".into(), ReasonCode::CredentialsMissing)]),
            ..OutputSpec::default()
        }
    }

    fn gemini_like() -> OutputSpec {
        OutputSpec {
            format: OutputFormat::Jsonl,
            terminal_type: Some("result".into()),
            status_field: Some("status".into()),
            success_values: vec!["success".into()],
            error_message_field: Some("error.message".into()),
            text_events: Some(TextEvents {
                event_type: "message".into(),
                field: "content".into(),
                matching: BTreeMap::from([("role".into(), "assistant".into())]),
            }),
            exit_codes: BTreeMap::from([("41".into(), ReasonCode::CredentialsInvalid)]),
            ..OutputSpec::default()
        }
    }

    fn read(spec: OutputSpec, lines: &[&str]) -> GenericOutput {
        let mut out = GenericOutput::new(spec);
        for line in lines {
            out.observe(line);
        }
        out
    }

    #[test]
    fn text_output_succeeds_on_exit_zero_and_keeps_the_end() {
        let mut out = GenericOutput::new(OutputSpec::default());
        for i in 0..10_000 {
            out.observe(&format!(
                "line {i:05} ........................................"
            ));
        }
        assert_eq!(out.verdict(Some(0)), Verdict::Succeeded);
        assert!(matches!(out.verdict(Some(3)), Verdict::Failed { .. }));
        let text = out.output();
        assert!(
            text.len() <= TEXT_OUTPUT_BYTES
                && text.ends_with("line 09999 ........................................\n")
        );
        assert_eq!(out.account.len(), ACCOUNT_LINES);
    }

    /// Regression: a line longer than the output tail dropped itself, leaving no output, and
    /// the account kept 200 such lines whole (a CLI printing 4 MiB lines held gigabytes).
    #[test]
    fn a_huge_line_leaves_its_end_as_output_and_a_short_account_line() {
        let mut out = GenericOutput::new(OutputSpec::default());
        let huge = format!("{}the end", "x".repeat(1 << 20));
        for _ in 0..3 {
            out.observe(&huge);
        }
        let text = out.output();
        assert!(
            text.len() <= TEXT_OUTPUT_BYTES && text.ends_with("xxxthe end\n"),
            "{} bytes of output ending {:?}",
            text.len(),
            text::last_bytes(&text, 20)
        );
        let kept: usize = out.account.iter().map(String::len).sum();
        assert!(
            kept <= 3 * (ACCOUNT_LINE_BYTES + 32),
            "{kept} bytes of account"
        );
        assert!(
            out.account[0].ends_with(&format!("[{} more bytes]", huge.len() - ACCOUNT_LINE_BYTES)),
            "{}",
            text::last_bytes(&out.account[0], 40)
        );
    }

    #[rstest]
    #[case::error_flag_beats_success_subtype(
        claude_like(),
        r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500 boom"}"#,
        Some(0),
        Some(ReasonCode::UpstreamError)
    )]
    #[case::message_names_the_reason(
        claude_like(),
        r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login"}"#,
        Some(1),
        Some(ReasonCode::CredentialsMissing)
    )]
    #[case::success_despite_exit_code(
        claude_like(),
        r#"{"type":"result","is_error":false,"result":"ok"}"#,
        Some(1),
        None
    )]
    #[case::status_error(
        gemini_like(),
        r#"{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: quota]"}}"#,
        Some(0),
        Some(ReasonCode::UpstreamError)
    )]
    #[case::status_missing_is_failure(
        gemini_like(),
        r#"{"type":"result"}"#,
        Some(0),
        Some(ReasonCode::UpstreamError)
    )]
    #[case::status_success(
        gemini_like(),
        r#"{"type":"result","status":"success"}"#,
        Some(0),
        None
    )]
    fn the_result_event_decides(
        #[case] spec: OutputSpec,
        #[case] result: &str,
        #[case] exit: Option<i32>,
        #[case] failure: Option<ReasonCode>,
    ) {
        let verdict = read(spec, &[r#"{"type":"progress"}"#, result]).verdict(exit);
        match failure {
            None => assert_eq!(verdict, Verdict::Succeeded),
            Some(reason) => {
                assert!(
                    matches!(verdict, Verdict::Failed { reason: r, .. } if r == reason),
                    "{verdict:?}"
                )
            }
        }
    }

    #[test]
    fn jsonl_without_its_terminal_event_has_no_outcome_unless_the_exit_code_says() {
        let out = read(claude_like(), &[r#"{"type":"progress"}"#]);
        assert_eq!(out.verdict(Some(0)), Verdict::NoOutcome);

        let mut out = read(gemini_like(), &[]);
        out.observe_stderr("Please set an Auth method in your settings.json");
        let Verdict::Failed { reason, message } = out.verdict(Some(41)) else {
            panic!("exit 41 is mapped");
        };
        assert_eq!(reason, ReasonCode::CredentialsInvalid);
        assert!(
            message.contains("exit code 41: Please set an Auth method"),
            "{message}"
        );
    }

    #[test]
    fn gemini_like_output_joins_assistant_messages_and_reads_nested_errors() {
        let out = read(
            gemini_like(),
            &[
                r#"{"type":"message","role":"user","content":"do it"}"#,
                r#"{"type":"message","role":"assistant","content":"Hello ","delta":true}"#,
                r#"{"type":"message","role":"assistant","content":"world","delta":true}"#,
                r#"{"type":"result","status":"error","error":{"message":"[API Error: x]"}}"#,
            ],
        );
        assert_eq!(out.output(), "Hello world");
        assert!(
            matches!(out.verdict(Some(1)), Verdict::Failed { message, .. } if message == "[API Error: x]")
        );
    }

    #[test]
    fn a_json_document_is_read_whole_and_usage_is_taken_from_it() {
        let spec = OutputSpec {
            format: OutputFormat::Json,
            ..claude_like()
        };
        let out = read(
            spec,
            &[
                "{",
                r#"  "type": "result", "is_error": false, "result": "done","#,
                r#"  "usage": {"input_tokens": 12, "output_tokens": 7}"#,
                "}",
            ],
        );
        assert_eq!(out.verdict(Some(0)), Verdict::Succeeded);
        assert_eq!(out.output(), "done");
        assert_eq!(
            out.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((12, 7))
        );
    }
}
