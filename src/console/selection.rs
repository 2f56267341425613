//! A selection in a live list, by identity. The DIAN queue and the alerts reorder
//! under the operator (a new invoice arrives on top, an alert is re-sorted), so the
//! console remembers *which* item was chosen — its invoice's Stripe id, its alert id —
//! never its row. When the chosen item leaves the view (validated out of a filter,
//! resolved) the selection says so and keys act on nothing until the operator picks
//! another. A leaf: ids in, rows out; it knows no screen.

/// A move of the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Up(usize),
    Down(usize),
    First,
    Last,
}

/// The chosen item of one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The chosen item's id (`None`: nothing chosen yet — the first row, once there
    /// is one, which [`Selection::follow`] then pins).
    key: Option<String>,
    /// The row the chosen item was last seen at: where a move starts from once it
    /// has left the view.
    row: usize,
}

impl Selection {
    /// The chosen item's id, in view or not.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The selected row among `ids` (the view, in order): the chosen item's, or the
    /// first when nothing is chosen yet; `None` when the chosen item has left the view
    /// or the view is empty.
    pub fn row_in(&self, ids: &[impl AsRef<str>]) -> Option<usize> {
        match &self.key {
            Some(key) => ids.iter().position(|id| id.as_ref() == key),
            None => (!ids.is_empty()).then_some(0),
        }
    }

    /// The row the selection stands at for scrolling: the selected one, or where the
    /// chosen item was before it left.
    pub fn anchor(&self, ids: &[impl AsRef<str>]) -> usize {
        self.row_in(ids)
            .unwrap_or(self.row)
            .min(ids.len().saturating_sub(1))
    }

    /// The chosen item's id when it is no longer among `ids`.
    pub fn gone(&self, ids: &[impl AsRef<str>]) -> Option<&str> {
        self.key()
            .filter(|key| !ids.iter().any(|id| id.as_ref() == *key))
    }

    /// Pins the first row when nothing is chosen yet, and remembers the chosen item's
    /// row. Called after every message, so what a screen draws as selected is the
    /// item its keys act on, however the list moves next.
    pub fn follow(&mut self, ids: &[impl AsRef<str>]) {
        if let Some(row) = self.row_in(ids) {
            self.row = row;
            if self.key.is_none() {
                self.key = Some(ids[row].as_ref().to_owned());
            }
        }
    }

    /// Moves from the chosen item's row or, once it has left, from the row it was at
    /// (going down, the item that took its place comes first).
    pub fn step(&mut self, ids: &[impl AsRef<str>], step: Step) {
        let Some(last) = ids.len().checked_sub(1) else {
            return;
        };
        let row = match (self.row_in(ids), step) {
            (_, Step::First) => 0,
            (_, Step::Last) => last,
            (Some(at), Step::Up(n)) => at.saturating_sub(n),
            (Some(at), Step::Down(n)) => at.saturating_add(n).min(last),
            (None, Step::Up(n)) => self.row.min(ids.len()).saturating_sub(n),
            (None, Step::Down(n)) => self.row.saturating_add(n - 1).min(last),
        };
        self.row = row;
        self.key = Some(ids[row].as_ref().to_owned());
    }

    /// Forgets the chosen item: the operator changed the view (a filter, a search),
    /// so its first row is selected.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_item_stays_chosen_as_the_list_moves() {
        let mut s = Selection::default();
        s.follow(&["b", "a"]);
        assert_eq!(s.key(), Some("b"), "the first row is pinned");
        s.step(&["b", "a"], Step::Down(1));
        assert_eq!(s.key(), Some("a"));
        // A new item on top: still `a`, now on the third row.
        assert_eq!(s.row_in(&["c", "b", "a"]), Some(2));
        s.follow(&["c", "b", "a"]);
        // `a` leaves: nothing is selected, and it says which left.
        assert_eq!(s.row_in(&["c", "b"]), None);
        assert_eq!(s.gone(&["c", "b"]), Some("a"));
        // Down picks the row it was at (clamped), up the one above.
        let mut down = s.clone();
        down.step(&["c", "b", "d", "e"], Step::Down(1));
        assert_eq!(down.key(), Some("d"));
        s.step(&["c", "b", "d"], Step::Up(1));
        assert_eq!(s.key(), Some("b"));
        s.reset();
        assert_eq!(s.row_in(&["x"]), Some(0));
    }
}
