//! Per-user preferences: categories on or off, quiet hours in the user's IANA zone, the email
//! digest. Quiet hours defer push to the end of the window (never drop it), computed on the
//! local wall clock so a window across midnight or a DST change ends at the local time the
//! user chose.

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::Category;

/// A window such as 22:00–07:00; `start == end` is no window at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// When the window `now` falls in ends, or `None` outside quiet hours. The end is the
    /// first instant whose local time is `end`; if DST skips that local time, the first
    /// local time after the gap.
    pub fn deferred_until(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&zone);
        let time = local.time();
        let (quiet, ends_tomorrow) = if self.start < self.end {
            (self.start <= time && time < self.end, false)
        } else if self.start > self.end {
            // Across midnight: before midnight it ends tomorrow, after midnight today.
            (time >= self.start || time < self.end, time >= self.start)
        } else {
            (false, false)
        };
        if !quiet {
            return None;
        }
        let day = if ends_tomorrow {
            local.date_naive() + Duration::days(1)
        } else {
            local.date_naive()
        };
        let mut end = day.and_time(self.end);
        // A DST gap is at most a few hours; walk forward until the local time exists.
        for _ in 0..(24 * 60) {
            match zone.from_local_datetime(&end) {
                LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
                LocalResult::None => end += Duration::minutes(1),
            }
        }
        None
    }
}

/// The categories as stored (`notification_preferences.categories`) and returned by the API.
/// Missing keys take the defaults: everything on except marketing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Categories {
    #[serde(default = "on")]
    pub social: bool,
    #[serde(default = "on")]
    pub picks: bool,
    #[serde(default = "on")]
    pub payments: bool,
    #[serde(default = "on")]
    pub verification: bool,
    #[serde(default)]
    pub marketing: bool,
}

fn on() -> bool {
    true
}

impl Default for Categories {
    fn default() -> Self {
        Categories {
            social: true,
            picks: true,
            payments: true,
            verification: true,
            marketing: false,
        }
    }
}

impl Categories {
    pub fn from_json(value: Option<serde_json::Value>) -> Self {
        value
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    pub fn allows(&self, category: Category) -> bool {
        match category {
            Category::Social => self.social,
            Category::Picks => self.picks,
            Category::Payments => self.payments,
            Category::Verification => self.verification,
            Category::Marketing => self.marketing,
        }
    }
}

/// A user's zone, falling back to UTC for a name chrono-tz does not know (the API validates
/// names on write; this guards rows written before).
pub fn zone(name: Option<&str>) -> Tz {
    name.and_then(|n| n.parse().ok()).unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ny() -> Tz {
        "America/New_York".parse().unwrap()
    }

    fn night() -> QuietHours {
        QuietHours {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn before_midnight_defers_to_seven_the_next_morning() {
        // 23:30 EST on 14 Jan = 04:30 UTC on 15 Jan; 07:00 EST = 12:00 UTC.
        assert_eq!(
            night().deferred_until(utc("2026-01-15T04:30:00Z"), ny()),
            Some(utc("2026-01-15T12:00:00Z"))
        );
    }

    #[test]
    fn after_midnight_defers_to_seven_the_same_morning() {
        assert_eq!(
            night().deferred_until(utc("2026-01-15T08:00:00Z"), ny()),
            Some(utc("2026-01-15T12:00:00Z"))
        );
    }

    #[test]
    fn outside_the_window_sends_now() {
        // 07:00 EST exactly and 21:59 EST are outside.
        assert_eq!(
            night().deferred_until(utc("2026-01-15T12:00:00Z"), ny()),
            None
        );
        assert_eq!(
            night().deferred_until(utc("2026-01-16T02:59:00Z"), ny()),
            None
        );
    }

    #[test]
    fn across_the_spring_forward_night_ends_at_seven_daylight_time() {
        // 8 March 2026: clocks jump 02:00 EST → 03:00 EDT. 23:00 EST on the 7th is 04:00 UTC;
        // 07:00 EDT on the 8th is 11:00 UTC, not 12:00.
        assert_eq!(
            night().deferred_until(utc("2026-03-08T04:00:00Z"), ny()),
            Some(utc("2026-03-08T11:00:00Z"))
        );
    }

    #[test]
    fn across_the_fall_back_night_ends_at_seven_standard_time() {
        // 1 November 2026: 02:00 EDT → 01:00 EST. 01:30 happens twice; both are quiet, and
        // 07:00 EST is 12:00 UTC.
        let quiet = night();
        assert_eq!(
            quiet.deferred_until(utc("2026-11-01T05:30:00Z"), ny()),
            Some(utc("2026-11-01T12:00:00Z"))
        );
        assert_eq!(
            quiet.deferred_until(utc("2026-11-01T06:30:00Z"), ny()),
            Some(utc("2026-11-01T12:00:00Z"))
        );
    }

    #[test]
    fn an_end_inside_the_dst_gap_moves_to_the_first_time_after_it() {
        // Window 01:00–02:30; 02:30 does not exist on 8 March 2026 in New York.
        let quiet = QuietHours {
            start: NaiveTime::from_hms_opt(1, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
        };
        // 01:30 EST = 06:30 UTC; the first existing local time after 02:30 is 03:00 EDT.
        assert_eq!(
            quiet.deferred_until(utc("2026-03-08T06:30:00Z"), ny()),
            Some(utc("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn a_daytime_window_does_not_wrap() {
        let quiet = QuietHours {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
        };
        assert_eq!(
            quiet.deferred_until(utc("2026-01-15T15:00:00Z"), ny()),
            Some(utc("2026-01-15T22:00:00Z"))
        );
        assert_eq!(
            quiet.deferred_until(utc("2026-01-15T23:00:00Z"), ny()),
            None
        );
    }

    #[test]
    fn missing_categories_take_the_defaults() {
        let c = Categories::from_json(Some(serde_json::json!({"social": false})));
        assert!(!c.allows(Category::Social));
        assert!(c.allows(Category::Picks));
        assert!(!c.allows(Category::Marketing));
    }

    /// Delivery reads a notification's category back from the name its row stores (`as_str`),
    /// the name clients use too (serde's).
    #[test]
    fn a_category_parses_from_the_name_it_is_stored_under() {
        for category in Category::ALL {
            let stored = serde_json::to_value(category).unwrap();
            assert_eq!(Category::parse(stored.as_str().unwrap()), Some(category));
        }
        assert_eq!(Category::parse("promotions"), None);
    }
}
