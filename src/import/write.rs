//! Renders an import as TOML: `[general]`, `[tls]`, `[databases.NAME]`, `[users.NAME]`,
//! `[peers.N]`, each key preceded by a comment naming where its value came from
//! (`# pgbouncer.ini:12 default_pool_size`), then comment blocks listing what was not imported
//! and what needed no setting. Values are rendered by the `toml` crate, so quoting is always valid TOML.

use super::{Builder, Fate, Section};

/// A TOML key: bare when it can be, else a quoted string.
fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

fn section(out: &mut String, comment: Option<&str>, header: &str, s: &Section) {
    out.push('\n');
    if let Some(c) = comment {
        out.push_str(&format!("# {c}\n"));
    }
    out.push_str(&format!("[{header}]\n"));
    for item in &s.items {
        out.push_str(&format!("# {}\n{} = {}\n", item.comment, key(&item.key), item.value));
    }
}

/// The TOML text of `b`, imported from the file shown as `source`.
pub(super) fn render(b: &Builder, source: &str) -> String {
    let mut out = format!(
        "# Imported from {source} by `pgsluice import-pgbouncer` (pgsluice {}).\n\
         # Each value is preceded by the ini line it came from. Settings that were not imported are\n\
         # listed at the end. Check with: pgsluice check-config <this file>\n\
         # See docs/migrating-from-pgbouncer.md for what behaves differently.\n",
        crate::VERSION_NUMBER
    );
    section(&mut out, None, "general", &b.general);
    if !b.tls.items.is_empty() {
        section(&mut out, None, "tls", &b.tls);
    }
    for d in &b.databases {
        section(&mut out, Some(&d.comment), &format!("databases.{}", key(&d.name)), &d.section);
    }
    for u in &b.users {
        section(&mut out, Some(&u.comment), &format!("users.{}", key(&u.name)), &u.section);
    }
    for (p, _) in &b.peers {
        section(&mut out, Some(&p.comment), &format!("peers.{}", p.name), &p.section);
    }
    let listed = |want_dropped: bool| -> Vec<String> {
        b.entries
            .iter()
            .filter_map(|e| match &e.fate {
                Fate::Dropped(why) if want_dropped => {
                    Some(format!("# {} [{}] {}: {why}\n", e.origin, e.section, e.key))
                }
                Fate::Same(why) if !want_dropped => Some(format!("# {} [{}] {}: {why}\n", e.origin, e.section, e.key)),
                _ => None,
            })
            .collect()
    };
    let dropped = listed(true);
    if !dropped.is_empty() {
        out.push_str("\n# Not imported:\n");
        out.extend(dropped);
    }
    let same = listed(false);
    if !same.is_empty() {
        out.push_str("\n# Nothing to set (pgsluice behaves this way already):\n");
        out.extend(same);
    }
    out
}
