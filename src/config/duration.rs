//! `Dur`: a typed duration for config files. Accepts `"15s"`, `"500ms"`, `"2m"`, `"1h"`,
//! or a bare number of seconds (PgBouncer style); `0` means "disabled" where the setting
//! says so. Serializes back in humantime form for `check-config`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// From whole seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    /// From milliseconds.
    pub const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    /// `None` when zero ("disabled"), else the duration.
    pub fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0s")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"15s\", \"500ms\", \"2m\", or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v).map(Dur::secs).map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::secs(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("a duration must be a finite, non-negative number of seconds"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                let t = v.trim();
                if t == "0" {
                    return Ok(Dur::default());
                }
                humantime::parse_duration(t).map(Dur).map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Dur,
    }

    fn parse(s: &str) -> Result<Dur, toml::de::Error> {
        toml::from_str::<T>(&format!("d = {s}")).map(|t| t.d)
    }

    #[test]
    fn parses_forms() {
        assert_eq!(parse("\"15s\"").unwrap(), Dur::secs(15));
        assert_eq!(parse("\"500ms\"").unwrap(), Dur(Duration::from_millis(500)));
        assert_eq!(parse("\"2m\"").unwrap(), Dur::secs(120));
        assert_eq!(parse("30").unwrap(), Dur::secs(30));
        assert_eq!(parse("0.25").unwrap(), Dur(Duration::from_millis(250)));
        assert_eq!(parse("\"0\"").unwrap().nonzero(), None);
        assert!(parse("-1").is_err());
        assert!(parse("\"soon\"").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for d in [Dur::secs(0), Dur::secs(3600), Dur(Duration::from_millis(1500))] {
            assert_eq!(parse(&format!("\"{d}\"")).unwrap(), d);
        }
    }
}
