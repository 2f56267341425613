//! The direction of the crate's layers, checked on every `cargo test`.
//!
//! syncctl is one package (the product card fixes the top level), so the layers of
//! DESIGN.md §2 are kept by this test instead of by crate boundaries: it reads every
//! `crate::…` path (and `super::…` path that leaves its top-level module, and
//! `syncctl::…` in the binary) in `src/`, outside comments, and fails on an edge between
//! top-level modules that the table below does not allow, and on any import cycle
//! between top-level modules.
//!
//! A new edge goes into the table with its reason, or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it may use, and why.
///
/// From the bottom up: `protocol` is what crosses the engine boundary (snapshot,
/// commands, events); the engine's domain sits on it (resilience, telemetry, config,
/// compliance rules, connectors, store); `engine` runs the pipelines on that domain;
/// `server` exposes an engine handle over HTTP; `console` draws snapshots; `sandbox`
/// simulates the APIs; `app`, `main`, `status` and `bench` wire them.
const ALLOWED: &[(&str, &[&str], &str)] = &[
    (
        "protocol",
        &[],
        "what crosses the engine boundary: imports nothing",
    ),
    (
        "resilience",
        &["protocol", "telemetry"],
        "breakers, retries, limiters; record their metrics",
    ),
    (
        "telemetry",
        &["protocol"],
        "metrics, anomalies, alerts, health: pure computations over numbers",
    ),
    (
        "config",
        &["protocol", "resilience", "telemetry"],
        "the settings of breakers, limiters and alerts it parses",
    ),
    (
        "store",
        &["protocol", "telemetry"],
        "persists the engine's state; its queries carry the trace id",
    ),
    (
        "connectors",
        &["protocol", "config", "resilience", "telemetry", "store"],
        "API clients: guarded by resilience, configured, tokens persisted",
    ),
    (
        "compliance",
        &["protocol", "connectors"],
        "DIAN's rules (state machine, CUFE, contingency) over Alegra's answers",
    ),
    (
        "engine",
        &[
            "protocol",
            "compliance",
            "config",
            "connectors",
            "resilience",
            "store",
            "telemetry",
        ],
        "runs the pipelines on its domain; never the server, console or sandbox",
    ),
    (
        "server",
        &["protocol", "engine", "config", "telemetry"],
        "the HTTP routes over an engine handle",
    ),
    ("console", &["protocol"], "draws snapshots, sends commands"),
    (
        "attach",
        &["protocol"],
        "a console's link to an engine in another process: speaks the protocol only",
    ),
    (
        "frozen",
        &["protocol"],
        "an incident bundle as a Link (`syncctl bundle show`): speaks the protocol only",
    ),
    (
        "sandbox",
        &["protocol", "compliance", "resilience"],
        "simulates the APIs (DIAN's CUFE rules, a clock); never the engine",
    ),
    (
        "app",
        &[
            "protocol", "config", "engine", "server", "console", "sandbox", "store",
        ],
        "wires an engine, its server, a console and a sandbox",
    ),
    (
        "status",
        &["protocol", "config", "store"],
        "`syncctl status`: reads a running engine's API or the store",
    ),
    (
        "bench",
        &[
            "protocol",
            "app",
            "attach",
            "config",
            "connectors",
            "console",
            "engine",
            "resilience",
            "sandbox",
            "store",
            "telemetry",
        ],
        "benchmarks drive the real parts (and build a long history through the store)",
    ),
    (
        "soak",
        &["protocol", "resilience", "sandbox"],
        "`syncctl soak` drives engine and sandbox processes: a seeded RNG, the sandbox's API key",
    ),
    (
        "main",
        &[
            "protocol",
            "app",
            "attach",
            "bench",
            "soak",
            "config",
            "console",
            "engine",
            "frozen",
            "sandbox",
            "server",
            "status",
            "store",
            "compliance",
            "connectors",
            "telemetry",
        ],
        "the binary: parses the CLI and wires everything",
    ),
];

/// Removes comments (line, doc and block) and string literals, so only code is read.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < b.len() {
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a): keep lifetimes.
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Code with paths in one spelling: no whitespace around `::`, no raw identifiers
/// (`r#server`), no `self::` before `super::` or `crate::`, and `::syncctl::` as
/// `syncctl::`.
fn normalized(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("::") {
        out.push_str(rest[..at].trim_end());
        out.push_str("::");
        rest = rest[at + 2..].trim_start();
    }
    out.push_str(rest);
    let mut s = out.replace("r#", "");
    for (from, to) in [("self::super::", "super::"), ("self::crate::", "crate::")] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s.replace("::syncctl::", " syncctl::")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segments named by a path group after `crate::{`: `a::b, c::{d}, e` → a, c, e.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expect = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect = true,
            c if depth == 1 && expect && !c.is_whitespace() => {
                expect = false;
                let id = ident_at(&s[i..]);
                if !id.is_empty() {
                    heads.push(id.to_owned());
                }
            }
            _ => {}
        }
    }
    heads
}

/// The first segments a path names after its root: one, or each of a `{…}` group.
fn heads_of(rest: &str, out: &mut BTreeSet<String>) {
    if rest.starts_with('{') {
        out.extend(group_heads(rest));
    } else {
        let id = ident_at(rest);
        if !id.is_empty() {
            out.insert(id.to_owned());
        }
    }
}

/// The top-level modules `code` names through `root` (`crate::` or `syncctl::`).
fn heads_after(code: &str, root: &str, out: &mut BTreeSet<String>) {
    let mut at = 0;
    while let Some(p) = code[at..].find(root) {
        let start = at + p;
        at = start + root.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        heads_of(&code[at..], out);
    }
}

/// `super::` chains that climb out of a module at `depth` (0: a top-level module's own
/// file) reach the crate root, then name a top-level module.
fn super_heads(code: &str, depth: usize, out: &mut BTreeSet<String>) {
    let mut at = 0;
    while let Some(p) = code[at..].find("super::") {
        let start = at + p;
        let before = code[..start].chars().next_back();
        at = start + "super::".len();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut ups = 1;
        let mut rest = &code[at..];
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups > depth {
            heads_of(rest, out);
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's top-level module, and how deep below it the file's module is (0: the
/// top-level module's own file). Inline `mod tests {}` blocks are one deeper, which only
/// makes `super::` resolution stricter.
fn module_of(src: &Path, file: &Path) -> (String, usize) {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let top = parts[0].clone();
    let depth = match parts.last().map(String::as_str) {
        Some("mod") => parts.len() - 2,
        _ => parts.len() - 1,
    };
    (top, depth)
}

/// Every edge between top-level modules: (from, to) → files.
fn edges(src: &Path) -> BTreeMap<(String, String), BTreeSet<String>> {
    let top_level: BTreeSet<String> = std::fs::read_dir(src)
        .expect("src")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| {
            if p.is_dir() {
                Some(p.file_name()?.to_string_lossy().into_owned())
            } else if p.extension().is_some_and(|x| x == "rs") {
                Some(p.file_stem()?.to_string_lossy().into_owned())
            } else {
                None
            }
        })
        .filter(|m| m != "lib")
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let (top, depth) = module_of(src, &file);
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source");
        let code = normalized(&code_only(&text));
        let mut heads = BTreeSet::new();
        heads_after(&code, "crate::", &mut heads);
        // The library's own name reaches its root from anywhere (in main.rs, the way).
        heads_after(&code, "syncctl::", &mut heads);
        super_heads(&code, depth, &mut heads);
        for h in heads {
            if h != top && top_level.contains(&h) {
                let rel = file.strip_prefix(src).expect("under src");
                out.entry((top.clone(), h))
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    out
}

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn allowed(from: &str, to: &str) -> bool {
    ALLOWED
        .iter()
        .find(|(m, _, _)| *m == from)
        .is_some_and(|(_, may, _)| may.contains(&to))
}

#[test]
fn every_edge_between_top_level_modules_is_allowed() {
    let found = edges(&src_dir());
    let mut bad = BTreeSet::new();
    for ((from, to), files) in &found {
        if !ALLOWED.iter().any(|(m, _, _)| m == from) {
            bad.insert(format!(
                "{from} is a top-level module the table does not know (add it to ALLOWED with its reason)"
            ));
        } else if !allowed(from, to) {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            bad.insert(format!(
                "{from} → {to} is not allowed (in {})",
                files.join(", ")
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "layer violations:\n  {}\n(see the table at the top of tests/layering.rs)",
        bad.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let found = edges(&src_dir());
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in found.keys() {
        graph.entry(from).or_default().insert(to);
    }
    // Depth-first search for a back edge; report the cycle's path.
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|m| *m == n) {
            let mut path: Vec<&str> = stack[at..].to_vec();
            path.push(n);
            cycles.push(path.join(" → "));
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n);
        for next in graph.get(n).into_iter().flatten() {
            visit(next, graph, stack, done, cycles);
        }
        stack.pop();
        done.insert(n);
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_console_names_no_storage_server_or_engine_internals() {
    let mut files = Vec::new();
    rust_files(&src_dir().join("console"), &mut files);
    assert!(!files.is_empty(), "src/console/ exists");
    for file in files {
        let code = code_only(&std::fs::read_to_string(&file).expect("source"));
        for word in ["rusqlite", "axum", "crate::engine", "crate::store"] {
            assert!(!code.contains(word), "{} mentions {word}", file.display());
        }
    }
}

#[test]
fn the_reader_finds_paths_in_groups_and_through_super() {
    let code = code_only(
        "use crate::{server::{a, b}, engine::X};\n// crate::sandbox::Y\nlet s = \"crate::ui\";\nfn f() { super::super::console::draw(); }",
    );
    let mut heads = BTreeSet::new();
    heads_after(&code, "crate::", &mut heads);
    super_heads(&code, 1, &mut heads);
    let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
    assert_eq!(heads, ["console", "engine", "server"]);
    // One level of super from a nested file stays inside its top-level module.
    let mut inside = BTreeSet::new();
    super_heads("use super::Compliance;", 1, &mut inside);
    assert!(inside.is_empty());
}

#[test]
fn an_engine_file_importing_the_server_or_the_console_would_fail() {
    // The table refuses what this test exists to refuse.
    for forbidden in ["server", "console", "sandbox"] {
        assert!(!allowed("engine", forbidden), "engine → {forbidden}");
    }
    assert!(!allowed("console", "engine"));
    assert!(!allowed("sandbox", "engine"));
    assert!(
        ALLOWED
            .iter()
            .all(|(m, may, _)| *m == "protocol" || may.contains(&"protocol") || may.is_empty())
    );
    assert!(
        ALLOWED
            .iter()
            .find(|(m, _, _)| *m == "protocol")
            .is_some_and(|(_, may, _)| may.is_empty())
    );
}

/// Ways to reach a module that a reader of paths would not see: an alias of the crate
/// root, the crate named as an extern crate, a module file loaded from elsewhere.
#[test]
fn no_path_hides_from_the_reader() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    for file in files {
        let code = normalized(&code_only(&std::fs::read_to_string(&file).expect("source")));
        let squeezed: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        for (pattern, why) in [
            ("crate as ", "an alias of the crate root"),
            ("crate::{self", "an alias of the crate root"),
            ("extern crate", "the crate named again"),
            ("#[path", "a module file loaded from another place"),
            ("syncctl as ", "an alias of the crate"),
        ] {
            assert!(
                !squeezed.contains(pattern),
                "{} uses `{pattern}…` ({why}): the layering check could not follow it",
                file.display()
            );
        }
    }
}

#[test]
fn spellings_of_a_path_are_all_read() {
    for (text, want) in [
        ("fn f() { self::super::super::server::x(); }", "server"),
        ("fn f() { crate :: server :: x(); }", "server"),
        ("fn f() { crate::r#server::x(); }", "server"),
        ("fn f() { ::syncctl::console::x(); }", "console"),
        ("fn f() { syncctl::sandbox::x(); }", "sandbox"),
    ] {
        let code = normalized(&code_only(text));
        let mut heads = BTreeSet::new();
        heads_after(&code, "crate::", &mut heads);
        heads_after(&code, "syncctl::", &mut heads);
        super_heads(&code, 1, &mut heads);
        assert!(heads.contains(want), "{text}: {heads:?}");
    }
}
