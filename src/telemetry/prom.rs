//! The Prometheus text exposition format (version 0.0.4), written by hand: every
//! family has one `# HELP` and one `# TYPE` line before its samples, counters end in
//! `_total`, label values are escaped, and summaries carry `quantile` labels plus
//! `_sum` and `_count` — what `promtool check metrics` asks for.

use std::fmt::Write;

#[derive(Default)]
pub struct Exposition {
    out: String,
    families: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Exposition {
    /// Starts a family (call once per name, before its samples).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(!self.families.iter().any(|f| f == name), "{name} twice");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"));
        self.families.push(name.to_owned());
        let t = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {t}");
        self
    }

    /// A family of one unlabelled sample.
    pub fn one(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A sample of the family started last (summaries name their `_sum` and `_count`
    /// with [`Exposition::sample`]).
    pub fn with(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let name = self.families.last().cloned().unwrap_or_default();
        self.sample(&name, labels, value)
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("syncctl_calls_total", Kind::Counter, "Calls made.")
            .sample("syncctl_calls_total", &[("service", "a\"b\\c\nd")], 3.0);
        e.family("syncctl_ratio", Kind::Gauge, "A ratio.")
            .sample("syncctl_ratio", &[], 0.25);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP syncctl_calls_total Calls made.\n# TYPE syncctl_calls_total counter\n\
             syncctl_calls_total{service=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP syncctl_ratio A ratio.\n# TYPE syncctl_ratio gauge\nsyncctl_ratio 0.25\n"
        );
    }
}
