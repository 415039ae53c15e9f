//! Applying a new configuration to a running pgsluice (SIGHUP, `RELOAD`, `SET`).
//!
//! The new file is parsed and validated first; if it is invalid nothing changes and the
//! error is returned (logged by SIGHUP, an `ERROR` on the console). Otherwise it is applied
//! by diffing against the running state:
//! - the whole `Config` is swapped in one `ArcSwap` store; logins from then on see it;
//! - a database whose hosts, probe login or probe settings changed gets a new `Cluster`
//!   (probing from scratch); an unchanged one keeps its cluster and topology;
//! - pools whose settings differ only in sizes are resized in place (no client notices);
//!   pools whose other settings, cluster or credentials changed are *retired*: their
//!   sessions finish the transaction in progress, then move to a fresh pool at their next
//!   request; their server connections close when released;
//! - pools of a removed database are retired too, and their clients are disconnected at
//!   their next request boundary with `3D000`;
//! - `max_db_connections` / `max_user_connections` apply to the shared caps at once;
//! - settings that only a restart changes are reported, not applied.
//!
//! Settings read once per client at login (pool mode, timeouts, routing policy) apply to
//! clients that log in after the reload.

use std::collections::HashSet;
use std::sync::Arc;

use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Config, Database, RESTART_ONLY};
use crate::shared::{secret_for, ClusterSet, Shared};

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// New databases.
    pub added: Vec<String>,
    /// Removed databases.
    pub removed: Vec<String>,
    /// Databases whose cluster (hosts, probe) was rebuilt.
    pub rebuilt: Vec<String>,
    /// Pools (`db/user`) resized in place.
    pub resized: Vec<String>,
    /// Pools (`db/user`) replaced by new ones.
    pub replaced: Vec<String>,
    /// Changed settings that need a restart to take effect.
    pub restart_needed: Vec<String>,
}

impl Report {
    /// One line per change, for the console (NOTICE) and the log.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut line = |what: &str, v: &[String]| {
            if !v.is_empty() {
                out.push(format!("{what}: {}", v.join(", ")));
            }
        };
        line("databases added", &self.added);
        line("databases removed", &self.removed);
        line("databases re-probed (hosts or probe settings changed)", &self.rebuilt);
        line("pools resized", &self.resized);
        line("pools replaced (connections close when released)", &self.replaced);
        line("changed but needs a restart (not applied)", &self.restart_needed);
        out
    }
}

/// Re-reads the config file and applies it.
pub fn reload(shared: &Arc<Shared>) -> Result<Report, String> {
    let path = shared.config.load().path.clone();
    let new = Config::load(&path).map_err(|e| e.to_string())?;
    let report = apply(shared, new);
    for n in report.notices() {
        tracing::info!("reload: {n}");
    }
    Ok(report)
}

/// `SET key = value`: the running config with one `[general]` setting changed, validated
/// and applied like a reload (the next `RELOAD` takes the file's value again).
pub fn set(shared: &Arc<Shared>, key: &str, value: &str) -> Result<Report, String> {
    if RESTART_ONLY.contains(&key) {
        return Err(format!("{key} cannot be changed without a restart"));
    }
    let cur = shared.config.load_full();
    let mut table = match toml::Value::try_from(&cur.file.general) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err("cannot read the current settings".into()),
    };
    let defaults = match toml::Value::try_from(crate::config::General::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => Default::default(),
    };
    let like = table.get(key).or_else(|| defaults.get(key));
    let v = parse_value(key, value, like)?;
    table.insert(key.to_string(), v);
    let mut general: crate::config::General =
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
    // Serialization redacts the password: keep the real one unless it is what changed.
    if key != "health_check_password" {
        general.health_check_password = cur.file.general.health_check_password.clone();
    }
    let mut file = cur.file.clone();
    file.general = general;
    let new = Config::from_file(file, &cur.path).map_err(|e| e.message)?;
    Ok(apply(shared, new))
}

/// A console value as the TOML type of the setting it replaces: booleans also as `1`/`0`
/// (PgBouncer's form), lists comma-separated.
fn parse_value(key: &str, value: &str, like: Option<&toml::Value>) -> Result<toml::Value, String> {
    let bad = || format!("invalid value for {key}: {value:?}");
    Ok(match like {
        Some(toml::Value::Boolean(_)) => match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => toml::Value::Boolean(true),
            "0" | "false" | "off" | "no" => toml::Value::Boolean(false),
            _ => return Err(bad()),
        },
        Some(toml::Value::Integer(_)) => toml::Value::Integer(value.trim().parse().map_err(|_| bad())?),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect(),
        ),
        // Durations also as a bare number of seconds, as in the file.
        Some(toml::Value::String(_)) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            toml::Value::Integer(value.parse().map_err(|_| bad())?)
        }
        Some(_) => toml::Value::String(value.to_string()),
        // An optional setting not set now: a number if it looks like one.
        None => match value.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(value.to_string()),
        },
    })
}

/// Whether the cluster of `a` can serve `b` (same hosts, hints, weights and probe login).
fn same_topology(a: &Database, b: &Database) -> bool {
    a.hosts == b.hosts
        && a.server_tls.spec == b.server_tls.spec
        && a.server_auth == b.server_auth
        && a.role_hints == b.role_hints
        && a.weights == b.weights
        && a.dbname == b.dbname
        && match (&a.probe, &b.probe) {
            (None, None) => true,
            (Some(x), Some(y)) => x.user == y.user && x.secret == y.secret,
            _ => false,
        }
}

/// Applies a validated config; see the module docs.
pub fn apply(shared: &Arc<Shared>, new: Config) -> Report {
    let old = shared.config.load_full();
    let mut report = Report::default();
    let (og, ng) = (old.general(), new.general());
    let restart = [
        ("listen_addr/listen_port", old.listen_all != new.listen_all),
        ("worker_threads", og.worker_threads != ng.worker_threads),
        ("so_reuseport", og.so_reuseport != ng.so_reuseport),
        (
            "unix_socket_dir/mode/group",
            (&og.unix_socket_dir, &og.unix_socket_mode, &og.unix_socket_group)
                != (&ng.unix_socket_dir, &ng.unix_socket_mode, &ng.unix_socket_group),
        ),
        ("admin_database", og.admin_database != ng.admin_database),
        ("log_format", og.log_format != ng.log_format),
        ("[metrics] listen_addr", old.file.metrics != new.file.metrics),
        ("read_only_functions", og.read_only_functions != ng.read_only_functions),
        ("max_parse_length", og.max_parse_length != ng.max_parse_length),
        ("classify_cache_size", og.classify_cache_size != ng.classify_cache_size),
        ("max_client_conn", og.max_client_conn != ng.max_client_conn),
        ("peer_id", og.peer_id != ng.peer_id),
    ];
    report.restart_needed = restart.iter().filter(|(_, c)| *c).map(|(k, _)| k.to_string()).collect();

    // Clusters.
    let settings = ClusterSettings::from_general(ng);
    let settings_changed = format!("{settings:?}") != format!("{:?}", ClusterSettings::from_general(og));
    let old_clusters = shared.clusters.load_full();
    let mut clusters = ClusterSet::new();
    let mut rebuilt: HashSet<String> = HashSet::new();
    for (name, db) in &new.databases {
        let keep = old
            .databases
            .get(name)
            .filter(|o| !settings_changed && same_topology(o, db))
            .and_then(|_| old_clusters.get(name).cloned());
        let cluster = match keep {
            Some(c) => c,
            None => {
                if old.databases.contains_key(name) {
                    report.rebuilt.push(name.clone());
                } else {
                    report.added.push(name.clone());
                }
                rebuilt.insert(name.clone());
                let c = match old_clusters.get(name) {
                    Some(previous) => Cluster::replacing(db, settings.clone(), previous),
                    None => Cluster::new(db, settings.clone()),
                };
                c.start();
                c
            }
        };
        clusters.insert(name.clone(), cluster);
    }
    for name in old.databases.keys().filter(|n| !new.databases.contains_key(*n)) {
        report.removed.push(name.clone());
    }
    report.added.sort();
    report.removed.sort();
    report.rebuilt.sort();

    // From here on, logins and sessions moving off retired pools see the new state.
    let new = Arc::new(new);
    shared.config.store(new.clone());
    shared.clusters.store(Arc::new(clusters));

    // Pools.
    let mut sets = shared.pools.sets();
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    for ((db_name, user), set) in sets {
        let label = format!("{db_name}/{user}");
        let Some(db) = new.databases.get(&db_name) else {
            shared.pools.remove(&db_name, &user);
            set.retire();
            continue;
        };
        let cluster = shared.cluster(&db_name);
        let secret = secret_for(&new, db, &user);
        let same = !rebuilt.contains(&db_name)
            && cluster.as_ref().is_some_and(|c| Arc::ptr_eq(c, set.cluster()))
            && set.pools().iter().all(|p| {
                let want = shared.pools.settings_for(&new, db, &user, &p.settings().host);
                p.settings().same_except_sizes(&want) && p.secret() == secret
            });
        if same {
            let sizes = crate::pool::Sizes { size: db.pool_size, min: db.min_pool_size, reserve: db.reserve_pool_size };
            let mut changed = false;
            for p in set.pools() {
                if p.snapshot().sizes != Some(sizes) {
                    p.resize(sizes);
                    changed = true;
                }
            }
            if changed {
                report.resized.push(label);
            }
            continue;
        }
        // Replace: a fresh set now (with the SCRAM keys clients taught the old one), so
        // sessions find it at their next request.
        shared.pools.remove(&db_name, &user);
        if let Some(cluster) = cluster {
            let fresh = shared.pools.get_or_create(&new, &cluster, db, &user);
            if let Some(keys) = set.pools().iter().find_map(|p| p.scram_keys()) {
                fresh.learn_scram_keys(keys);
            }
        }
        set.retire();
        report.replaced.push(label);
    }
    shared.pools.set_limits(&new);
    // LISTEN hubs follow their (database, user)'s new pools.
    let sets = shared.pools.sets();
    shared.hubs.rebind_all(|db, user| {
        let backend = new.databases.get(db)?.fixed_user.as_deref().unwrap_or(user);
        sets.iter().find(|((d, u), _)| d == db && u == backend).map(|(_, s)| s.clone())
    });

    // Old clusters no longer serving anything stop probing.
    for (name, c) in old_clusters.iter() {
        if rebuilt.contains(name) || !new.databases.contains_key(name) {
            c.stop();
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_values_take_the_type_of_the_setting() {
        let b = toml::Value::Boolean(false);
        assert_eq!(parse_value("k", "1", Some(&b)).unwrap(), toml::Value::Boolean(true));
        assert_eq!(parse_value("k", "off", Some(&b)).unwrap(), toml::Value::Boolean(false));
        assert!(parse_value("k", "yes please", Some(&b)).is_err());
        let i = toml::Value::Integer(1);
        assert_eq!(parse_value("k", "30", Some(&i)).unwrap(), toml::Value::Integer(30));
        assert!(parse_value("k", "abc", Some(&i)).is_err());
        let s = toml::Value::String("5s".into());
        assert_eq!(parse_value("k", "10s", Some(&s)).unwrap(), toml::Value::String("10s".into()));
        let a = toml::Value::Array(vec![]);
        assert_eq!(
            parse_value("k", "a, b", Some(&a)).unwrap(),
            toml::Value::Array(vec![toml::Value::String("a".into()), toml::Value::String("b".into())])
        );
    }

    #[test]
    fn reports_list_what_changed() {
        let r = Report { added: vec!["b".into()], restart_needed: vec!["so_reuseport".into()], ..Report::default() };
        let n = r.notices();
        assert_eq!(n.len(), 2);
        assert!(n[0].contains("databases added: b"));
        assert!(n[1].contains("restart"));
    }
}
