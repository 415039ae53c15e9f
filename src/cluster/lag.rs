//! Replica lag from WAL positions: bytes = primary LSN − replica replay LSN; seconds = how
//! long ago the primary was at the position the replica has now replayed.
//!
//! The primary's position is sampled by its probe; [`History`] keeps the moments the
//! position *changed* (a bounded ring), so an idle primary adds nothing and a replica that
//! replayed everything shows 0 s, while a replica whose replay stopped shows a lag that grows
//! from the moment the primary moved past it. Granularity is one probe interval: the lag is
//! never over-estimated by more than that.
//!
//! Invariant: samples are in time order with strictly increasing LSNs (a primary's WAL
//! position never goes back; the history is cleared when the primary changes).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Change points kept (at one probe a second, over half an hour of a busy primary).
const CAPACITY: usize = 2048;

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Formats an LSN the way PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The WAL position `insert_lsn` stands for as far as replay goes: at the start of a WAL
/// page the insert position points past the page header (24 bytes, 40 at a segment start),
/// while a replica that has replayed everything reports the boundary itself. No record ends
/// inside a page header, so the boundary is what a replica must have reached.
pub fn record_boundary(insert_lsn: u64) -> u64 {
    const WAL_PAGE: u64 = 8192;
    match insert_lsn % WAL_PAGE {
        24 | 40 => insert_lsn - insert_lsn % WAL_PAGE,
        _ => insert_lsn,
    }
}

/// A replica's lag behind the primary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// WAL bytes not yet replayed.
    pub bytes: u64,
    /// Time since the primary passed the replayed position.
    pub time: Duration,
}

/// When the primary's WAL position changed, most recent last.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(Instant, u64)>,
}

impl History {
    /// Records the primary at `lsn` at time `at`. A position lower than the last one (a new
    /// primary whose history was not cleared) restarts the history.
    pub fn record(&mut self, at: Instant, lsn: u64) {
        match self.samples.back() {
            Some(&(_, last)) if lsn == last => return,
            Some(&(_, last)) if lsn < last => self.samples.clear(),
            _ => {}
        }
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// Forgets everything (the primary changed).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The primary's latest known position.
    pub fn latest(&self) -> Option<u64> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// Lag of a replica that has replayed up to `replay`, at `now`; `None` when the primary
    /// was never sampled.
    pub fn lag(&self, replay: u64, now: Instant) -> Option<Lag> {
        let latest = self.latest()?;
        if replay >= latest {
            return Some(Lag { bytes: 0, time: Duration::ZERO });
        }
        // The first moment the primary was seen past `replay`; if even the oldest sample is
        // past it, the lag is at least that old.
        let i = self.samples.partition_point(|&(_, l)| l <= replay);
        let since = self.samples[i.min(self.samples.len() - 1)].0;
        Some(Lag { bytes: latest - replay, time: now.saturating_duration_since(since) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/"), None);
        assert_eq!(parse_lsn("1FFFFFFFF/0"), None);
    }

    #[test]
    fn record_boundary_skips_page_headers_only() {
        assert_eq!(record_boundary(0x500_0028), 0x500_0000, "segment start: long header");
        assert_eq!(record_boundary(0x500_2018), 0x500_2000, "page start: short header");
        assert_eq!(record_boundary(0x500_2060), 0x500_2060);
        assert_eq!(record_boundary(0x500_2000), 0x500_2000);
    }

    #[test]
    fn idle_primary_means_no_lag() {
        let t0 = Instant::now();
        let mut h = History::default();
        assert_eq!(h.lag(5, t0), None);
        h.record(t0, 100);
        h.record(t0 + Duration::from_secs(1), 100);
        h.record(t0 + Duration::from_secs(2), 100);
        let lag = h.lag(100, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(lag, Lag { bytes: 0, time: Duration::ZERO });
    }

    #[test]
    fn stopped_replay_lag_grows_from_when_the_primary_moved_past() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = History::default();
        h.record(t0, 100);
        h.record(t0 + s(1), 150);
        h.record(t0 + s(2), 200);
        h.record(t0 + s(3), 300);
        // Replayed up to 150: the primary passed it when first seen at 200 (t0+2).
        assert_eq!(h.lag(150, t0 + s(3)), Some(Lag { bytes: 150, time: s(1) }));
        assert_eq!(h.lag(150, t0 + s(10)), Some(Lag { bytes: 150, time: s(8) }));
        // Between samples: 120 was passed by the sample at 150 (t0+1).
        assert_eq!(h.lag(120, t0 + s(3)).unwrap().time, s(2));
        // Older than the history: at least as old as the oldest sample.
        assert_eq!(h.lag(10, t0 + s(3)).unwrap().time, s(3));
        // Caught up (or ahead of the last sample).
        assert_eq!(h.lag(300, t0 + s(3)).unwrap().time, Duration::ZERO);
        assert_eq!(h.lag(999, t0 + s(3)).unwrap().bytes, 0);
    }

    #[test]
    fn going_back_restarts_and_capacity_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..(CAPACITY as u64 + 10) {
            h.record(t0 + Duration::from_millis(i), i + 1);
        }
        assert_eq!(h.samples.len(), CAPACITY);
        h.record(t0, 5);
        assert_eq!(h.samples.len(), 1);
        assert_eq!(h.latest(), Some(5));
    }
}
