//! The session-state scanner (`pgsluice::sql::session_state`) on arbitrary text.
//! Properties: `surely_stateless` implies no effect; `first_change` is `apply` on a fresh
//! state; a text without effect leaves the state alone; the detected statement is a short
//! piece of the text; `redact` keeps no value; and on a complete text (no quote,
//! comment or dollar quote, parentheses closed), a following `DISCARD ALL` always unpins and a
//! following `SET` of an untracked parameter always pins.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::sql::session_state::{apply, first_change, has_effect, redact, surely_stateless, PinState, Reason};

fn tracked(name: &str) -> bool {
    pgsluice::params::canonical(name).is_some()
}

/// Whether a statement appended after `\n;` is surely read as a statement of its own: the
/// text has no quote, comment or dollar sign (so the scanner's lexer reads every byte as
/// a word, a number or punctuation), and no parenthesis is open where it ends (counted
/// over every byte, which never gives 0 where the scanner's own count is above 0).
fn complete(sql: &str) -> bool {
    if sql.contains(['\'', '"', '$', '\\']) || sql.contains("--") || sql.contains("/*") {
        return false;
    }
    let mut depth = 0u32;
    for c in sql.bytes() {
        match c {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    depth == 0
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let effect = has_effect(sql, &tracked);
    if surely_stateless(data) {
        assert!(!effect, "surely_stateless text has an effect");
    }
    let mut state = PinState::default();
    let detected = apply(sql, &tracked, &mut state);
    assert_eq!(detected, first_change(sql, &tracked));
    if !effect {
        assert_eq!(state, PinState::default(), "a text without effect changed the state");
        assert!(detected.is_none());
    }
    if let Some(d) = detected {
        assert!(d.statement.len() <= 200);
        let (base, p) = (sql.as_ptr() as usize, d.statement.as_ptr() as usize);
        assert!(p >= base && p + d.statement.len() <= base + sql.len(), "statement is not a piece of the text");
    }
    let r = redact(sql);
    let kept = r.strip_suffix(" …").unwrap_or(&r);
    assert!(sql.starts_with(kept), "redact changed the text it kept");
    assert!(!kept.contains(['\'', '$', '=', '(', '"']), "redact kept a value: {r:?}");

    if complete(sql) {
        let mut s = state.clone();
        apply(&format!("{sql}\n;DISCARD ALL"), &tracked, &mut s);
        assert!(!s.is_pinned(), "DISCARD ALL after a complete text left {s:?}");
        let mut s = PinState::default();
        apply(&format!("{sql}\n;SET fuzz.x = 1"), &tracked, &mut s);
        assert!(s.has(Reason::Set), "SET of an untracked parameter after a complete text did not pin");
    }
});
