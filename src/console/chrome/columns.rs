//! Table columns that fit the width they get without ever showing a wrong figure.
//!
//! A ratatui table squeezes every column when the row is too wide, and a squeezed
//! right-aligned number loses its leading digits (`969 840,00` for `3 969 840,00`).
//! Here each column says what it wants, how far it may shrink and whether it may go:
//! text columns shrink first (lowest rank first), then droppable columns go (lowest
//! rank first); a number column is as wide as its widest value and never shrinks; a
//! key column shrinks only to a width that still tells its rows apart. What is left
//! over widens the flexible column.
//!
//! It never draws: a screen asks [`fit`] for widths, then builds its header, rows and
//! constraints from the columns that were kept.

use ratatui::layout::Constraint;
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table};

/// One column's needs.
#[derive(Debug, Clone)]
pub struct Column {
    pub header: String,
    /// The width it takes when there is room.
    pub want: u16,
    /// The narrowest it may be (== `want` for numbers: they never shrink).
    pub min: u16,
    /// Lower goes first: shrinking, then dropping.
    pub rank: u8,
    /// Whether it may be left out when shrinking is not enough.
    pub droppable: bool,
    /// Takes the width left over.
    pub flex: bool,
    /// The column rows are told apart by: it shrinks (to `min`) only once every
    /// droppable column has gone.
    pub key: bool,
    /// Right-aligned (numbers).
    pub right: bool,
    /// Sized from its cells by [`table`] (and then never shrunk).
    pub measured: bool,
}

impl Column {
    /// A text column: wants `want`, may shrink to `min`.
    pub fn text(header: &str, want: u16, min: u16, rank: u8) -> Self {
        Self {
            header: header.to_owned(),
            want: want.max(min),
            min,
            rank,
            droppable: false,
            flex: false,
            key: false,
            right: false,
            measured: false,
        }
    }

    /// A number column as wide as the widest of `values` (and its header) plus a
    /// cell of gap, so two number columns never read as one: never shrunk,
    /// right-aligned.
    pub fn number<'a>(header: &str, values: impl IntoIterator<Item = &'a str>, rank: u8) -> Self {
        let w = values
            .into_iter()
            .map(width)
            .chain([width(header)])
            .max()
            .unwrap_or(0)
            + 1;
        Self {
            header: header.to_owned(),
            want: w,
            min: w,
            rank,
            droppable: false,
            flex: false,
            key: false,
            right: true,
            measured: false,
        }
    }

    /// A number column [`table`] sizes from its cells: never shrunk, right-aligned.
    pub fn num(header: &str, rank: u8) -> Self {
        Self {
            measured: true,
            ..Self::number(header, [], rank)
        }
    }

    /// A text column [`table`] sizes from its cells and never shrinks: an id that
    /// tells rows apart.
    pub fn whole(header: &str, rank: u8) -> Self {
        Self {
            measured: true,
            ..Self::text(header, 0, 0, rank)
        }
    }

    pub fn droppable(mut self) -> Self {
        self.droppable = true;
        self
    }

    /// A key column (see the `key` field): wants `want`, may shrink to `min`, last.
    pub fn key(header: &str, want: u16, min: u16) -> Self {
        Self {
            key: true,
            ..Self::text(header, want, min, u8::MAX)
        }
    }

    pub fn flex(mut self) -> Self {
        self.flex = true;
        self
    }

    /// The header cell, aligned as the column.
    pub fn header_cell(&self) -> Cell<'static> {
        self.cell(self.header.clone())
    }

    /// A cell of this column, aligned as the column.
    pub fn cell<'a>(&self, text: impl Into<Line<'a>>) -> Cell<'a> {
        let line: Line<'a> = text.into();
        Cell::from(if self.right {
            line.right_aligned()
        } else {
            line
        })
    }
}

/// Display width of `s` in terminal cells.
pub fn width(s: &str) -> u16 {
    u16::try_from(unicode_width::UnicodeWidthStr::width(s)).unwrap_or(u16::MAX)
}

/// The widths of the columns that fit in `area_width` with `spacing` between columns:
/// `None` for a column left out.
pub fn fit(cols: &[Column], area_width: u16, spacing: u16) -> Vec<Option<u16>> {
    let mut widths: Vec<Option<u16>> = cols.iter().map(|c| Some(c.want)).collect();
    let total = |w: &[Option<u16>]| -> u32 {
        let kept: Vec<u16> = w.iter().flatten().copied().collect();
        kept.iter().map(|&x| u32::from(x)).sum::<u32>()
            + u32::from(spacing) * kept.len().saturating_sub(1) as u32
    };
    let mut order: Vec<usize> = (0..cols.len()).collect();
    order.sort_by_key(|&i| (cols[i].rank, i));
    let shrink = |widths: &mut Vec<Option<u16>>, keys: bool| {
        for &i in &order {
            let over = total(widths).saturating_sub(u32::from(area_width));
            if over == 0 {
                break;
            }
            if cols[i].key != keys {
                continue;
            }
            if let Some(w) = widths[i] {
                let room = u32::from(w - cols[i].min.min(w));
                widths[i] = Some(w - over.min(room) as u16);
            }
        }
    };
    // Shrink text columns, lowest rank first.
    shrink(&mut widths, false);
    // Then leave out droppable columns, lowest rank first; columns of one rank go
    // together (a pair that only makes sense side by side).
    for &i in &order {
        if total(&widths) <= u32::from(area_width) {
            break;
        }
        if cols[i].droppable {
            for (j, c) in cols.iter().enumerate() {
                if c.droppable && c.rank == cols[i].rank {
                    widths[j] = None;
                }
            }
        }
    }
    // Only then the key columns.
    shrink(&mut widths, true);
    // Dropping a wide column may have made room for a narrower one dropped before
    // it: put back what fits, highest rank first.
    for &i in order.iter().rev() {
        if widths[i].is_none() {
            let rank: Vec<usize> = (0..cols.len())
                .filter(|&j| widths[j].is_none() && cols[j].rank == cols[i].rank)
                .collect();
            for &j in &rank {
                widths[j] = Some(cols[j].min);
            }
            if total(&widths) > u32::from(area_width) {
                for &j in &rank {
                    widths[j] = None;
                }
            }
        }
    }
    // A dropped column may have made room for a shrunk one: give it back.
    for &i in order.iter().rev() {
        let spare = u32::from(area_width).saturating_sub(total(&widths));
        if spare == 0 {
            break;
        }
        if let Some(w) = widths[i] {
            let grow = u32::from(cols[i].want.saturating_sub(w)).min(spare);
            widths[i] = Some(w + grow as u16);
        }
    }
    // What is left widens the flexible column.
    let spare = u32::from(area_width).saturating_sub(total(&widths));
    if let Some(i) = cols.iter().position(|c| c.flex)
        && let Some(w) = widths[i]
    {
        widths[i] = Some(w.saturating_add(spare as u16));
    }
    widths
}

/// The constraints of the kept columns.
pub fn constraints(widths: &[Option<u16>]) -> Vec<Constraint> {
    widths
        .iter()
        .flatten()
        .map(|&w| Constraint::Length(w))
        .collect()
}

/// The kept items, in order.
pub fn kept<T>(widths: &[Option<u16>], items: impl IntoIterator<Item = T>) -> Vec<T> {
    widths
        .iter()
        .zip(items)
        .filter_map(|(w, x)| w.map(|_| x))
        .collect()
}

/// How many columns were left out, as a title note (empty when none was).
pub fn hidden_note(widths: &[Option<u16>]) -> String {
    match widths.iter().filter(|w| w.is_none()).count() {
        0 => String::new(),
        1 => " · 1 column hidden".into(),
        n => format!(" · {n} columns hidden"),
    }
}

/// A table of `rows` (each its cells' lines, in column order, and its style) whose
/// columns fit `inner_width`: measured columns sized from their cells first. Returns
/// the table (no block yet) and the title note saying what was left out.
pub fn table<'a>(
    mut cols: Vec<Column>,
    rows: Vec<(Vec<Line<'a>>, Style)>,
    inner_width: u16,
    header_style: Style,
) -> (Table<'a>, String) {
    for (i, c) in cols.iter_mut().enumerate() {
        if c.measured {
            let w = rows
                .iter()
                .filter_map(|(cells, _)| cells.get(i))
                .map(|l| u16::try_from(l.width()).unwrap_or(u16::MAX))
                .chain([width(&c.header)])
                .max()
                .unwrap_or(0)
                + u16::from(c.right);
            c.want = w;
            c.min = w;
        }
    }
    // Two cells between columns where every column fits whole with them (a number
    // right-aligned against a text column reads as one otherwise); one where not.
    let roomy = fit(&cols, inner_width, 2);
    let spacing = if roomy
        .iter()
        .zip(&cols)
        .all(|(w, c)| w.is_some_and(|w| w >= c.want))
    {
        2
    } else {
        1
    };
    let widths = if spacing == 2 {
        roomy
    } else {
        fit(&cols, inner_width, 1)
    };
    // A column with nothing in it is no loss.
    let lost: Vec<Option<u16>> = widths
        .iter()
        .zip(&cols)
        .map(|(w, c)| {
            if w.is_none() && c.want == 0 {
                Some(0)
            } else {
                *w
            }
        })
        .collect();
    let note = hidden_note(&lost);
    let body: Vec<Row<'a>> = rows
        .into_iter()
        .map(|(cells, style)| {
            Row::new(kept(
                &widths,
                cols.iter().zip(cells).map(|(c, l)| c.cell(l)),
            ))
            .style(style)
        })
        .collect();
    let header = kept(&widths, cols.iter().map(Column::header_cell));
    let table = Table::new(body, constraints(&widths))
        .column_spacing(spacing)
        .header(Row::new(header).style(header_style));
    (table, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_shrink_text_shrinks_then_droppable_columns_go() {
        let cols = [
            Column::text("id", 12, 10, 9),
            Column::text("name", 20, 6, 1).flex(),
            Column::number("total", ["3 969 840,0"], 9),
            Column::text("note", 10, 10, 0).droppable(),
        ];
        // Room for all at their width: the flexible column takes the rest.
        assert_eq!(fit(&cols, 60, 1), [Some(12), Some(23), Some(12), Some(10)]);
        // The name shrinks first.
        assert_eq!(fit(&cols, 50, 1), [Some(12), Some(13), Some(12), Some(10)]);
        // Then the note goes, and the name gets its room back.
        assert_eq!(fit(&cols, 38, 1), [Some(12), Some(12), Some(12), None]);
        // The total keeps its width whatever happens.
        assert_eq!(fit(&cols, 30, 1)[2], Some(12));
    }
}
