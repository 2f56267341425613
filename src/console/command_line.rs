//! The `:` command line's editor, as data: the text and its cursor, Tab completion
//! cycling through candidates, the session's history, and the few words the console
//! answers itself (`help`, `quit`, a screen's name). Pure: a key goes in, what the
//! operator asked for comes out ([`LineEvent`]); it never parses a command, sends,
//! or draws — `update` does the first two, `chrome::command_line` the last.
//!
//! Keys: printable characters type (`?` and `q` included: no screen shortcut fires
//! while the line is open), Left/Right/Home/End (and Ctrl-A/Ctrl-E) move, Backspace
//! and Delete erase (Backspace on an empty line closes it), Ctrl-U erases to the
//! start and Ctrl-W the word before the cursor, Tab and Shift-Tab complete and cycle,
//! Up and Down walk the history, Enter submits, Esc cancels.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::tab::Tab;

/// How many lines the history keeps (the oldest go first).
pub const HISTORY_LIMIT: usize = 100;

/// The longest line one may type, in characters (a command is far shorter).
const MAX_CHARS: usize = 1000;

/// What a key did to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// The text, the cursor or the candidates changed (or nothing did): keep editing.
    Edited,
    /// Enter: this text is to be run; the line stays as it is until the caller closes it.
    Submit(String),
    /// Esc (or Backspace on an empty line): close the line, run nothing.
    Cancel,
}

/// Tab completion in progress: the candidates for the text before the cursor, which
/// one is shown, and the text after the cursor (kept as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cycle {
    candidates: Vec<String>,
    index: usize,
    /// Bytes of each candidate before the word being completed (shared by all).
    head: usize,
    suffix: String,
}

/// The open `:` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    text: String,
    /// In characters from the start.
    cursor: usize,
    cycle: Option<Cycle>,
    /// While walking the history: how far back (0 = newest), and the text typed
    /// before the walk began (Down past the newest brings it back).
    browse: Option<(usize, String)>,
    /// What is wrong with the text, after Enter (a parse error naming the word);
    /// cleared when the text changes.
    pub error: Option<String>,
    /// Tab found nothing to complete.
    no_completion: bool,
}

impl CommandLine {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor, in characters from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// While cycling through completions: each candidate's completed word, and which
    /// one the line holds.
    pub fn candidates(&self) -> Option<(Vec<&str>, usize)> {
        let c = self.cycle.as_ref()?;
        let words = c
            .candidates
            .iter()
            .map(|s| s.get(c.head..).unwrap_or(s).trim_end())
            .collect();
        Some((words, c.index))
    }

    /// Whether the last Tab found nothing to complete.
    pub fn found_no_completion(&self) -> bool {
        self.no_completion
    }

    /// Takes one key. `history` is the session's, for Up and Down; `complete` gives
    /// the whole lines the text before the cursor may become, for Tab.
    pub fn key(
        &mut self,
        key: KeyEvent,
        history: &History,
        complete: impl FnOnce(&str) -> Vec<String>,
    ) -> LineEvent {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        self.no_completion = false;
        match key.code {
            KeyCode::Tab => return self.complete(complete, true),
            KeyCode::BackTab => return self.complete(complete, false),
            _ => self.cycle = None,
        }
        match key.code {
            KeyCode::Esc => return LineEvent::Cancel,
            KeyCode::Enter => return LineEvent::Submit(self.text.clone()),
            KeyCode::Backspace if self.text.is_empty() => return LineEvent::Cancel,
            KeyCode::Up => self.walk(history, true),
            KeyCode::Down => self.walk(history, false),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.chars()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.chars(),
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.chars(),
            KeyCode::Char('u') if ctrl => self.erase(0, self.cursor),
            KeyCode::Char('w') if ctrl => self.erase(self.word_start(), self.cursor),
            KeyCode::Backspace if self.cursor > 0 => self.erase(self.cursor - 1, self.cursor),
            KeyCode::Delete if self.cursor < self.chars() => {
                self.erase(self.cursor, self.cursor + 1);
            }
            KeyCode::Char(c)
                if !ctrl
                    && !key.modifiers.contains(KeyModifiers::ALT)
                    && !c.is_control()
                    && self.chars() < MAX_CHARS =>
            {
                let at = self.byte(self.cursor);
                self.text.insert(at, c);
                self.cursor += 1;
                self.edited();
            }
            _ => {}
        }
        LineEvent::Edited
    }

    fn chars(&self) -> usize {
        self.text.chars().count()
    }

    /// The byte offset of character `i` (the end past the last).
    fn byte(&self, i: usize) -> usize {
        self.text
            .char_indices()
            .nth(i)
            .map_or(self.text.len(), |(b, _)| b)
    }

    /// The text changed: an old error no longer describes it, and a history entry
    /// being edited becomes the new draft.
    fn edited(&mut self) {
        self.error = None;
        self.browse = None;
    }

    fn set_text(&mut self, text: String) {
        self.text = text;
        self.cursor = self.chars();
    }

    /// Erases characters `from..to`; the cursor goes to `from`.
    fn erase(&mut self, from: usize, to: usize) {
        let (a, b) = (self.byte(from), self.byte(to));
        self.text.replace_range(a..b, "");
        self.cursor = from;
        self.edited();
    }

    /// Where the word before the cursor starts (spaces before the cursor included in
    /// the word, as in a shell).
    fn word_start(&self) -> usize {
        let before: Vec<char> = self.text.chars().take(self.cursor).collect();
        let mut i = before.len();
        while i > 0 && before[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !before[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// Up (`back`) or Down through the history.
    fn walk(&mut self, history: &History, back: bool) {
        let next = match (&self.browse, back) {
            (None, true) => Some(0),
            (None, false) => return,
            (Some((i, _)), true) => Some((i + 1).min(history.len().saturating_sub(1))),
            (Some((0, _)), false) => None,
            (Some((i, _)), false) => Some(i - 1),
        };
        match next {
            Some(i) => {
                let Some(entry) = history.back(i) else { return };
                let draft = match self.browse.take() {
                    Some((_, draft)) => draft,
                    None => self.text.clone(),
                };
                self.set_text(entry.to_owned());
                self.browse = Some((i, draft));
            }
            None => {
                if let Some((_, draft)) = self.browse.take() {
                    self.set_text(draft);
                }
            }
        }
        self.error = None;
    }

    /// Tab (`forward`) or Shift-Tab: the next (previous) candidate while cycling;
    /// otherwise the candidates for the text before the cursor, the first (last) put
    /// in the line — alone, it ends the completion; several, they are cycled through.
    fn complete(&mut self, complete: impl FnOnce(&str) -> Vec<String>, forward: bool) -> LineEvent {
        if let Some(c) = &mut self.cycle {
            let n = c.candidates.len();
            c.index = if forward {
                (c.index + 1) % n
            } else {
                (c.index + n - 1) % n
            };
            let line = format!("{}{}", c.candidates[c.index], c.suffix);
            let cursor = c.candidates[c.index].chars().count();
            self.text = line;
            self.cursor = cursor;
            return LineEvent::Edited;
        }
        let at = self.byte(self.cursor);
        let (before, suffix) = self.text.split_at(at);
        let candidates = complete(before);
        let head = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let index = if forward {
            0
        } else {
            candidates.len().saturating_sub(1)
        };
        let Some(chosen) = candidates.get(index) else {
            self.no_completion = true;
            return LineEvent::Edited;
        };
        let cursor = chosen.chars().count();
        let suffix = suffix.to_owned();
        self.text = format!("{chosen}{suffix}");
        self.cursor = cursor;
        self.edited();
        if candidates.len() > 1 {
            self.cycle = Some(Cycle {
                candidates,
                index,
                head,
                suffix,
            });
        }
        LineEvent::Edited
    }

    /// The first character to show so that the cursor fits in `width` columns (one
    /// column per character): 0 while it fits, else the cursor at the right edge.
    pub fn scroll(&self, width: usize) -> usize {
        let width = width.max(1);
        // The cursor needs a column of its own past the last character.
        (self.cursor + 1).saturating_sub(width)
    }
}

/// The lines run from the `:` line this session, oldest first: a line the same as the
/// one before is kept once, and only the last [`HISTORY_LIMIT`] are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    entries: VecDeque<String>,
}

impl History {
    /// Keeps `line` (trimmed; an empty one is not kept).
    pub fn push(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() || self.entries.back().is_some_and(|last| last == line) {
            return;
        }
        self.entries.push_back(line.to_owned());
        while self.entries.len() > HISTORY_LIMIT {
            self.entries.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `i` back from the newest (0 = the newest).
    pub fn back(&self, i: usize) -> Option<&str> {
        let n = self.entries.len();
        i.checked_add(1)
            .and_then(|k| n.checked_sub(k))
            .and_then(|j| self.entries.get(j))
            .map(String::as_str)
    }
}

/// A word the console answers itself on the `:` line: reads, never sent to the
/// engine (so a read-only console takes them too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `help`: the commands the line takes.
    Help,
    /// `quit` (or `q`): as the `q` key.
    Quit,
    /// `who`: the consoles attached to the engine.
    Who,
    /// `chain KEY`: the entity chain of a product, Item, invoice, DIAN number, CUFE or
    /// Alegra document.
    Chain(String),
    /// A screen's name (`dian`, `events`…): go there.
    Screen(Tab),
}

/// `help`, `quit`, `who`, `chain KEY` or a screen's name, in any case.
pub fn local(line: &str) -> Option<Local> {
    let word = line.trim();
    if word.eq_ignore_ascii_case("help") {
        return Some(Local::Help);
    }
    if word.eq_ignore_ascii_case("quit") || word.eq_ignore_ascii_case("q") {
        return Some(Local::Quit);
    }
    if word.eq_ignore_ascii_case("who") {
        return Some(Local::Who);
    }
    let (verb, rest) = word.split_once(char::is_whitespace).unwrap_or((word, ""));
    if verb.eq_ignore_ascii_case("chain") {
        // Without a key: said on the line by `update` (what the key may be).
        return Some(Local::Chain(rest.trim().to_owned()));
    }
    Tab::ALL
        .iter()
        .find(|t| t.title().eq_ignore_ascii_case(word))
        .map(|t| Local::Screen(*t))
}

/// The console's own words, for completion and help: `help`, `quit`, `who`, then the
/// screens' names in lower case.
pub fn local_words() -> Vec<String> {
    ["help", "quit", "who", "chain"]
        .into_iter()
        .map(str::to_owned)
        .chain(Tab::ALL.iter().map(|t| t.title().to_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: KeyCode) -> KeyEvent {
        KeyEvent::from(code)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    /// A line holding `text`, the cursor at its end.
    fn with_text(text: &str) -> CommandLine {
        let mut line = CommandLine::new();
        line.set_text(text.to_owned());
        line
    }

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    /// Types `s` into `line`.
    fn typed(line: &mut CommandLine, s: &str) {
        for c in s.chars() {
            line.key(k(KeyCode::Char(c)), &History::default(), none);
        }
    }

    fn press(line: &mut CommandLine, key: KeyEvent) -> LineEvent {
        line.key(key, &History::default(), none)
    }

    #[test]
    fn editing_moves_and_erases_by_character_and_word() {
        let mut l = CommandLine::new();
        typed(&mut l, "pause catalog?");
        assert_eq!((l.text(), l.cursor()), ("pause catalog?", 14));
        press(&mut l, k(KeyCode::Backspace));
        press(&mut l, k(KeyCode::Home));
        press(&mut l, k(KeyCode::Delete));
        typed(&mut l, "P");
        assert_eq!((l.text(), l.cursor()), ("Pause catalog", 1));
        press(&mut l, k(KeyCode::End));
        press(&mut l, k(KeyCode::Left));
        press(&mut l, k(KeyCode::Left));
        typed(&mut l, "é");
        assert_eq!((l.text(), l.cursor()), ("Pause cataléog", 12));
        press(&mut l, k(KeyCode::Right));
        press(&mut l, k(KeyCode::Right));
        press(&mut l, k(KeyCode::Right));
        assert_eq!(l.cursor(), 14);
        typed(&mut l, "  ");
        press(&mut l, ctrl('w'));
        assert_eq!((l.text(), l.cursor()), ("Pause ", 6));
        press(&mut l, k(KeyCode::Left));
        press(&mut l, ctrl('u'));
        assert_eq!((l.text(), l.cursor()), (" ", 0));
        press(&mut l, ctrl('e'));
        assert_eq!(l.cursor(), 1);
        // Ctrl with a letter never types it.
        press(&mut l, ctrl('x'));
        assert_eq!(l.text(), " ");
    }

    #[test]
    fn enter_submits_esc_and_backspace_on_empty_cancel() {
        let mut l = with_text("retry X");
        assert_eq!(
            press(&mut l, k(KeyCode::Enter)),
            LineEvent::Submit("retry X".into())
        );
        assert_eq!(press(&mut l, k(KeyCode::Esc)), LineEvent::Cancel);
        let mut empty = CommandLine::new();
        assert_eq!(press(&mut empty, k(KeyCode::Backspace)), LineEvent::Cancel);
    }

    #[test]
    fn an_error_lasts_until_the_text_changes() {
        let mut l = with_text("pause x");
        l.error = Some("pipeline: expected catalog or compliance, got \"x\"".into());
        press(&mut l, k(KeyCode::Left));
        assert!(l.error.is_some(), "moving to the word keeps the error");
        press(&mut l, k(KeyCode::Backspace));
        assert!(l.error.is_none());
    }

    #[test]
    fn tab_completes_one_candidate_and_cycles_through_several() {
        let complete = |s: &str| crate::protocol::complete(s);
        let h = History::default();
        let mut l = with_text("pau");
        l.key(k(KeyCode::Tab), &h, complete);
        assert_eq!(l.text(), "pause ");
        assert!(l.candidates().is_none());
        typed(&mut l, "c");
        l.key(k(KeyCode::Tab), &h, complete);
        assert_eq!(l.text(), "pause catalog");
        assert_eq!(l.candidates(), Some((vec!["catalog", "compliance"], 0)));
        l.key(k(KeyCode::Tab), &h, complete);
        assert_eq!(l.text(), "pause compliance");
        l.key(k(KeyCode::Tab), &h, complete);
        assert_eq!(l.text(), "pause catalog");
        l.key(k(KeyCode::BackTab), &h, complete);
        assert_eq!((l.text(), l.cursor()), ("pause compliance", 16));
        // Any other key ends the cycle, keeping the choice.
        typed(&mut l, "!");
        assert_eq!(l.text(), "pause compliance!");
        assert!(l.candidates().is_none());
    }

    #[test]
    fn tab_completes_before_the_cursor_and_keeps_the_rest() {
        let h = History::default();
        let mut l = with_text("breaker q force-open");
        for _ in 0.." force-open".len() {
            press(&mut l, k(KeyCode::Left));
        }
        l.key(k(KeyCode::Tab), &h, crate::protocol::complete);
        assert_eq!(l.text(), "breaker quickbooks  force-open");
        assert_eq!(l.cursor(), "breaker quickbooks ".len());
        let mut nothing = with_text("xyz");
        nothing.key(k(KeyCode::Tab), &h, crate::protocol::complete);
        assert_eq!(nothing.text(), "xyz");
        assert!(nothing.found_no_completion());
        typed(&mut nothing, "a");
        assert!(!nothing.found_no_completion());
    }

    #[test]
    fn history_walks_back_and_forth_and_restores_the_draft() {
        let mut h = History::default();
        for line in [
            "pause catalog",
            "resume catalog",
            "resume catalog",
            " ",
            "ack *",
        ] {
            h.push(line);
        }
        assert_eq!(h.len(), 3, "consecutive repeats and blanks are kept once");
        let mut l = with_text("ret");
        let key = |l: &mut CommandLine, code| {
            l.key(k(code), &h, none);
            l.text().to_owned()
        };
        assert_eq!(key(&mut l, KeyCode::Up), "ack *");
        assert_eq!(key(&mut l, KeyCode::Up), "resume catalog");
        assert_eq!(key(&mut l, KeyCode::Up), "pause catalog");
        assert_eq!(
            key(&mut l, KeyCode::Up),
            "pause catalog",
            "stops at the oldest"
        );
        assert_eq!(key(&mut l, KeyCode::Down), "resume catalog");
        assert_eq!(key(&mut l, KeyCode::Down), "ack *");
        assert_eq!(key(&mut l, KeyCode::Down), "ret", "the draft comes back");
        assert_eq!(key(&mut l, KeyCode::Down), "ret");
        assert_eq!(l.cursor(), 3);
        // An empty history leaves the line alone.
        let mut fresh = with_text("x");
        press(&mut fresh, k(KeyCode::Up));
        assert_eq!(fresh.text(), "x");
    }

    #[test]
    fn history_keeps_the_last_hundred() {
        let mut h = History::default();
        for i in 0..HISTORY_LIMIT + 20 {
            h.push(&format!("retry {i}"));
        }
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h.back(0), Some("retry 119"));
        assert_eq!(h.back(HISTORY_LIMIT - 1), Some("retry 20"));
        assert_eq!(h.back(HISTORY_LIMIT), None);
    }

    #[test]
    fn a_long_line_scrolls_to_keep_the_cursor_in_view() {
        let mut l = with_text(&"x".repeat(100));
        assert_eq!(l.scroll(40), 100 + 1 - 40);
        press(&mut l, k(KeyCode::Home));
        assert_eq!(l.scroll(40), 0);
        assert_eq!(CommandLine::new().scroll(0), 0);
    }

    #[test]
    fn the_consoles_own_words() {
        assert_eq!(local(" HELP "), Some(Local::Help));
        assert_eq!(local("q"), Some(Local::Quit));
        assert_eq!(local("dian"), Some(Local::Screen(Tab::Dian)));
        assert_eq!(local("pause catalog"), None);
        assert_eq!(
            local("Chain  SETP990000012 "),
            Some(Local::Chain("SETP990000012".into()))
        );
        assert_eq!(local("chain"), Some(Local::Chain(String::new())));
        let words = local_words();
        assert!(words.iter().all(|w| local(w).is_some()), "{words:?}");
    }
}
