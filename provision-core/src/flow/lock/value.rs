//! What a lock tag's value says, written with `Display` and read with `FromStr`, and nowhere
//! else.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::balena::VarTarget;

/// What a lock is taken for, when its holder does not release it: done once the state shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::flow) enum Goal {
    /// Nothing of the device left (a DELETE).
    Gone,
    /// The key with this fingerprint in use, named by the variables (a new device's POST),
    /// with the private key stored beside them where `private` (the function made the key);
    /// where `sole` (a rotation), also the only credential of the function's left.
    Key {
        key: String,
        private: bool,
        sole: bool,
    },
}

/// A lock tag's value: `<holder> until <unix ms>[ goal gone| goal key <fingerprint>[ private][
/// sole] for <target>][ released]`, the target being `device` or `service-<install id>`. Written
/// with `Display`, read with `FromStr`, and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::flow) struct LockValue {
    pub(in crate::flow) holder: String,
    pub(in crate::flow) until: u64,
    /// The goal and the variables' target it is about.
    pub(in crate::flow) goal: Option<(Goal, String)>,
    pub(in crate::flow) released: bool,
}

impl fmt::Display for LockValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} until {}", self.holder, self.until)?;
        match &self.goal {
            None => {}
            Some((Goal::Gone, target)) => write!(f, " goal gone for {target}")?,
            Some((Goal::Key { key, private, sole }, target)) => {
                let private = if *private { " private" } else { "" };
                let sole = if *sole { " sole" } else { "" };
                write!(f, " goal key {key}{private}{sole} for {target}")?
            }
        }
        if self.released {
            f.write_str(" released")?;
        }
        Ok(())
    }
}

/// A lock value that cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::flow) struct Unreadable;

impl FromStr for LockValue {
    type Err = Unreadable;

    fn from_str(value: &str) -> Result<Self, Unreadable> {
        let words: Vec<&str> = value.split_whitespace().collect();
        let after = |word: &str| {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let holder = words.first().ok_or(Unreadable)?.to_string();
        let until = after("until")
            .and_then(|u| u.parse().ok())
            .ok_or(Unreadable)?;
        // The goal's own words, after the holder and its expiry.
        let flagged = |flag: &str| words.iter().skip(3).any(|w| *w == flag);
        let goal = match after("goal") {
            None => None,
            Some("gone") => Some(Goal::Gone),
            // An earlier version reads a `sole` goal as a plain key goal (it ignores the word).
            Some("key") => Some(Goal::Key {
                key: after("key").ok_or(Unreadable)?.to_owned(),
                private: flagged("private"),
                sole: flagged("sole"),
            }),
            Some(_) => return Err(Unreadable),
        };
        let goal = match goal {
            Some(goal) => Some((goal, after("for").ok_or(Unreadable)?.to_owned())),
            None => None,
        };
        Ok(LockValue {
            holder,
            until,
            goal,
            released: words.last() == Some(&"released"),
        })
    }
}

impl LockValue {
    /// A tag's value as the flow judges it: an unreadable one counts as expired.
    pub(in crate::flow) fn read(value: &str) -> LockValue {
        value.parse().unwrap_or(LockValue {
            holder: String::new(),
            until: 0,
            goal: None,
            released: false,
        })
    }

    /// Free whatever the device's state: released, expired, or with an expiry further ahead
    /// than any holder sets (longest budget + grace + clock skew), which is garbage a device's
    /// key wrote, not a lock.
    pub(in crate::flow) fn is_free_by_itself(&self) -> bool {
        let now = now_ms();
        self.released || self.until < now || self.until > now.saturating_add(MAX_HOLD_MS)
    }
}

/// How a lock's value names the variables' target.
pub(super) fn target_word(target: VarTarget) -> String {
    match target {
        VarTarget::Device { .. } => "device".to_owned(),
        VarTarget::Service { service_install_id } => format!("service-{service_install_id}"),
    }
}

/// The furthest ahead a holder sets its lock's expiry: the longest request budget
/// (`PROVISION_REQUEST_BUDGET_MS` ≤ 900 s), the 5 s grace, and a minute of clock skew.
const MAX_HOLD_MS: u64 = 900_000 + 5_000 + 60_000;

pub(in crate::flow) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(goal: Option<(Goal, &str)>, released: bool) -> LockValue {
        LockValue {
            holder: "req-1".into(),
            until: 1_700_000_000_000,
            goal: goal.map(|(g, t)| (g, t.to_owned())),
            released,
        }
    }

    #[test]
    fn written_values_read_back() {
        let key = Goal::Key {
            key: "0a1b".into(),
            private: true,
            sole: false,
        };
        let public = Goal::Key {
            key: "ff".into(),
            private: false,
            sole: false,
        };
        let rotated = Goal::Key {
            key: "77".into(),
            private: true,
            sole: true,
        };
        for v in [
            value(None, false),
            value(None, true),
            value(Some((Goal::Gone, "device")), false),
            value(Some((Goal::Gone, "service-12")), true),
            value(Some((key, "device")), true),
            value(Some((public, "service-3")), false),
            value(Some((rotated, "device")), false),
        ] {
            assert_eq!(v.to_string().parse::<LockValue>(), Ok(v.clone()), "{v}");
        }
    }

    #[test]
    fn values_of_earlier_versions_read() {
        let v: LockValue = "abc-1 until 1700000000000 goal key 0a1b private for device released"
            .parse()
            .unwrap();
        assert_eq!(
            v.goal,
            Some((
                Goal::Key {
                    key: "0a1b".into(),
                    private: true,
                    sole: false,
                },
                "device".into()
            ))
        );
        assert!(v.released);
        assert_eq!("x until 7".parse::<LockValue>().map(|v| v.goal), Ok(None));
    }

    #[test]
    fn unreadable_values_count_as_expired() {
        for garbage in [
            "",
            "garbage",
            "x until soon",
            "x until 5 goal what for device",
        ] {
            assert_eq!(garbage.parse::<LockValue>(), Err(Unreadable), "{garbage:?}");
            let read = LockValue::read(garbage);
            assert_eq!(read.until, 0);
            assert!(read.is_free_by_itself());
        }
    }

    #[test]
    fn free_by_itself() {
        let now = now_ms();
        let at = |until| LockValue {
            until,
            ..value(None, false)
        };
        assert!(!at(now + 10_000).is_free_by_itself(), "held");
        assert!(at(now - 1).is_free_by_itself(), "expired");
        assert!(
            at(now + MAX_HOLD_MS + 60_000).is_free_by_itself(),
            "further ahead than any holder sets: garbage"
        );
        let released = LockValue {
            released: true,
            ..at(now + 10_000)
        };
        assert!(released.is_free_by_itself());
    }
}
