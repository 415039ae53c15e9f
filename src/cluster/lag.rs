//! Replica lag from WAL positions: bytes = primary LSN − replica replay LSN; seconds = how
//! long ago the primary was at the position the replica has now replayed.
//!
//! The primary's position is sampled by its probe; [`History`] keeps the positions it was
//! seen at, each with the first and last moment it was seen there (a bounded ring), so an
//! idle primary adds nothing and a replica that replayed everything shows 0 s, while a
//! replica whose replay stopped shows a lag that grows from the moment the primary moved
//! past it. Between two samples the moment the primary passed a position is interpolated
//! (WAL is written at a roughly steady rate over one probe interval under load), so the lag
//! is right to a fraction of the probe interval rather than one interval too low.
//!
//! Invariant: samples are in time order with strictly increasing LSNs (a primary's WAL
//! position never goes back; the history is cleared when the primary changes), and each
//! sample's `first <= last`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Positions kept (at four probes a second, over eight minutes of a busy primary).
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

/// One WAL position of the primary and when it was seen there.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// First probe that saw the primary at `lsn`.
    first: Instant,
    /// Last probe that saw it there (before it moved on).
    last: Instant,
    lsn: u64,
}

/// Where the primary's WAL position was, and when; most recent last.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Records the primary at `lsn` at time `at`. A position lower than the last one (a new
    /// primary whose history was not cleared) restarts the history.
    pub fn record(&mut self, at: Instant, lsn: u64) {
        match self.samples.back_mut() {
            Some(s) if lsn == s.lsn => {
                s.last = s.last.max(at);
                return;
            }
            Some(s) if lsn < s.lsn => self.samples.clear(),
            _ => {}
        }
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { first: at, last: at, lsn });
    }

    /// Forgets everything (the primary changed).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The primary's latest known position.
    pub fn latest(&self) -> Option<u64> {
        self.samples.back().map(|s| s.lsn)
    }

    /// Lag of a replica that has replayed up to `replay`, at `now`; `None` when the primary
    /// was never sampled.
    pub fn lag(&self, replay: u64, now: Instant) -> Option<Lag> {
        let latest = self.latest()?;
        if replay >= latest {
            return Some(Lag { bytes: 0, time: Duration::ZERO });
        }
        Some(Lag { bytes: latest - replay, time: now.saturating_duration_since(self.passed(replay)) })
    }

    /// When the primary passed `replay` (which is below the latest position): between the
    /// last moment it was seen at or before `replay` and the first moment it was seen past
    /// it, in proportion to the WAL written in between. If even the oldest sample is past
    /// `replay`, its first moment (the lag is at least that old).
    fn passed(&self, replay: u64) -> Instant {
        let i = self.samples.partition_point(|s| s.lsn <= replay);
        let next = self.samples[i.min(self.samples.len() - 1)];
        let Some(prev) = i.checked_sub(1).map(|p| self.samples[p]) else { return next.first };
        let gap = next.first.saturating_duration_since(prev.last);
        let written = next.lsn - prev.lsn;
        let done = replay - prev.lsn;
        // (u128: a gap of hours in nanoseconds times a WAL distance of terabytes.)
        let nanos = gap.as_nanos() * u128::from(done) / u128::from(written);
        prev.last + Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
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
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let mut h = History::default();
        h.record(t0, 100);
        h.record(t0 + s(1), 150);
        h.record(t0 + s(2), 200);
        h.record(t0 + s(3), 300);
        // Replayed up to 150: the primary was last seen there at t0+1.
        assert_eq!(h.lag(150, t0 + s(3)), Some(Lag { bytes: 150, time: s(2) }));
        assert_eq!(h.lag(150, t0 + s(10)), Some(Lag { bytes: 150, time: s(9) }));
        // Between samples: 120 is 20 of the 50 bytes written between t0 and t0+1.
        assert_eq!(h.lag(120, t0 + s(3)).unwrap().time, ms(2600));
        assert_eq!(h.lag(250, t0 + s(3)).unwrap().time, ms(500));
        // Older than the history: at least as old as the oldest sample.
        assert_eq!(h.lag(10, t0 + s(3)).unwrap().time, s(3));
        // Caught up (or ahead of the last sample).
        assert_eq!(h.lag(300, t0 + s(3)).unwrap().time, Duration::ZERO);
        assert_eq!(h.lag(999, t0 + s(3)).unwrap().bytes, 0);
    }

    #[test]
    fn steady_load_lag_is_exact_between_probes() {
        // The primary writes 1,000 bytes a second and is probed once a second; a replica
        // replays 0.7 s behind. The old change-point estimate said 0 to 0.3 s here.
        let t0 = Instant::now();
        let mut h = History::default();
        for k in 0..=10u64 {
            h.record(t0 + Duration::from_secs(k), 1_000 * k);
        }
        for probe_ms in [10_000u64, 10_050, 10_400, 10_690] {
            // (One byte a millisecond: the replica has what the primary had 700 ms ago.)
            let lag = h.lag(probe_ms - 700, t0 + Duration::from_millis(probe_ms)).unwrap();
            assert_eq!(lag.time, Duration::from_millis(700), "probe at {probe_ms} ms");
        }
    }

    #[test]
    fn a_write_after_an_idle_stretch_counts_from_the_end_of_the_stretch() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = History::default();
        for k in 0..=10 {
            h.record(t0 + s(k), 100);
        }
        h.record(t0 + s(11), 200);
        // The write happened between t0+10 (last seen idle) and t0+11, not since t0.
        assert_eq!(h.lag(150, t0 + s(11)).unwrap().time, Duration::from_millis(500));
        assert_eq!(h.lag(100, t0 + s(11)).unwrap().time, s(1));
        // A replica that replayed everything before the write: 0 while the primary idles.
        assert_eq!(h.lag(100, t0 + s(10)).unwrap().time, Duration::ZERO);
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
