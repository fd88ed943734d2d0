//! Whether a provider-reported birth date makes the user an adult today, "today" being the
//! date in the user's own time zone at the moment Postgres says it is.
//!
//! Feb 29 birthdays: in a year without Feb 29 the birthday is taken to be Mar 1, the later of
//! the two readings, so nobody is counted 18 a day early (as in England and Wales; some
//! jurisdictions use Feb 28, which would admit a day earlier).

use chrono::{DateTime, Datelike, NaiveDate, Utc};

pub const ADULT_AGE: i32 = 18;

/// The date it is in `timezone` at `now`; an unknown zone name counts as UTC.
pub fn local_date(now: DateTime<Utc>, timezone: &str) -> NaiveDate {
    match timezone.parse::<chrono_tz::Tz>() {
        Ok(tz) => now.with_timezone(&tz).date_naive(),
        Err(_) => now.date_naive(),
    }
}

/// The date of the `years`th birthday: Feb 29 becomes Mar 1 in common years.
pub fn anniversary(birth: NaiveDate, years: i32) -> Option<NaiveDate> {
    let year = birth.year().checked_add(years)?;
    birth
        .with_year(year)
        .or_else(|| NaiveDate::from_ymd_opt(year, 3, 1))
}

pub fn is_adult(birth: NaiveDate, today: NaiveDate) -> bool {
    anniversary(birth, ADULT_AGE).is_some_and(|birthday| birthday <= today)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn exactly_eighteen_years_ago_is_adult_and_a_day_short_is_not() {
        assert!(is_adult(d(2008, 6, 15), d(2026, 6, 15)));
        assert!(!is_adult(d(2008, 6, 16), d(2026, 6, 15)));
    }

    #[test]
    fn feb_29_turns_eighteen_on_mar_1_in_a_common_year() {
        // 2008-02-29 + 18 years: 2026 has no Feb 29.
        assert!(!is_adult(d(2008, 2, 29), d(2026, 2, 28)));
        assert!(is_adult(d(2008, 2, 29), d(2026, 3, 1)));
    }

    #[test]
    fn a_feb_29_birth_always_turns_eighteen_in_a_common_year() {
        // 18 is not a multiple of 4, so the 18th birthday of a Feb 29 birth never falls on one.
        assert_eq!(anniversary(d(2004, 2, 29), ADULT_AGE), Some(d(2022, 3, 1)));
        assert_eq!(anniversary(d(2004, 2, 29), 20), Some(d(2024, 2, 29)));
    }

    #[test]
    fn the_date_is_the_one_in_the_users_zone() {
        let now: DateTime<Utc> = "2026-06-15T02:00:00Z".parse().unwrap();
        assert_eq!(local_date(now, "UTC"), d(2026, 6, 15));
        assert_eq!(local_date(now, "America/Los_Angeles"), d(2026, 6, 14));
        assert_eq!(local_date(now, "Not/AZone"), d(2026, 6, 15));
    }
}
