//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then
//! one sample per line, label values escaped, histograms as cumulative `_bucket` series with
//! `_sum` and `_count`. See <https://prometheus.io/docs/instrumenting/exposition_formats/>.

use std::fmt::Write as _;

/// The `Content-Type` of a scrape answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A scrape answer being written, one family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its help text and type. Every sample that follows, until the next
    /// family, must belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// One histogram series: `counts[i]` observations fell in `(bounds[i-1], bounds[i]]`, and
    /// `counts[bounds.len()]` above the last bound. Buckets are written cumulative, ending
    /// with `+Inf`, which equals `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(
            counts.len(),
            bounds.len() + 1,
            "one count per bucket and +Inf"
        );
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
            self.text.push_str(&bucket);
            write_labels(&mut self.text, labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (name, value)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_label(value));
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed, and nothing else.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A sample value as Go's `ParseFloat` reads it: integers without a fraction, `+Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_and_a_histogram_are_written_as_the_format_says() {
        let mut out = Exposition::default();
        out.family("x_total", Kind::Counter, "Things.\nCounted \\ here.");
        out.sample("x_total", &[("a", "q\"u\\o\nte")], 3.0);
        out.family("d_seconds", Kind::Histogram, "Durations.");
        out.histogram("d_seconds", &[("k", "v")], &[0.5, 1.0], &[1, 0, 2], 7.25);
        assert_eq!(
            out.finish(),
            "# HELP x_total Things.\\nCounted \\\\ here.\n\
             # TYPE x_total counter\n\
             x_total{a=\"q\\\"u\\\\o\\nte\"} 3\n\
             # HELP d_seconds Durations.\n\
             # TYPE d_seconds histogram\n\
             d_seconds_bucket{k=\"v\",le=\"0.5\"} 1\n\
             d_seconds_bucket{k=\"v\",le=\"1\"} 1\n\
             d_seconds_bucket{k=\"v\",le=\"+Inf\"} 3\n\
             d_seconds_sum{k=\"v\"} 7.25\n\
             d_seconds_count{k=\"v\"} 3\n"
        );
    }

    #[test]
    fn special_values_are_spelled_as_go_parses_them() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(-12.0), "-12");
        assert_eq!(number(0.1), "0.1");
    }
}
