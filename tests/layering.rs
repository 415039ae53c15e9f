//! The import directions of `docs/architecture.md` ("Layers"), checked on the source: every
//! `crate::…` and `super::…` path in `src/` is resolved to the module file it names, and
//!
//! 1. a top-level module imports only modules of a lower layer ([`LAYERS`]), so nothing
//!    under `backend/`, `pool/` or `cluster/` reaches `frontend/`, `router/` or `admin/`;
//! 2. no two module files import each other, directly or through others (a module and its
//!    own submodules excepted: a child using its parent's items is not a cycle).
//!
//! Test code counts too (a test-only import still ties the layers together). Comments and
//! string literals are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/` by layer, highest first. A module may import only modules of
/// a strictly lower layer (same layer: neither imports the other).
const LAYERS: &[(u32, &[&str])] = &[
    (90, &["demo", "budgets"]),
    (80, &["server", "metrics"]),
    (70, &["frontend"]),
    (60, &["admin"]),
    (55, &["reload"]),
    (50, &["shared"]),
    (45, &["error"]),
    (40, &["router"]),
    (35, &["notify"]),
    (30, &["pool", "auth_query"]),
    (25, &["cluster", "cancel"]),
    (20, &["backend"]),
    (15, &["exchange"]),
    (13, &["import"]),
    (12, &["config"]),
    (10, &["prepared", "params", "stats", "auth", "shutdown", "localpg"]),
    (5, &["net", "systemd"]),
    (0, &["sql", "protocol"]),
];

fn layer_of(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(_, ms)| ms.contains(&module)).map(|(l, _)| *l)
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file (`src/pool/set.rs` → `["pool", "set"]`); `None` for the crate
/// roots.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The text with comments, string and char literals blanked out (newlines kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && !ident_byte(prev(b, i)) {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n', '\''), not a lifetime.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            let ch = text[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn prev(b: &[u8], i: usize) -> u8 {
    if i == 0 {
        b' '
    } else {
        b[i - 1]
    }
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A lower-case path segment at `i` (module names are lower case; a type ends the path).
fn segment(b: &[u8], i: usize) -> Option<(String, usize)> {
    let start = i;
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b[j] == b'_') {
        j += 1;
    }
    if j == start || (j < b.len() && b[j].is_ascii_uppercase()) {
        return None;
    }
    Some((String::from_utf8_lossy(&b[start..j]).into_owned(), j))
}

/// Reads `seg(::seg)*` at `i`, following `{a, b::c}` groups one level: each path found.
fn paths_at(b: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        if i < b.len() && b[i] == b'{' {
            // A group: each item continues the path.
            let mut depth = 0;
            let mut item_start = i + 1;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            paths_at(b, skip_ws(b, item_start), path.clone(), out);
                            break;
                        }
                    }
                    b',' if depth == 1 => {
                        paths_at(b, skip_ws(b, item_start), path.clone(), out);
                        item_start = j + 1;
                    }
                    _ => {}
                }
                j += 1;
            }
            return;
        }
        match segment(b, i) {
            Some((s, j)) if s != "self" => {
                path.push(s);
                if b[j..].starts_with(b"::") {
                    i = j + 2;
                    continue;
                }
                break;
            }
            _ => break,
        }
    }
    out.push(path);
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The module paths a file refers to (`crate::…`, `super::…`), as written (not resolved).
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) change what `super` means.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let boundary = !ident_byte(prev(b, i));
        if boundary && b[i..].starts_with(b"mod ") {
            if let Some((name, j)) = segment(b, skip_ws(b, i + 4)) {
                if b.get(skip_ws(b, j)) == Some(&b'{') {
                    inline.push((name, depth + 1));
                }
            }
        }
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        if boundary && b[i..].starts_with(b"crate::") {
            paths_at(b, i + 7, Vec::new(), &mut out);
        } else if boundary && b[i..].starts_with(b"super::") {
            let mut base: Vec<String> = module.to_vec();
            base.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut j = i;
            while b[j..].starts_with(b"super::") {
                base.pop();
                j += 7;
            }
            paths_at(b, j, base, &mut out);
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The longest known module that is a prefix of `path`.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p))
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// Module file → the module files it imports (not its ancestors or descendants).
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let sources: Vec<(Vec<String>, String)> = files
        .iter()
        .filter_map(|f| Some((module_of(&src, f)?, code_only(&std::fs::read_to_string(f).expect("read")))))
        .collect();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (m, code) in &sources {
        let e: &mut BTreeSet<Vec<String>> = edges.entry(m.clone()).or_default();
        for path in references(m, code) {
            if let Some(target) = resolve(&modules, &path) {
                if !is_prefix(&target, m) && !is_prefix(m, &target) {
                    e.insert(target);
                }
            }
        }
    }
    edges
}

fn name(m: &[String]) -> String {
    m.join("::")
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let mut bad = Vec::new();
    for (from, tos) in graph() {
        let Some(l_from) = layer_of(&from[0]) else {
            bad.push(format!("{}: top-level module not in LAYERS (tests/layering.rs)", from[0]));
            continue;
        };
        for to in tos {
            if to[0] == from[0] {
                continue;
            }
            match layer_of(&to[0]) {
                Some(l_to) if l_to < l_from => {}
                _ => bad.push(format!(
                    "{} imports {} (layer {} may not import {})",
                    name(&from),
                    name(&to),
                    from[0],
                    to[0]
                )),
            }
        }
    }
    bad.dedup();
    assert!(bad.is_empty(), "imports against the layering:\n  {}", bad.join("\n  "));
}

#[test]
fn modules_form_no_cycles() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit(
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        n: &Vec<String>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|x| x == m).expect("on stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(g, m, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(&g, n, &mut state, &mut Vec::new()) {
                let c: Vec<String> = c.iter().map(|m| name(m)).collect();
                panic!("module cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    // The resolver itself: groups, super, nested paths, strings and comments ignored.
    let code = code_only(
        "use crate::{pool::{self, Pool}, exchange::Exchange};\n// crate::admin\nlet s = \"crate::router\";\nmod tests { use super::sibling::X; }\nuse super::super::a::b;",
    );
    let refs = references(&["x".into(), "y".into(), "z".into()], &code);
    let names: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    assert!(names.contains(&"pool".to_string()) && names.contains(&"exchange".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("admin") || n.contains("router")), "{names:?}");
    assert!(names.contains(&"x::y::z::sibling".to_string()), "inline module's super is the file: {names:?}");
    assert!(names.contains(&"x::a::b".to_string()), "{names:?}");
}
