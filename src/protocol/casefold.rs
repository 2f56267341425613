//! Text folded as the audit trail's text index folds it (SQLite's FTS5 trigram tokenizer
//! with its default `case_sensitive 0`): a code point at a time through SQLite's own
//! table, from Unicode's CaseFolding.txt as SQLite ships it. The store compares the
//! entries it has not indexed yet with this fold, and a console its own entries, so a
//! word finds the same entries before and after they are indexed, and in either place.
//! (Rust's `to_lowercase` is not it: it lowers `Σ` to `ς` at a word's end, which the
//! index folds to `σ`; it lowers `İ` into two characters; its tables are newer than
//! SQLite's, so scripts such as Cherokee fold in Rust and not in the index.)

/// One code point folded (see the module's note).
pub fn fold_char(c: char) -> char {
    let code = c as u32;
    if code < 128 {
        return c.to_ascii_lowercase();
    }
    // (SQLite reads the two non-characters U+FFFE and U+FFFF as U+FFFD.)
    if code == 0xFFFE || code == 0xFFFF {
        return '\u{FFFD}';
    }
    let folded = if code < 65536 {
        // The last rule starting at or before `code`.
        let i = ENTRIES.partition_point(|&(first, _, _)| u32::from(first) <= code);
        match i.checked_sub(1).map(|i| ENTRIES[i]) {
            Some((first, flags, range))
                if code < u32::from(first) + u32::from(range)
                    && (u32::from(flags) & 1 & (u32::from(first) ^ code)) == 0 =>
            {
                (code + u32::from(OFFSETS[usize::from(flags >> 1)])) & 0xFFFF
            }
            _ => code,
        }
    } else if (66560..66600).contains(&code) {
        // Deseret capitals.
        code + 40
    } else {
        code
    };
    char::from_u32(folded).unwrap_or(c)
}

/// Text folded a code point at a time (see the module's note), without NULs (the index
/// skips them).
pub fn fold(text: &str) -> String {
    if text.is_ascii() && !text.contains('\0') {
        return text.to_ascii_lowercase();
    }
    // (Sized once: a collect grew it, twice as slow over a million entries.)
    let mut folded = String::with_capacity(text.len());
    for c in text.chars().filter(|&c| c != '\0') {
        folded.push(fold_char(c));
    }
    folded
}

// Copied from the bundled SQLite (libsqlite3-sys 0.40.0, sqlite3.c: the aEntry[] and
// aiOff[] of sqlite3Fts5UnicodeFold). A SQLite with another table fails the store's test
// `fold_is_the_text_indexs_fold_for_every_code_point`: copy its tables here again.

/// (first code point, flags, how many): the codepoints folded, see [`fold_char`].
const ENTRIES: [(u16, u8, u8); 163] = [
    (65, 14, 26),
    (181, 64, 1),
    (192, 14, 23),
    (216, 14, 7),
    (256, 1, 48),
    (306, 1, 6),
    (313, 1, 16),
    (330, 1, 46),
    (376, 116, 1),
    (377, 1, 6),
    (383, 104, 1),
    (385, 50, 1),
    (386, 1, 4),
    (390, 44, 1),
    (391, 0, 1),
    (393, 42, 2),
    (395, 0, 1),
    (398, 32, 1),
    (399, 38, 1),
    (400, 40, 1),
    (401, 0, 1),
    (403, 42, 1),
    (404, 46, 1),
    (406, 52, 1),
    (407, 48, 1),
    (408, 0, 1),
    (412, 52, 1),
    (413, 54, 1),
    (415, 56, 1),
    (416, 1, 6),
    (422, 60, 1),
    (423, 0, 1),
    (425, 60, 1),
    (428, 0, 1),
    (430, 60, 1),
    (431, 0, 1),
    (433, 58, 2),
    (435, 1, 4),
    (439, 62, 1),
    (440, 0, 1),
    (444, 0, 1),
    (452, 2, 1),
    (453, 0, 1),
    (455, 2, 1),
    (456, 0, 1),
    (458, 2, 1),
    (459, 1, 18),
    (478, 1, 18),
    (497, 2, 1),
    (498, 1, 4),
    (502, 122, 1),
    (503, 134, 1),
    (504, 1, 40),
    (544, 110, 1),
    (546, 1, 18),
    (570, 70, 1),
    (571, 0, 1),
    (573, 108, 1),
    (574, 68, 1),
    (577, 0, 1),
    (579, 106, 1),
    (580, 28, 1),
    (581, 30, 1),
    (582, 1, 10),
    (837, 36, 1),
    (880, 1, 4),
    (886, 0, 1),
    (902, 18, 1),
    (904, 16, 3),
    (908, 26, 1),
    (910, 24, 2),
    (913, 14, 17),
    (931, 14, 9),
    (962, 0, 1),
    (975, 4, 1),
    (976, 140, 1),
    (977, 142, 1),
    (981, 146, 1),
    (982, 144, 1),
    (984, 1, 24),
    (1008, 136, 1),
    (1009, 138, 1),
    (1012, 130, 1),
    (1013, 128, 1),
    (1015, 0, 1),
    (1017, 152, 1),
    (1018, 0, 1),
    (1021, 110, 3),
    (1024, 34, 16),
    (1040, 14, 32),
    (1120, 1, 34),
    (1162, 1, 54),
    (1216, 6, 1),
    (1217, 1, 14),
    (1232, 1, 88),
    (1329, 22, 38),
    (4256, 66, 38),
    (4295, 66, 1),
    (4301, 66, 1),
    (7680, 1, 150),
    (7835, 132, 1),
    (7838, 96, 1),
    (7840, 1, 96),
    (7944, 150, 8),
    (7960, 150, 6),
    (7976, 150, 8),
    (7992, 150, 8),
    (8008, 150, 6),
    (8025, 151, 8),
    (8040, 150, 8),
    (8072, 150, 8),
    (8088, 150, 8),
    (8104, 150, 8),
    (8120, 150, 2),
    (8122, 126, 2),
    (8124, 148, 1),
    (8126, 100, 1),
    (8136, 124, 4),
    (8140, 148, 1),
    (8152, 150, 2),
    (8154, 120, 2),
    (8168, 150, 2),
    (8170, 118, 2),
    (8172, 152, 1),
    (8184, 112, 2),
    (8186, 114, 2),
    (8188, 148, 1),
    (8486, 98, 1),
    (8490, 92, 1),
    (8491, 94, 1),
    (8498, 12, 1),
    (8544, 8, 16),
    (8579, 0, 1),
    (9398, 10, 26),
    (11264, 22, 47),
    (11360, 0, 1),
    (11362, 88, 1),
    (11363, 102, 1),
    (11364, 90, 1),
    (11367, 1, 6),
    (11373, 84, 1),
    (11374, 86, 1),
    (11375, 80, 1),
    (11376, 82, 1),
    (11378, 0, 1),
    (11381, 0, 1),
    (11390, 78, 2),
    (11392, 1, 100),
    (11499, 1, 4),
    (11506, 0, 1),
    (42560, 1, 46),
    (42624, 1, 24),
    (42786, 1, 14),
    (42802, 1, 62),
    (42873, 1, 4),
    (42877, 76, 1),
    (42878, 1, 10),
    (42891, 0, 1),
    (42893, 74, 1),
    (42896, 1, 4),
    (42912, 1, 10),
    (42922, 72, 1),
    (65313, 14, 26),
];

/// What a folded code point adds (mod 2^16), by `flags >> 1`.
const OFFSETS: [u16; 77] = [
    1, 2, 8, 15, 16, 26, 28, 32, 37, 38, 40, 48, 63, 64, 69, 71, 79, 80, 116, 202, 203, 205, 206,
    207, 209, 210, 211, 213, 214, 217, 218, 219, 775, 7264, 10792, 10795, 23228, 23256, 30204,
    54721, 54753, 54754, 54756, 54787, 54793, 54809, 57153, 57274, 57921, 58019, 58363, 61722,
    65268, 65341, 65373, 65406, 65408, 65410, 65415, 65424, 65436, 65439, 65450, 65462, 65472,
    65476, 65478, 65480, 65482, 65488, 65506, 65511, 65514, 65521, 65527, 65528, 65529,
];
