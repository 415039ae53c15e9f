//! Users from PostgreSQL (`auth_user` + `auth_query`, as in PgBouncer): a client whose name
//! the auth_file does not list is looked up by running the database's `auth_query` as
//! `auth_user` on its primary, with the name as `$1` of an extended-protocol query (never
//! spliced into the text). The password hash found (a SCRAM verifier or an md5 hash)
//! authenticates the client exactly as an auth_file entry would, SCRAM passthrough included.
//!
//! Invariants:
//! - Results are cached per (database, user): found users for `auth_cache_ttl`, unknown
//!   names for `auth_negative_cache_ttl`, at most [`MAX_ENTRIES`] entries.
//! - At most [`MAX_CONCURRENT`] lookups run at once: a client cycling through names can
//!   make the server run no more than that many queries at a time.
//! - A lookup that fails (the server is down, `auth_user`'s password is wrong, the query
//!   returns two rows) is an error for the client, never a "user unknown", and is not
//!   cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::Secret;
use crate::backend::{Credential, LoginParams, ServerConn};
use crate::cluster::{Cluster, Primary};
use crate::config::{Database, UserAuth};

/// Most cached users (found or not) over all databases.
pub const MAX_ENTRIES: usize = 10_000;
/// Most lookups running at once.
pub const MAX_CONCURRENT: usize = 4;

/// How long found and unknown users stay cached.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    /// A user the query found.
    pub found: Duration,
    /// A name it did not.
    pub unknown: Duration,
    /// Connecting and running the query.
    pub timeout: Duration,
}

struct Entry {
    auth: Option<Arc<UserAuth>>,
    until: Instant,
}

/// The cache and the concurrency limit of `auth_query` lookups.
pub struct AuthQuery {
    entries: Mutex<HashMap<(Arc<str>, String), Entry>>,
    running: Semaphore,
}

impl Default for AuthQuery {
    fn default() -> Self {
        AuthQuery { entries: Mutex::new(HashMap::new()), running: Semaphore::new(MAX_CONCURRENT) }
    }
}

impl AuthQuery {
    /// The authentication data of `user` for `db` (`None`: no such user, or it may not log
    /// in). `Err`: the lookup itself failed, with the reason.
    pub async fn lookup(
        &self,
        cluster: &Cluster,
        db: &Database,
        user: &str,
        ttl: Ttl,
    ) -> Result<Option<Arc<UserAuth>>, String> {
        let Some(how) = &db.auth_lookup else { return Ok(None) };
        let key = (Arc::<str>::from(db.name.as_str()), user.to_string());
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let _permit = self.running.acquire().await.map_err(|_| "auth_query lookups are shut down".to_string())?;
        // Another login may have looked the same user up while this one waited.
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let addr = match cluster.primary() {
            Primary::Host(i) => cluster.hosts()[i].addr.clone(),
            _ => cluster.hosts()[0].addr.clone(),
        };
        let login = LoginParams {
            user: &how.user,
            database: &how.dbname,
            application_name: "pgsluice auth_query",
            keepalive: true,
            tls: &db.server_tls,
            auth: db.server_auth,
        };
        let cred = Credential { secret: how.secret.clone(), keys: None };
        let run = async {
            let mut conn = ServerConn::connect(&addr, &login, &cred, ttl.timeout).await?;
            let rows = conn.query_params(&how.query, &[user], 1).await;
            conn.terminate().await;
            rows
        };
        let rows = match tokio::time::timeout(ttl.timeout, run).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(format!("auth_query as \"{}\" on {addr} failed: {e}", how.user)),
            Err(_) => {
                return Err(format!("auth_query as \"{}\" on {addr}: no answer within {:?}", how.user, ttl.timeout))
            }
        };
        let auth = match rows.first().map(|r| r.get(1).cloned().flatten()) {
            // No row, or no password (NULL: no password set, or expired by the query).
            None | Some(None) => None,
            Some(Some(hash)) => match Secret::parse(&hash) {
                Ok(secret) => Some(Arc::new(UserAuth::new(secret))),
                Err(e) => return Err(format!("auth_query returned an unusable password for a user: {e}")),
            },
        };
        if rows.first().is_some_and(|r| r.len() < 2) {
            return Err("auth_query must return two columns (user name, password)".into());
        }
        let until = Instant::now() + if auth.is_some() { ttl.found } else { ttl.unknown };
        self.insert(key, Entry { auth: auth.clone(), until });
        Ok(auth)
    }

    /// A live cache entry.
    fn cached(&self, key: &(Arc<str>, String)) -> Option<Option<Arc<UserAuth>>> {
        let entries = self.entries.lock();
        entries.get(key).filter(|e| e.until > Instant::now()).map(|e| e.auth.clone())
    }

    fn insert(&self, key: (Arc<str>, String), entry: Entry) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, e| e.until > now);
            if entries.len() >= MAX_ENTRIES {
                // Still full of live entries: drop the one closest to expiry.
                if let Some(k) = entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| k.clone()) {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, entry);
    }

    /// Cached entries (for tests and the console).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_cache_is_bounded() {
        let q = AuthQuery::default();
        let key = |u: &str| (Arc::<str>::from("db"), u.to_string());
        let user = Some(Arc::new(UserAuth::new(Secret::Plain("pw".into()))));
        q.insert(key("a"), Entry { auth: user, until: Instant::now() + Duration::from_secs(60) });
        q.insert(key("b"), Entry { auth: None, until: Instant::now() + Duration::from_secs(10) });
        assert!(q.cached(&key("a")).unwrap().is_some());
        assert!(q.cached(&key("b")).unwrap().is_none(), "unknown, cached");
        assert!(q.cached(&key("c")).is_none(), "never looked up");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(q.cached(&key("b")).is_none(), "the negative entry expired");
        assert!(q.cached(&key("a")).is_some());
        for i in 0..MAX_ENTRIES + 10 {
            q.insert(key(&format!("u{i}")), Entry { auth: None, until: Instant::now() + Duration::from_secs(5) });
        }
        assert!(q.len() <= MAX_ENTRIES);
    }
}
