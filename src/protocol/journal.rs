//! The operator journal: every action any front-end took (the console's keys and `:`
//! mode, the HTTP API, `syncctl ctl`, an attached console, `dian retry`), read back from
//! the audit trail as who, what, the result, and the `syncctl ctl …` line that does the
//! same from a shell. The console's Events screen and `syncctl ctl journal` both read it
//! through [`JournalEntry::from_audit`].
//!
//! # Reading an audit line
//!
//! The engine audits each command once, as kind [`OPERATOR`], with the line
//! `<command text>: <outcome>` or `<command text>: refused: <why>`, where the command
//! text is the command's [`Display`](std::fmt::Display) form. A command's text may hold
//! `": "` itself — inside quotes (`retry "INV: 12"`), or after a word ending in `:` (the
//! matcher of `silence queue: 1h`) — and an outcome holds it often (`thresholds: …`). So
//! the line is split where its text ends: at the first `": "` whose prefix parses as a
//! command that prints back as exactly that prefix. That split is the only one: a
//! command's text contains `": "` only inside quotes (where a prefix does not parse: its
//! quote is open) or between a `silence` matcher and its duration (where the prefix
//! lacks the duration); any longer prefix would end with words after the last one the
//! command takes. A line none of whose prefixes is a command (written by an older
//! version, cut at the audit's 1000 characters, a request refused for a value the
//! grammar cannot hold) is split at its first `": "` and has no CLI equivalent.
//!
//! # The CLI equivalent
//!
//! `syncctl ctl` takes a command word by word, each argument one word as it is
//! ([`Command::from_cli_args`]): `syncctl ctl retry 'INV 12'`. A word that is a value
//! only because it is quoted (`ack "*"`: the alerts whose id starts with `*`, not every
//! alert) cannot be passed that way, so such a command is passed as its whole text in
//! one argument: `syncctl ctl 'ack "*"'`. [`Command::cli_line`] writes the line with
//! POSIX shell quoting, so it can be pasted into a shell as it is.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::command::{Command, CommandError, split_words};
use super::snapshot::AuditEntry;

/// The audit kind of an operator's command.
pub const OPERATOR: &str = "operator";

/// What the CLI equivalent starts with.
pub const CLI_PREFIX: &str = "syncctl ctl";

/// What came of an operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalResult {
    /// Carried out (or nothing had to change).
    Done,
    /// Not carried out; the message says why.
    Refused,
}

impl JournalResult {
    /// `done` or `refused`.
    pub fn word(self) -> &'static str {
        match self {
            JournalResult::Done => "done",
            JournalResult::Refused => "refused",
        }
    }
}

/// One operator action, as the journal shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The audit entry's id (newer entries have larger ids).
    pub id: i64,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Who, as the front-end named them: `ana@10.0.0.7`, `api:ops@10.0.0.7`,
    /// `ana@10.0.0.7 via ops`.
    pub actor: String,
    /// What it acted on (a pipeline, a service, an invoice's number, `alerts`…).
    pub entity: String,
    /// The command's text in the grammar.
    pub command: String,
    /// Done or refused.
    pub result: JournalResult,
    /// The engine's words: what it did, or why not.
    pub message: String,
    /// `syncctl ctl …`, shell-quoted, when the text is a command of this grammar.
    pub cli: Option<String>,
}

impl JournalEntry {
    /// The journal's entry for an audit entry of kind [`OPERATOR`]; `None` for any
    /// other kind. See the module's documentation for how the line is read.
    pub fn from_audit(entry: &AuditEntry) -> Option<JournalEntry> {
        if entry.kind != OPERATOR {
            return None;
        }
        let (command, parsed, rest) = split_line(&entry.message);
        let (result, message) = match rest.strip_prefix("refused: ") {
            Some(why) => (JournalResult::Refused, why),
            None => (JournalResult::Done, rest),
        };
        Some(JournalEntry {
            id: entry.id,
            at_ms: entry.at_ms,
            actor: entry.actor.clone(),
            entity: entry.entity.clone(),
            command: command.to_owned(),
            result,
            message: message.to_owned(),
            cli: parsed.map(|c| c.cli_line()),
        })
    }

    /// The CLI equivalent, or the command's text when it has none.
    pub fn what(&self) -> &str {
        self.cli.as_deref().unwrap_or(&self.command)
    }
}

/// An audit line's command text, the command it parses to (if it does), and the rest.
fn split_line(line: &str) -> (&str, Option<Command>, &str) {
    let cuts = || line.match_indices(": ").map(|(i, _)| i);
    for i in cuts() {
        let text = &line[..i];
        if let Ok(c) = text.parse::<Command>()
            && c.to_string() == text
        {
            return (text, Some(c), &line[i + 2..]);
        }
    }
    match cuts().next() {
        Some(i) => (&line[..i], None, &line[i + 2..]),
        None => (line, None, ""),
    }
}

impl Command {
    /// The arguments `syncctl ctl` takes for this command: its words, each one
    /// argument as it is; or its whole text as one argument when a word is a value
    /// only because it is quoted (see the module's documentation).
    /// [`Command::from_cli_args`] reads them back to this command.
    pub fn cli_args(&self) -> Vec<String> {
        let text = self.to_string();
        match split_words(&text) {
            Ok(words) => {
                let words: Vec<String> = words.into_iter().map(|w| w.text).collect();
                if Command::from_words(words.clone()).as_ref() == Ok(self) {
                    words
                } else {
                    vec![text]
                }
            }
            Err(_) => vec![text],
        }
    }

    /// `syncctl ctl …`: [`cli_args`](Self::cli_args) quoted for a POSIX shell.
    pub fn cli_line(&self) -> String {
        let mut line = CLI_PREFIX.to_owned();
        for arg in self.cli_args() {
            line.push(' ');
            line.push_str(&shell_word(&arg));
        }
        line
    }

    /// Reads `syncctl ctl`'s arguments: each argument one word
    /// ([`Command::from_words`]), or a single argument holding whitespace as a whole
    /// command line in the grammar (`syncctl ctl 'ack "*"'`; no verb holds whitespace,
    /// so such an argument is never one word).
    ///
    /// # Errors
    ///
    /// [`CommandError::Invalid`] naming the field at fault.
    pub fn from_cli_args(args: &[String]) -> Result<Command, CommandError> {
        match args {
            [line] if line.chars().any(char::is_whitespace) => line.parse(),
            _ => Command::from_words(args.iter().cloned()),
        }
    }
}

/// One argument as a POSIX shell reads it back: bare when it holds only characters
/// no shell treats specially, else in single quotes (a `'` written `'\''`).
fn shell_word(arg: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// A time as the journal prints it: ISO 8601 in UTC to the second,
/// `2026-11-18T11:06:40Z`.
pub fn utc_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::super::command::tests::every_command;
    use super::super::command::{AlertMatcher, CacheScope, Outcome, Pipeline, Reply};
    use super::*;

    /// The audit line the engine writes (`engine::commands::audit_line`).
    fn line(command: &Command, reply: &Reply) -> String {
        match reply {
            Ok(o) => format!("{command}: {}", o.message),
            Err(e) => format!("{command}: refused: {e}"),
        }
    }

    fn audit(message: &str) -> AuditEntry {
        AuditEntry {
            id: 7,
            at_ms: 1_795_000_000_000,
            kind: OPERATOR.into(),
            entity: "catalog".into(),
            actor: "ana@10.0.0.7 via ops".into(),
            message: message.into(),
            trace_id: None,
        }
    }

    /// Reads a line of bare words and single-quoted strings, as a POSIX shell does
    /// (the forms `shell_word` writes).
    fn shell_split(line: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut arg: Option<String> = None;
        let mut quoted = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' if quoted => quoted = false,
                '\'' => {
                    quoted = true;
                    arg.get_or_insert_default();
                }
                '\\' if !quoted => arg.get_or_insert_default().extend(chars.next()),
                ' ' if !quoted => args.extend(arg.take()),
                c => arg.get_or_insert_default().push(c),
            }
        }
        assert!(!quoted, "unclosed quote in {line}");
        args.extend(arg);
        args
    }

    #[test]
    fn every_command_reads_back_from_its_journal_line_and_cli_equivalent() {
        let replies: [Reply; 3] = [
            Ok(Outcome::new("thresholds: a.b 1 → 2 (saved to /etc/x: ok)")),
            Err(CommandError::conflict("refused: no: \"x\": y")),
            Err(CommandError::invalid(
                "alerts.queue_depth",
                "0 is out of range",
            )),
        ];
        for command in every_command() {
            for reply in &replies {
                let entry = JournalEntry::from_audit(&audit(&line(&command, reply)))
                    .unwrap_or_else(|| panic!("{command}"));
                assert_eq!(entry.command, command.to_string());
                let (verdict, message) = match reply {
                    Ok(o) => (JournalResult::Done, o.message.clone()),
                    Err(e) => (JournalResult::Refused, e.to_string()),
                };
                assert_eq!((entry.result, entry.message.as_str()), (verdict, &*message));
                let cli = entry.cli.unwrap_or_else(|| panic!("no CLI for {command}"));
                let args = shell_split(&cli);
                assert_eq!(args.get(..2), Some(&["syncctl".into(), "ctl".into()][..]));
                assert_eq!(
                    Command::from_cli_args(&args[2..]),
                    Ok(command.clone()),
                    "{cli}"
                );
            }
        }
    }

    #[test]
    fn a_command_text_holding_colons_is_split_where_it_ends() {
        let cases = [
            (
                Command::SilenceAlerts {
                    matcher: AlertMatcher::Prefix("queue:".into()),
                    secs: 3600,
                },
                "syncctl ctl silence queue: 1h",
            ),
            (
                Command::RetryInvoice {
                    key: "INV: 12".into(),
                },
                "syncctl ctl retry 'INV: 12'",
            ),
            (
                Command::RetryInvoice { key: "a:".into() },
                "syncctl ctl retry a:",
            ),
            (
                Command::InvalidateCache {
                    scope: CacheScope::Tag("x:".into()),
                },
                "syncctl ctl invalidate tag:x:",
            ),
        ];
        for (command, cli) in cases {
            let text = format!("{command}: refused: invoice \"a: b\" not found");
            let e = JournalEntry::from_audit(&audit(&text)).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(e.command, command.to_string(), "{text}");
            assert_eq!(e.result, JournalResult::Refused);
            assert_eq!(e.message, "invoice \"a: b\" not found");
            assert_eq!(e.cli.as_deref(), Some(cli));
        }
    }

    #[test]
    fn quoted_keywords_go_as_one_argument_and_plain_words_bare() {
        let ack_star = Command::AckAlerts {
            matcher: AlertMatcher::Prefix("*".into()),
        };
        assert_eq!(ack_star.cli_line(), r#"syncctl ctl 'ack "*"'"#);
        let every = Command::AckAlerts {
            matcher: AlertMatcher::All,
        };
        assert_eq!(every.cli_line(), "syncctl ctl ack '*'");
        let pause = Command::Pause {
            pipeline: Pipeline::Compliance,
        };
        assert_eq!(pause.cli_line(), "syncctl ctl pause compliance");
        let quote = Command::RetryInvoice {
            key: "it's $HOME".into(),
        };
        assert_eq!(quote.cli_line(), r"syncctl ctl retry 'it'\''s $HOME'");
        // One argument with whitespace is a whole line; one word is one word.
        assert_eq!(
            Command::from_cli_args(&["pause compliance".into()]),
            Ok(pause)
        );
        assert_eq!(
            Command::from_cli_args(&["retry-failed".into()]),
            Ok(Command::RetryFailed {})
        );
    }

    #[test]
    fn lines_that_are_no_command_keep_their_text_without_a_cli_equivalent() {
        let cases = [
            // An older version's line, without the command's text.
            ("paused catalog pipeline", "paused catalog pipeline", ""),
            // A value the grammar refuses (a silence of 0 s, sent as JSON).
            (
                "silence x 0s: refused: duration: a silence lasts 1s to 7d",
                "silence x 0s",
                "duration: a silence lasts 1s to 7d",
            ),
            // Cut at the audit's length.
            ("retry xxxx…", "retry xxxx…", ""),
        ];
        for (text, command, message) in cases {
            let e = JournalEntry::from_audit(&audit(text)).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((e.command.as_str(), e.message.as_str()), (command, message));
            assert_eq!(e.cli, None, "{text}");
            assert_eq!(e.what(), command);
        }
        let mut item = audit("created Item 9");
        item.kind = "item".into();
        assert_eq!(JournalEntry::from_audit(&item), None);
    }

    #[test]
    fn entries_round_trip_through_json_and_times_print_in_utc() {
        let e = JournalEntry::from_audit(&audit("pause catalog: paused catalog pipeline"));
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["result"], "done");
        assert_eq!(json["cli"], "syncctl ctl pause catalog");
        assert_eq!(
            serde_json::from_value::<Option<JournalEntry>>(json).ok(),
            Some(e)
        );
        assert_eq!(utc_time(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
    }
}
