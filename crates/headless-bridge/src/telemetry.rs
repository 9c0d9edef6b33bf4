//! Log output: JSON lines in a container, readable text on a terminal, level from `RUST_LOG`.
//!
//! A JSON line is one flat object: `timestamp`, `level`, `target`, `span` (the innermost span's
//! name), the fields of every span the event sits in (a request's `method`, `route` and
//! `request_id`; a run's `run_id`, `adapter` and `contract_id`), then the event's own fields
//! and `message`. Flat, so a log store can filter every line of one run by `run_id` without
//! knowing how deep in the code the line was written. Span fields are formatted once, when
//! the span is created; the spans carry ids and names only, never a body or a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset: our lifecycle events, and only warnings from libraries.
const DEFAULT_FILTER: &str = "warn,headless_bridge=info";

/// Installs the global subscriber. Call once, early.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init();
    } else {
        builder.init();
    }
}

/// Writes each event as one flat JSON object; needs [`JsonFields`] as the field formatter,
/// which stores each span's fields as a JSON object.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = BTreeMap::new();
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".to_owned(), Value::String(now));
        line.insert("level".to_owned(), Value::from(metadata.level().as_str()));
        line.insert("target".to_owned(), Value::from(metadata.target()));

        // Outermost first, so an inner span's field wins over an outer one of the same name.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let stored = extensions.get::<FormattedFields<N>>();
                if let Some(Ok(Value::Object(fields))) =
                    stored.map(|f| serde_json::from_str::<Value>(&f.fields))
                {
                    line.extend(fields);
                }
                line.insert("span".to_owned(), Value::from(span.name()));
            }
        }
        event.record(&mut FieldVisitor(&mut line));

        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values.
struct FieldVisitor<'a>(&'a mut BTreeMap<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = crate::error_chain(value);
        self.0.insert(field.name().to_owned(), Value::from(text));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_the_fields_of_every_span_it_sits_in() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!("run", run_id = "r-1", adapter = "codex");
            let _run = run.enter();
            let step = tracing::info_span!("clone", adapter = "inner");
            let _step = step.enter();
            tracing::info!(bytes = 42u64, ok = true, "cloned");
        });

        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "cloned");
        assert_eq!(line["run_id"], "r-1");
        assert_eq!(line["adapter"], "inner", "the inner span wins");
        assert_eq!(line["span"], "clone");
        assert_eq!(line["bytes"], 42);
        assert_eq!(line["ok"], true);
        assert_eq!(line["level"], "INFO");
    }
}
