//! Peering settings (PgBouncer's `peer_id` and `[peers]`): this instance's id and where
//! the other instances of a group take connections, validated into [`Peer`]s.
//!
//! Invariants of a validated set: every key is an id in `1..=MAX_PEER_ID`, every host parses
//! (TCP `host:port` or a Unix socket directory), every `pool_size` is at least 1, and the
//! instance's own id is not in the map (its section, if any, is ignored so that all
//! instances can share one `[peers]` list).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;

use super::{BackendAddr, General, PeerSection};

/// Largest `peer_id` (PgBouncer's documented maximum: ids fit the cancel key's two
/// peer-id bytes with room to spare).
pub const MAX_PEER_ID: u16 = 16383;

/// Environment variable that overrides `[general] peer_id` ([`super::Config::load`]).
pub const PEER_ID_ENV: &str = "PGSLUICE_PEER_ID";

/// Port of a peer whose `host` names none (PgBouncer's default listen port).
const DEFAULT_PEER_PORT: u16 = 6432;

/// One other instance of the peered group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Where it listens (a Unix socket directory when the host is an absolute path).
    pub addr: BackendAddr,
    /// Most CancelRequests forwarded to it at once.
    pub pool_size: u32,
}

/// `PGSLUICE_PEER_ID` as a peer id (`0` turns peering off).
pub(super) fn peer_id_from_env(v: &OsStr) -> Result<u16, String> {
    v.to_str()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|&id| id <= MAX_PEER_ID)
        .ok_or_else(|| format!("{PEER_ID_ENV}={v:?} is not a peer id from 0 to {MAX_PEER_ID}"))
}

/// Checks `peer_id` and `[peers]`; the peers other than this instance.
pub(super) fn validate(g: &General, sections: &BTreeMap<String, PeerSection>) -> Result<HashMap<u16, Peer>, String> {
    if g.peer_id > MAX_PEER_ID {
        return Err(format!("[general] peer_id {} is out of range (0 = off, 1 to {MAX_PEER_ID})", g.peer_id));
    }
    let mut peers = HashMap::new();
    for (name, s) in sections {
        let id =
            name.parse::<u16>().ok().filter(|id| (1..=MAX_PEER_ID).contains(id)).ok_or_else(|| {
                format!("[peers.{name}]: a peer's name is its peer_id, a number from 1 to {MAX_PEER_ID}")
            })?;
        let addr = parse_host(&s.host).map_err(|e| format!("[peers.{name}] host: {e}"))?;
        if s.pool_size == Some(0) {
            return Err(format!("[peers.{name}] pool_size must be at least 1"));
        }
        if id != g.peer_id {
            peers.insert(id, Peer { addr, pool_size: s.pool_size.unwrap_or(g.default_pool_size) });
        }
    }
    Ok(peers)
}

/// A peer's `host`: as a database host, but the port defaults to 6432.
fn parse_host(spec: &str) -> Result<BackendAddr, String> {
    let mut addr = BackendAddr::parse(spec)?;
    let s = spec.trim();
    let port_given = match s.strip_prefix('[') {
        Some(rest) => rest.split_once(']').is_some_and(|(_, after)| after.starts_with(':')),
        None => s.rsplit_once(':').is_some_and(|(h, _)| !h.contains(':')),
    };
    if !port_given {
        addr.port = DEFAULT_PEER_PORT;
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(host: &str, pool_size: Option<u32>) -> PeerSection {
        PeerSection { host: host.into(), pool_size }
    }

    #[test]
    fn hosts_default_to_port_6432_and_may_be_unix_socket_directories() {
        let a = parse_host("10.0.0.1").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 6432));
        let a = parse_host("pgsluice-2.internal:7432").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("pgsluice-2.internal", 7432));
        let a = parse_host("[::1]").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 6432));
        let a = parse_host("[::1]:6500").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 6500));
        let a = parse_host("/run/pgsluice-2:6433").unwrap();
        assert!(a.is_unix_socket());
        assert_eq!(a.unix_socket_path(), "/run/pgsluice-2/.s.PGSQL.6433");
        assert!(parse_host("host:0").is_err());
        assert!(parse_host("").is_err());
    }

    #[test]
    fn ids_are_checked_and_the_own_section_is_ignored() {
        let mut g = General { peer_id: 2, default_pool_size: 7, ..General::default() };
        let mut s = BTreeMap::new();
        s.insert("1".to_string(), section("127.0.0.1:6001", Some(3)));
        s.insert("2".to_string(), section("127.0.0.1:6002", None));
        s.insert("3".to_string(), section("127.0.0.1:6003", None));
        let peers = validate(&g, &s).unwrap();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert_eq!(peers[&1].pool_size, 3);
        assert_eq!(peers[&3].pool_size, 7, "default_pool_size when not given");
        assert!(!peers.contains_key(&2));
        for bad in ["0", "16384", "x", "-1"] {
            let mut s = BTreeMap::new();
            s.insert(bad.to_string(), section("127.0.0.1", None));
            assert!(validate(&g, &s).unwrap_err().contains("peer_id"), "{bad}");
        }
        s.insert("4".to_string(), section("127.0.0.1", Some(0)));
        assert!(validate(&g, &s).unwrap_err().contains("pool_size"));
        g.peer_id = MAX_PEER_ID + 1;
        assert!(validate(&g, &BTreeMap::new()).unwrap_err().contains("out of range"));
    }

    #[test]
    fn the_environment_value_is_a_peer_id() {
        assert_eq!(peer_id_from_env(OsStr::new("7")), Ok(7));
        assert_eq!(peer_id_from_env(OsStr::new(" 0 ")), Ok(0));
        for bad in ["", "x", "16384", "-2", "70000"] {
            assert!(peer_id_from_env(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }
}
