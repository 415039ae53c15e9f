//! Session parameters a client may set at startup and that pgsluice keeps consistent across
//! the server connections it lends the client (PgBouncer's tracked set). When a client is
//! given a server whose reported values differ, the session sends one `SET` batch first.

use crate::backend::ServerConn;

/// Parameters tracked per client, as the server spells them in ParameterStatus.
pub const TRACKED: [&str; 6] =
    ["client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings", "application_name"];

/// The canonical spelling of a tracked parameter name (startup keys are case-insensitive).
pub fn canonical(name: &str) -> Option<&'static str> {
    TRACKED.iter().copied().find(|t| t.eq_ignore_ascii_case(name))
}

/// Values the client asked for (at startup or later through `SET`).
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    values: Vec<(&'static str, String)>,
}

impl ClientParams {
    /// Sets a tracked parameter.
    pub fn set(&mut self, name: &'static str, value: &str) {
        match self.values.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => {
                if v != value {
                    v.clear();
                    v.push_str(value);
                }
            }
            None => self.values.push((name, value.to_string())),
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
        self.values.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// Iterates over the wanted values.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// The `SET` statements needed to bring `server` to this client's values, or `None` when
    /// it already matches (the common case: no extra round trip).
    pub fn sync_sql(&self, server: &ServerConn) -> Option<String> {
        let mut sql = String::new();
        for (k, v) in &self.values {
            let current = server.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if current != Some(v.as_str()) {
                sql.push_str("SET ");
                sql.push_str(k);
                sql.push_str(" = '");
                sql.push_str(&v.replace('\'', "''"));
                sql.push_str("';");
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
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
    fn set_and_observe() {
        let mut p = ClientParams::default();
        p.set("TimeZone", "UTC");
        p.observe("timezone", "Europe/Paris");
        p.observe("search_path", "x");
        assert_eq!(p.get("TimeZone"), Some("Europe/Paris"));
        assert_eq!(p.iter().count(), 1);
    }
}
