//! How common each trigram is in the audit trail (a sample of its entries, spread over
//! it), so that a text search asks the trigram index only for the rare part of a word.
//!
//! FTS5 reads a phrase through every one of its trigrams' lists. A word like
//! `prod_299990` is mostly trigrams nearly every entry holds (`pro`, `rod`, `od_`, `d_2`):
//! on a trail of a million entries its phrase took 1.9 ms where `"299990"` alone took
//! 0.3 ms, and the gap grows with the trail. So the index is asked for the longest run of
//! a word's rare trigrams, and the whole word is checked on the few rows it finds (the
//! way the rows not yet indexed are checked). A word with no such run of two trigrams
//! or more is left whole, as before; with none in any word the query is unchanged.
//!
//! The sample only steers the read: a part that is rare in the sample but common in
//! older history costs time, never a wrong answer, since every word is checked whole.

use std::collections::HashMap;

/// Entries sampled, spread evenly over the trail.
pub const SAMPLE_ROWS: usize = 2000;
/// Fewer entries than this sampled say too little: no word is cut (a trail this short
/// is quick to search whole anyway).
const SAMPLE_MIN: u32 = 200;
/// A trigram held by more than one sampled entry in this many is common.
const COMMON_ONE_IN: u32 = 64;

/// Trigram → how many sampled entries hold it (text lower-cased as the search is).
#[derive(Debug, Default)]
pub(super) struct TextSample {
    rows: u32,
    held_by: HashMap<u64, u32>,
}

/// Three characters in one key (21 bits each).
fn trigram(c: &[char]) -> u64 {
    (u64::from(c[0]) << 42) | (u64::from(c[1]) << 21) | u64::from(c[2])
}

impl TextSample {
    /// Counts the trigrams of each entry's text (as the console shows it, lower-cased),
    /// once per entry.
    pub(super) fn of(texts: impl IntoIterator<Item = String>) -> Self {
        let mut s = Self::default();
        let mut seen = Vec::new();
        for text in texts {
            let chars: Vec<char> = text.chars().collect();
            seen.clear();
            seen.extend(chars.windows(3).map(trigram));
            seen.sort_unstable();
            seen.dedup();
            for t in &seen {
                *s.held_by.entry(*t).or_default() += 1;
            }
            s.rows += 1;
        }
        s
    }

    fn held_by(&self, t: u64) -> u32 {
        self.held_by.get(&t).copied().unwrap_or(0)
    }

    /// The part of `word` (lower-cased) the index is asked for: the longest run of two
    /// or more rare trigrams (of two as long, the one whose trigrams the sample holds
    /// least), which is the whole word when all of its trigrams are rare. None when it
    /// has no such run, or when the sample is too small to tell.
    pub(super) fn selective_part(&self, word: &str) -> Option<String> {
        if self.rows < SAMPLE_MIN {
            return None;
        }
        let chars: Vec<char> = word.to_lowercase().chars().collect();
        let held: Vec<u32> = chars.windows(3).map(|c| self.held_by(trigram(c))).collect();
        let rare = |h: u32| h * COMMON_ONE_IN <= self.rows;
        // (trigrams, held in all, start) of the best run so far.
        let mut best: Option<(usize, u32, usize)> = None;
        let mut start = 0;
        while start < held.len() {
            if !rare(held[start]) {
                start += 1;
                continue;
            }
            let end = (start..held.len())
                .find(|&i| !rare(held[i]))
                .unwrap_or(held.len());
            let run = (end - start, held[start..end].iter().sum::<u32>(), start);
            let better = |b: &(usize, u32, usize)| run.0 > b.0 || (run.0 == b.0 && run.1 < b.1);
            if run.0 >= 2 && best.as_ref().is_none_or(better) {
                best = Some(run);
            }
            start = end;
        }
        best.map(|(trigrams, _, start)| chars[start..start + trigrams + 2].iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TextSample {
        // 1,000 entries: every one names a product `prod_2xxxxx` (so `pro`, `rod`,
        // `od_`, `d_2` are common) and says `created`; the digits vary.
        TextSample::of((0..1000).map(|i| {
            format!(
                "item prod_2{:05} engine created Item {} \"Widget\"",
                i * 37,
                i
            )
        }))
    }

    #[test]
    fn a_word_is_cut_to_its_longest_run_of_rare_trigrams() {
        let s = sample();
        // `pro`…`d_2` are in every entry; `_29`… are rarer.
        let part = s.selective_part("PROD_299990").unwrap();
        assert!(
            "prod_299990".contains(&part) && !part.contains("prod"),
            "{part}"
        );
        assert!(part.chars().count() >= 4, "{part}");
        // All trigrams common: not cut (None), the word is searched whole.
        assert_eq!(s.selective_part("created"), None);
        assert_eq!(s.selective_part("prod_2"), None);
        // Nothing of it in the sample: all rare, the word itself.
        assert_eq!(s.selective_part("Zqxv"), Some("zqxv".into()));
        // A single rare trigram is not enough (its list could be long).
        assert_eq!(s.selective_part("prodq"), None);
    }

    #[test]
    fn a_small_sample_cuts_nothing() {
        let s = TextSample::of((0..(SAMPLE_MIN - 1)).map(|i| format!("x{i}")));
        assert_eq!(s.selective_part("zqxv"), None);
    }

    #[test]
    fn characters_beyond_ascii_are_trigrams_too() {
        let s = TextSample::of((0..1000).map(|i| format!("año {i}")));
        assert_eq!(s.selective_part("año"), None, "in every entry");
        assert_eq!(s.selective_part("SUSCRIPCIÓN"), Some("suscripción".into()));
    }
}
