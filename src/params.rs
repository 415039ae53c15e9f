//! Session parameters a client may set and that pgsluice keeps consistent across the server
//! connections it lends the client (PgBouncer's tracked set: client_encoding, DateStyle,
//! TimeZone, IntervalStyle, standard_conforming_strings, application_name).
//!
//! A client's wanted values are an immutable, shared [`ParamSet`] (`Arc`, copy-on-write):
//! clients with identical settings share one allocation (interned per pool), and a server
//! connection remembers the set it was last brought to, so the per-transaction check is one
//! pointer comparison. Only on a mismatch are values compared and a `SET` batch sent.

use std::sync::Arc;

use parking_lot::Mutex;

/// Parameters tracked per client, as the server spells them in ParameterStatus.
pub const TRACKED: [&str; 6] =
    ["client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings", "application_name"];

/// The canonical spelling of a tracked parameter name (startup keys are case-insensitive).
pub fn canonical(name: &str) -> Option<&'static str> {
    TRACKED.iter().copied().find(|t| t.eq_ignore_ascii_case(name))
}

/// Values of tracked parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamSet {
    values: Vec<(&'static str, Box<str>)>,
}

impl ParamSet {
    /// The value for `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| *k == name).map(|(_, v)| &**v)
    }

    fn put(&mut self, name: &'static str, value: &str) {
        match self.values.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = value.into(),
            None => self.values.push((name, value.into())),
        }
    }
}

/// One client's wanted values.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    set: Arc<ParamSet>,
}

impl ClientParams {
    /// Sets a tracked parameter (copy-on-write: a shared set is cloned first).
    pub fn set(&mut self, name: &'static str, value: &str) {
        if self.set.get(name) != Some(value) {
            Arc::make_mut(&mut self.set).put(name, value);
        }
    }

    /// Records a ParameterStatus the server sent while this client held it: a tracked
    /// parameter the client changed with `SET` follows it to its next server.
    pub fn observe(&mut self, name: &str, value: &str) {
        if let Some(c) = canonical(name) {
            self.set(c, value);
        }
    }

    /// The value the client wants for `name`, if it expressed one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.set.get(name)
    }

    /// Shares an identical set already in use by another client of `interner`.
    pub fn intern(&mut self, interner: &Interner) {
        let mut sets = interner.0.lock();
        if let Some(s) = sets.iter().find(|s| ***s == *self.set) {
            self.set = s.clone();
        } else if sets.len() < Interner::MAX {
            sets.push(self.set.clone());
        }
    }

    /// The `SET` statements needed to bring a server (with reported `server_params`, last
    /// synced to `synced`) to this client's values, or `None` when it already matches.
    pub fn sync_sql(&self, server_params: &[(String, String)], synced: Option<&Arc<ParamSet>>) -> Option<String> {
        if synced.is_some_and(|s| Arc::ptr_eq(s, &self.set)) {
            return None;
        }
        let mut sql = String::new();
        for (k, v) in &self.set.values {
            let current = server_params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if current != Some(&**v) {
                // E'' quoting is right whatever standard_conforming_strings is on the server.
                sql.push_str("SET ");
                sql.push_str(k);
                sql.push_str(" = E'");
                sql.push_str(&v.replace('\\', "\\\\").replace('\'', "''"));
                sql.push_str("';");
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Whether `other` is this client's current set (pointer equality).
    pub fn is_same(&self, other: &Arc<ParamSet>) -> bool {
        Arc::ptr_eq(&self.set, other)
    }

    /// The shared set, to remember on the server connection after syncing.
    pub fn shared(&self) -> Arc<ParamSet> {
        self.set.clone()
    }
}

/// A small per-pool cache of parameter sets, so identical clients share one.
#[derive(Default)]
pub struct Interner(Mutex<Vec<Arc<ParamSet>>>);

impl Interner {
    const MAX: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_are_case_insensitive() {
        assert_eq!(canonical("datestyle"), Some("DateStyle"));
        assert_eq!(canonical("TIMEZONE"), Some("TimeZone"));
        assert_eq!(canonical("search_path"), None);
    }

    #[test]
    fn set_observe_and_copy_on_write() {
        let mut a = ClientParams::default();
        a.set("TimeZone", "UTC");
        let mut b = a.clone();
        b.observe("timezone", "Europe/Paris");
        b.observe("search_path", "x");
        assert_eq!(a.get("TimeZone"), Some("UTC"));
        assert_eq!(b.get("TimeZone"), Some("Europe/Paris"));
    }

    #[test]
    fn interning_shares_equal_sets_and_sync_short_circuits() {
        let interner = Interner::default();
        let (mut a, mut b) = (ClientParams::default(), ClientParams::default());
        a.set("TimeZone", "UTC");
        b.set("TimeZone", "UTC");
        a.intern(&interner);
        b.intern(&interner);
        assert!(Arc::ptr_eq(&a.shared(), &b.shared()));
        let server = vec![("TimeZone".to_string(), "Asia/Tokyo".to_string())];
        assert_eq!(a.sync_sql(&server, None).as_deref(), Some("SET TimeZone = E'UTC';"));
        assert_eq!(a.sync_sql(&server, Some(&b.shared())), None);
        let mut c = b.clone();
        c.set("TimeZone", "it's\\");
        assert_eq!(c.sync_sql(&server, Some(&b.shared())).as_deref(), Some("SET TimeZone = E'it''s\\\\';"));
    }
}
