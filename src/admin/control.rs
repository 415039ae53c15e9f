//! Admin commands that change state: PAUSE/RESUME, KILL/KILL_CLIENT, DISABLE/ENABLE,
//! RECONNECT/WAIT_CLOSE, RELOAD, SET and SHUTDOWN, with PgBouncer's semantics and command
//! tags. Commands that wait (PAUSE, WAIT_CLOSE) poll the state they wait for every 50 ms,
//! holding no lock between polls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::parse::Command;
use crate::error::{ClientError, ErrorSource};
use crate::protocol::write;
use crate::shared::Shared;
use crate::shutdown::StopMode;

const POLL: Duration = Duration::from_millis(50);

fn err(code: &'static str, message: impl Into<String>) -> ClientError {
    ClientError::error(code, message.into(), ErrorSource::Client)
}

/// The databases a command names: one (which must exist and not be the console), or all.
fn targets(shared: &Shared, db: Option<&str>, verb: &str) -> Result<Vec<String>, ClientError> {
    let cfg = shared.config.load();
    match db {
        Some(d) if d == cfg.general().admin_database => Err(err("55000", format!("cannot {verb} admin db: {d}"))),
        Some(d) if !cfg.databases.contains_key(d) => Err(err("3D000", format!("no such database: {d}"))),
        Some(d) => Ok(vec![d.to_string()]),
        None => {
            let mut v: Vec<String> = cfg.databases.keys().cloned().collect();
            v.sort();
            Ok(v)
        }
    }
}

/// Server connections of `db` checked out by clients right now.
fn busy_servers(shared: &Shared, db: &str) -> u32 {
    shared
        .pools
        .sets()
        .iter()
        .filter(|((d, _), _)| d == db)
        .flat_map(|(_, s)| s.pools().iter())
        .map(|p| p.in_use())
        .sum()
}

/// Runs a non-`SHOW` command, appending its answer to `out`.
pub async fn run(shared: &Arc<Shared>, cmd: Command, out: &mut BytesMut) -> Result<(), ClientError> {
    match cmd {
        // Dispatched by the caller.
        Command::Show(_) => {}
        Command::Pause(db) => {
            let dbs = targets(shared, db.as_deref(), "pause")?;
            if db.is_some() && shared.control(&dbs[0]).is_paused() {
                return Err(err("55000", "already suspended/paused"));
            }
            if db.is_none() && shared.paused_all.swap(true, Ordering::AcqRel) {
                return Err(err("55000", "already suspended/paused"));
            }
            for d in &dbs {
                shared.control(d).pause();
            }
            // Returns once every server connection is released; they are closed then.
            for d in &dbs {
                while busy_servers(shared, d) > 0 {
                    tokio::time::sleep(POLL).await;
                }
                for (_, set) in shared.pools.sets().into_iter().filter(|((x, _), _)| x == d) {
                    for p in set.pools() {
                        p.close_idle();
                    }
                }
            }
            write::command_complete(out, "PAUSE");
        }
        Command::Resume(db) => {
            let dbs = targets(shared, db.as_deref(), "resume")?;
            match &db {
                Some(d) if !shared.control(d).is_paused() => {
                    return Err(err("55000", format!("database {d} is not paused")))
                }
                None if !shared.paused_all.load(Ordering::Acquire)
                    && !dbs.iter().any(|d| shared.control(d).is_paused()) =>
                {
                    return Err(err("55000", "pooler is not paused/suspended"))
                }
                _ => {}
            }
            if db.is_none() {
                shared.paused_all.store(false, Ordering::Release);
            }
            for d in &dbs {
                shared.control(d).resume();
            }
            write::command_complete(out, "RESUME");
        }
        Command::Disable(db) => {
            let dbs = targets(shared, Some(&db), "disable")?;
            shared.control(&dbs[0]).set_disabled(true);
            write::command_complete(out, "DISABLE");
        }
        Command::Enable(db) => {
            let dbs = targets(shared, Some(&db), "enable")?;
            shared.control(&dbs[0]).set_disabled(false);
            write::command_complete(out, "ENABLE");
        }
        Command::Kill(db) => {
            let dbs = targets(shared, Some(&db), "kill")?;
            let d = &dbs[0];
            // As in PgBouncer, a killed database stays paused until RESUME.
            shared.control(d).pause();
            let mut killed = 0;
            for c in shared.clients.all() {
                if !c.admin && c.database.as_ref() == d.as_str() {
                    c.kill();
                    killed += 1;
                }
            }
            for (_, set) in shared.pools.sets().into_iter().filter(|((x, _), _)| x == d) {
                for p in set.pools() {
                    p.close_idle();
                }
            }
            if let Some(c) = shared.cluster(d) {
                for h in c.hosts() {
                    h.drain();
                }
            }
            tracing::info!(db = %d, clients = killed, "KILL: clients disconnected, database paused");
            write::command_complete(out, "KILL");
        }
        Command::KillClient(id) => {
            match shared.clients.all().into_iter().find(|c| c.id == id) {
                Some(c) => c.kill(),
                None => return Err(err("55000", "client not found")),
            }
            write::command_complete(out, "KILL_CLIENT");
        }
        Command::Reconnect(db) => {
            for d in targets(shared, db.as_deref(), "reconnect")? {
                if let Some(c) = shared.cluster(&d) {
                    for h in c.hosts() {
                        h.drain();
                    }
                }
            }
            write::command_complete(out, "RECONNECT");
        }
        Command::WaitClose(db) => {
            let dbs = targets(shared, db.as_deref(), "wait in")?;
            loop {
                let pending = shared
                    .pools
                    .sets()
                    .iter()
                    .filter(|((d, _), _)| dbs.contains(d))
                    .flat_map(|(_, s)| s.pools().iter())
                    .flat_map(|p| p.servers())
                    .any(|s| s.close_needed);
                if !pending {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            write::command_complete(out, "WAIT_CLOSE");
        }
        Command::Reload => match crate::reload::reload(shared) {
            Ok(report) => {
                for line in report.notices() {
                    write::notice(out, &line);
                }
                write::command_complete(out, "RELOAD");
            }
            Err(e) => {
                tracing::error!(error = %e, "RELOAD failed; keeping the running configuration");
                return Err(err("F0000", format!("RELOAD failed: {e}")));
            }
        },
        Command::Set(key, value) => match crate::reload::set(shared, &key, &value) {
            Ok(report) => {
                for line in report.notices() {
                    write::notice(out, &line);
                }
                write::command_complete(out, &format!("SET {key}={value}"));
            }
            Err(e) => return Err(err("22023", format!("SET failed: {e}"))),
        },
        Command::Shutdown(mode) => {
            shared.request_stop(mode);
            // A plain SHUTDOWN gets no answer (the process is gone), as in PgBouncer.
            if mode != StopMode::Immediate {
                write::command_complete(out, "SHUTDOWN");
            }
        }
    }
    Ok(())
}

/// SIGUSR1: pauses every database (new requests wait), without waiting for running ones.
pub fn pause_all(shared: &Shared) {
    shared.paused_all.store(true, Ordering::Release);
    for d in shared.config.load().databases.keys() {
        shared.control(d).pause();
    }
}

/// SIGUSR2: resumes every database.
pub fn resume_all(shared: &Shared) {
    shared.paused_all.store(false, Ordering::Release);
    for d in shared.config.load().databases.keys() {
        shared.control(d).resume();
    }
}
