//! The command clock (时限): how much of a time limit a stage or a whole case has used, on the work
//! calendar, and the light it shows (green under 80 %, yellow from 80 % to 100 %, red beyond: 超期).
//!
//! Pure arithmetic over a [`WorkCalendar`]: the caller says when the clock started, which spans it
//! was stopped (挂账, HUNG, is excluded from the clock), how long approved extensions (延期) add,
//! and what time it is now. Nothing here reads a clock of its own, so tests run days of deadlines in
//! microseconds and every tier computes the same figures from the same history.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, FixedOffset, NaiveDateTime, Utc};

use crate::calendar::WorkCalendar;

/// China Standard Time (UTC+8, no daylight saving): working hours, calendar days and case numbers
/// are counted in it.
pub fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("8 h is a valid offset"))
}

/// A moment as China's wall-clock time, as the work calendar reads it.
pub fn china_time(at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(&china()).naive_local()
}

/// The unit of a time limit, as `seeds/` and the API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitUnit {
    /// Wall-clock minutes, nights and holidays included (立案+派遣 within 30 minutes: a command
    /// center is staffed around the clock).
    Minutes,
    /// Working minutes: like working hours, only the working periods of working days count (a
    /// department's 90 working minutes stop over the lunch break and the night).
    WorkingMinutes,
    /// Working hours: only the working periods of working days count (暴露垃圾 4 working hours).
    WorkingHours,
    /// Working days: the same time of day that many working days later (私搭乱建 20 working days).
    WorkingDays,
}

impl LimitUnit {
    pub fn name(self) -> &'static str {
        match self {
            LimitUnit::Minutes => "minutes",
            LimitUnit::WorkingMinutes => "working_minutes",
            LimitUnit::WorkingHours => "working_hours",
            LimitUnit::WorkingDays => "working_days",
        }
    }
}

impl FromStr for LimitUnit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minutes" => Ok(LimitUnit::Minutes),
            "working_minutes" => Ok(LimitUnit::WorkingMinutes),
            "working_hours" => Ok(LimitUnit::WorkingHours),
            "working_days" => Ok(LimitUnit::WorkingDays),
            other => Err(format!(
                "unknown time unit {other:?}: expected minutes, working_minutes, working_hours \
                 or working_days"
            )),
        }
    }
}

/// A time limit (时限): an amount of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub amount: u32,
    pub unit: LimitUnit,
}

impl Limit {
    pub fn minutes(amount: u32) -> Limit {
        Limit {
            amount,
            unit: LimitUnit::Minutes,
        }
    }

    pub fn working_minutes(amount: u32) -> Limit {
        Limit {
            amount,
            unit: LimitUnit::WorkingMinutes,
        }
    }

    pub fn working_hours(amount: u32) -> Limit {
        Limit {
            amount,
            unit: LimitUnit::WorkingHours,
        }
    }

    pub fn working_days(amount: u32) -> Limit {
        Limit {
            amount,
            unit: LimitUnit::WorkingDays,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.unit.name().replace('_', " "))
    }
}

/// The traffic light of a limit (红黄绿灯).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Light {
    /// Under 80 % of the limit used.
    Green,
    /// From 80 % up to and including 100 %: 督办 is raised on entering it.
    Yellow,
    /// Beyond 100 %: overdue (超期).
    Red,
}

impl Light {
    /// The light for a share of the limit used (1.0 = all of it).
    pub fn of_share(share: f64) -> Light {
        if share > 1.0 {
            Light::Red
        } else if share >= 0.8 {
            Light::Yellow
        } else {
            Light::Green
        }
    }
}

/// How the clock of a stage or a case stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// When the limit (with its extensions and the stopped spans so far) runs out. While the clock
    /// is stopped this moves: it is computed as if the clock restarted now.
    pub deadline: NaiveDateTime,
    /// The time counted against the limit so far (working time for working units).
    pub used: Duration,
    /// The whole limit, extensions included, in the same measure as `used`.
    pub allowed: Duration,
    /// Share of the limit used: `used / allowed` (0 for an empty limit not yet reached, infinite
    /// past an empty one).
    pub share: f64,
    pub light: Light,
    /// The clock is stopped now (the case is HUNG).
    pub stopped: bool,
    /// The clock counts working time, and its span (from its start to the deadline or to now,
    /// whichever is later) reaches into a year whose calendar was not loaded: those days were
    /// counted as ordinary weekdays, so the deadline may be off by that year's holidays and
    /// 调休 days. A limit in minutes needs no calendar and is never flagged.
    pub beyond_calendar: bool,
}

impl Standing {
    /// What is left of the limit (negative once overdue), in the measure of the limit.
    pub fn left(&self) -> Duration {
        self.allowed - self.used
    }
}

/// A clock: started at `started`, stopped over `stops` (each `(from, until)`; `until` None while
/// it is stopped now), its limit extended by `extensions`.
#[derive(Debug, Clone, Copy)]
pub struct Clock<'a> {
    pub calendar: &'a WorkCalendar,
    pub limit: Limit,
    pub started: NaiveDateTime,
    pub stops: &'a [(NaiveDateTime, Option<NaiveDateTime>)],
    pub extensions: &'a [Limit],
}

impl Clock<'_> {
    /// How the clock stands at `now`.
    pub fn at(&self, now: NaiveDateTime) -> Standing {
        let allowed = self.allowed();
        let now = now.max(self.started);
        // Stops before the start count from the start; overlapping stops are handled by never
        // moving the cursor back.
        let mut stops: Vec<(NaiveDateTime, Option<NaiveDateTime>)> = self
            .stops
            .iter()
            .map(|&(from, until)| (from.max(self.started), until))
            .collect();
        stops.sort_by_key(|&(from, _)| from);

        // Where the limit runs out: walk the running spans between the stops. An open stop (the
        // case is HUNG now) restarts the clock, as far as the deadline goes, now.
        let mut remaining = allowed;
        let mut cursor = self.started;
        let mut deadline = None;
        for &(from, until) in &stops {
            if from > cursor {
                let span = self.measure(cursor, from);
                if span >= remaining {
                    deadline = Some(self.advance(cursor, remaining));
                    break;
                }
                remaining -= span;
            }
            cursor = cursor.max(until.unwrap_or(now).max(from));
            if until.is_none() {
                break;
            }
        }
        let deadline = deadline.unwrap_or_else(|| self.advance(cursor, remaining));

        // What has been used by now: the running spans up to `now`.
        let mut used = Duration::zero();
        let mut cursor = self.started;
        for &(from, until) in &stops {
            if from >= now {
                break;
            }
            if from > cursor {
                used += self.measure(cursor, from);
            }
            cursor = cursor.max(until.unwrap_or(now).min(now));
        }
        if cursor < now {
            used += self.measure(cursor, now);
        }
        let stopped = stops
            .iter()
            .any(|&(from, until)| from <= now && until.is_none_or(|until| until > now));

        let share = if allowed > Duration::zero() {
            used.num_milliseconds() as f64 / allowed.num_milliseconds() as f64
        } else if used > Duration::zero() {
            f64::INFINITY
        } else {
            0.0
        };
        let beyond_calendar = self.limit.unit != LimitUnit::Minutes
            && !self
                .calendar
                .covers(self.started.date(), deadline.max(now).date());
        Standing {
            deadline,
            used,
            allowed,
            share,
            light: Light::of_share(share),
            stopped,
            beyond_calendar,
        }
    }

    /// The whole limit with its extensions, as a duration of the limit's measure.
    fn allowed(&self) -> Duration {
        std::iter::once(&self.limit)
            .chain(self.extensions)
            .map(|limit| self.length(limit))
            .fold(Duration::zero(), |a, b| a + b)
    }

    /// A limit as a duration of this clock's measure. Working days count as the working time from
    /// the start to the same time that many working days later, so a limit in working days runs
    /// out at the same time of day, as people count it.
    fn length(&self, limit: &Limit) -> Duration {
        match limit.unit {
            LimitUnit::Minutes | LimitUnit::WorkingMinutes => {
                Duration::minutes(i64::from(limit.amount))
            }
            LimitUnit::WorkingHours => Duration::hours(i64::from(limit.amount)),
            LimitUnit::WorkingDays => {
                let from = self.calendar.next_working_moment(self.started);
                let to = self.calendar.add_working_days(from, limit.amount);
                self.calendar.working_time_between(from, to)
            }
        }
    }

    /// The time between two moments in this clock's measure: wall-clock for minutes, working time
    /// otherwise.
    fn measure(&self, from: NaiveDateTime, to: NaiveDateTime) -> Duration {
        match self.limit.unit {
            LimitUnit::Minutes => to - from,
            _ => self.calendar.working_time_between(from, to),
        }
    }

    /// `from` plus `amount` of this clock's measure.
    fn advance(&self, from: NaiveDateTime, amount: Duration) -> NaiveDateTime {
        match self.limit.unit {
            LimitUnit::Minutes => from + amount.max(Duration::zero()),
            LimitUnit::WorkingMinutes | LimitUnit::WorkingHours => {
                self.calendar.add_working_hours(from, amount)
            }
            // People count working days to the same time of day: a 5-day limit from Monday 08:30
            // is due next Monday 08:30, not this Friday 17:30, though both are the same instant
            // in working time.
            LimitUnit::WorkingDays => {
                let due = self.calendar.add_working_hours(from, amount);
                if Some(due.time()) == self.calendar.day_end(due.date()) {
                    self.calendar.next_working_moment(due)
                } else {
                    due
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::calendar::DayKind;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// The 2026 National Day holiday as `seeds/calendar-2026.toml` has it: 1-7 October off
    /// (Thursday to Wednesday), Sunday 20 September and Saturday 10 October worked (调休).
    fn national_day_2026() -> WorkCalendar {
        let holidays = (1..=7).map(|day| (d(&format!("2026-10-{day:02}")), DayKind::Holiday));
        let workdays = [
            (d("2026-09-20"), DayKind::Workday),
            (d("2026-10-10"), DayKind::Workday),
        ];
        WorkCalendar::from_days(holidays.chain(workdays))
    }

    fn clock<'a>(calendar: &'a WorkCalendar, limit: Limit, started: &str) -> Clock<'a> {
        Clock {
            calendar,
            limit,
            started: at(started),
            stops: &[],
            extensions: &[],
        }
    }

    #[test]
    fn working_hours_skip_the_lunch_break_and_the_night() {
        let calendar = WorkCalendar::default();
        // 暴露垃圾, 4 working hours, dispatched Tuesday 10:00: 2 h before lunch, 2 h after it,
        // so due at 16:30 the same day.
        let c = clock(&calendar, Limit::working_hours(4), "2026-11-24 10:00");
        assert_eq!(
            c.at(at("2026-11-24 10:00")).deadline,
            at("2026-11-24 16:30")
        );
        // Dispatched at 16:00: 1.5 h that day, the rest from 08:30 the next morning.
        let late = clock(&calendar, Limit::working_hours(4), "2026-11-24 16:00");
        assert_eq!(
            late.at(at("2026-11-24 16:00")).deadline,
            at("2026-11-25 11:00")
        );
        // At 13:00 (lunch) the morning's 2 h are used: half the limit, green.
        let lunch = c.at(at("2026-11-24 13:00"));
        assert_eq!(lunch.used, Duration::hours(2));
        assert!((lunch.share - 0.5).abs() < 1e-9);
        assert_eq!(lunch.light, Light::Green);
        // 3.2 h used at 15:42 (80 %): yellow; at 16:31, red.
        assert_eq!(c.at(at("2026-11-24 15:41")).light, Light::Green);
        assert_eq!(c.at(at("2026-11-24 15:42")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-11-24 16:30")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-11-24 16:31")).light, Light::Red);
        // Overnight nothing counts: the evening and the next 08:29 stand the same.
        assert_eq!(
            late.at(at("2026-11-24 22:00")).used,
            late.at(at("2026-11-25 08:29")).used
        );
    }

    #[test]
    fn working_minutes_stop_over_the_lunch_break_and_the_night() {
        let calendar = WorkCalendar::default();
        // 90 working minutes from Tuesday 11:00: 60 before lunch, 30 after it, due 15:00, where
        // 90 wall-clock minutes would be due at 12:30 in the middle of the lunch break.
        let c = clock(&calendar, Limit::working_minutes(90), "2026-11-24 11:00");
        assert_eq!(
            c.at(at("2026-11-24 11:00")).deadline,
            at("2026-11-24 15:00")
        );
        assert_eq!(
            clock(&calendar, Limit::minutes(90), "2026-11-24 11:00")
                .at(at("2026-11-24 11:00"))
                .deadline,
            at("2026-11-24 12:30")
        );
        // The lunch break uses nothing: at 12:00 and at 14:29 the same 60 minutes.
        assert_eq!(c.at(at("2026-11-24 12:00")).used, Duration::minutes(60));
        assert_eq!(c.at(at("2026-11-24 14:29")).used, Duration::minutes(60));
        assert_eq!(c.at(at("2026-11-24 14:29")).light, Light::Green);
        // 72 of 90 minutes (80 %) at 14:42: yellow; past 15:00, red.
        assert_eq!(c.at(at("2026-11-24 14:41")).light, Light::Green);
        assert_eq!(c.at(at("2026-11-24 14:42")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-11-24 15:00")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-11-24 15:01")).light, Light::Red);
        assert_eq!(c.at(at("2026-11-24 15:30")).left(), Duration::minutes(-30));

        // From 17:00: 30 minutes that evening, the night counts nothing, 60 the next morning.
        let night = clock(&calendar, Limit::working_minutes(90), "2026-11-24 17:00");
        assert_eq!(
            night.at(at("2026-11-24 17:00")).deadline,
            at("2026-11-25 09:30")
        );
        let evening = night.at(at("2026-11-24 23:00"));
        let morning = night.at(at("2026-11-25 08:29"));
        assert_eq!(evening.used, Duration::minutes(30));
        assert_eq!(morning.used, evening.used);
        assert_eq!(morning.light, Light::Green);
        assert_eq!(night.at(at("2026-11-25 09:31")).light, Light::Red);
        // A working unit reads the calendar: loaded for no year, it is flagged.
        assert!(night.at(at("2026-11-24 17:00")).beyond_calendar);
    }

    #[test]
    fn working_days_cross_national_day_and_count_its_make_up_saturday() {
        let calendar = national_day_2026();
        // Filed Wednesday 30 September 10:00 with 2 working days: 1-7 October are off, Thursday
        // 8 and Friday 9 are the two working days: due Friday 9 October 10:00.
        let c = clock(&calendar, Limit::working_days(2), "2026-09-30 10:00");
        assert_eq!(
            c.at(at("2026-09-30 10:00")).deadline,
            at("2026-10-09 10:00")
        );
        // With 3 working days the make-up Saturday 10 October counts.
        let three = clock(&calendar, Limit::working_days(3), "2026-09-30 10:00");
        assert_eq!(
            three.at(at("2026-09-30 10:00")).deadline,
            at("2026-10-10 10:00")
        );
        // The whole holiday uses nothing of the limit.
        let before = c.at(at("2026-09-30 17:30"));
        let after = c.at(at("2026-10-08 08:30"));
        assert_eq!(before.used, after.used);
        assert_eq!(after.light, Light::Green);
        // On Friday 9 October at 10:00 the limit is used up exactly; a minute later it is red.
        assert_eq!(c.at(at("2026-10-09 10:00")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-10-09 10:01")).light, Light::Red);
        assert!(c.at(at("2026-10-09 10:01")).left() < Duration::zero());
    }

    #[test]
    fn minutes_count_wall_clock_nights_and_holidays_included() {
        let calendar = national_day_2026();
        // 立案+派遣 within 30 minutes, reported at 23:50 on National Day.
        let c = clock(&calendar, Limit::minutes(30), "2026-10-01 23:50");
        assert_eq!(
            c.at(at("2026-10-01 23:50")).deadline,
            at("2026-10-02 00:20")
        );
        assert_eq!(c.at(at("2026-10-02 00:14")).light, Light::Yellow);
        assert_eq!(c.at(at("2026-10-02 00:21")).light, Light::Red);
    }

    #[test]
    fn a_hung_span_stops_the_clock_and_the_deadline_moves_by_it() {
        let calendar = WorkCalendar::default();
        // 5 working days from Monday 2 November 08:30; hung (挂账) from Wednesday 08:30 until the
        // next Monday 08:30: a whole working week that does not count.
        let stops = [(at("2026-11-04 08:30"), Some(at("2026-11-09 08:30")))];
        let c = Clock {
            stops: &stops,
            ..clock(&calendar, Limit::working_days(5), "2026-11-02 08:30")
        };
        let without = clock(&calendar, Limit::working_days(5), "2026-11-02 08:30");
        assert_eq!(
            without.at(at("2026-11-02 08:30")).deadline,
            at("2026-11-09 08:30")
        );
        let resumed = c.at(at("2026-11-09 08:30"));
        assert_eq!(resumed.used, Duration::minutes(2 * 6 * 60 + 2 * 30));
        // Three working days later than without the stop.
        assert_eq!(resumed.deadline, at("2026-11-12 08:30"));
        assert!(!resumed.stopped);
        assert_eq!(resumed.light, Light::Green);
    }

    #[test]
    fn while_hung_the_clock_stands_still_and_says_so() {
        let calendar = WorkCalendar::default();
        let stops = [(at("2026-11-24 11:00"), None)];
        let c = Clock {
            stops: &stops,
            ..clock(&calendar, Limit::working_hours(4), "2026-11-24 10:00")
        };
        let hung = c.at(at("2026-11-26 16:00"));
        assert!(hung.stopped);
        assert_eq!(hung.used, Duration::hours(1));
        assert_eq!(hung.light, Light::Green);
        // Were it resumed now (16:00), 3 h would be left: 1.5 h today, 1.5 h tomorrow morning.
        assert_eq!(hung.deadline, at("2026-11-27 10:00"));
    }

    #[test]
    fn an_approved_extension_adds_to_the_limit() {
        let calendar = WorkCalendar::default();
        let extensions = [Limit::working_hours(2)];
        let c = Clock {
            extensions: &extensions,
            ..clock(&calendar, Limit::working_hours(4), "2026-11-24 08:30")
        };
        // 6 working hours from 08:30: 3.5 before lunch, 2.5 after: 17:00.
        let standing = c.at(at("2026-11-24 14:30"));
        assert_eq!(standing.deadline, at("2026-11-24 17:00"));
        assert_eq!(standing.allowed, Duration::hours(6));
        // 3.5 of 6 hours used at 14:30: green (without the extension it would be 87 %: yellow).
        assert_eq!(standing.light, Light::Green);
        let plain = clock(&calendar, Limit::working_hours(4), "2026-11-24 08:30");
        assert_eq!(plain.at(at("2026-11-24 14:30")).light, Light::Yellow);
    }

    proptest::proptest! {
        /// Whatever the start, limit and stopped span: at the deadline exactly the whole limit is
        /// used (the light still yellow), a working minute later it is red, and the share never
        /// goes down as time passes.
        #[test]
        fn the_deadline_is_where_the_limit_is_used_up(
            start_minute in 0i64..(365 * 24 * 60),
            amount in 1u32..60,
            unit in 0usize..3,
            stop in proptest::option::of((0i64..(20 * 24 * 60), 1i64..(10 * 24 * 60))),
            probes in proptest::collection::vec(0i64..(60 * 24 * 60), 1..8),
        ) {
            let calendar = national_day_2026();
            let started = at("2026-01-01 00:00") + Duration::minutes(start_minute);
            let limit = Limit {
                amount,
                unit: [LimitUnit::Minutes, LimitUnit::WorkingHours, LimitUnit::WorkingDays][unit],
            };
            let stops: Vec<_> = stop
                .map(|(after, length)| {
                    let from = started + Duration::minutes(after);
                    (from, Some(from + Duration::minutes(length)))
                })
                .into_iter()
                .collect();
            let c = Clock { calendar: &calendar, limit, started, stops: &stops, extensions: &[] };
            // Past every stop, the deadline stands still.
            let late = started + Duration::days(40);
            let deadline = c.at(late).deadline;
            let due = c.at(deadline);
            proptest::prop_assert!((due.share - 1.0).abs() < 1e-9, "{due:?}");
            proptest::prop_assert_eq!(due.light, Light::Yellow);
            let next_working_minute = match limit.unit {
                LimitUnit::Minutes => deadline + Duration::minutes(1),
                _ => calendar.add_working_hours(deadline, Duration::minutes(1)),
            };
            let after = c.at(next_working_minute);
            // Unless a stop holds the clock between the deadline and that minute.
            let stopped_there = stops.iter().any(|&(from, until)| {
                from < next_working_minute && until.is_some_and(|u| u > deadline)
            });
            proptest::prop_assert!(after.light == Light::Red || stopped_there, "{after:?}");
            let mut probes = probes;
            probes.sort_unstable();
            let shares: Vec<f64> = probes
                .iter()
                .map(|&m| c.at(started + Duration::minutes(m)).share)
                .collect();
            proptest::prop_assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        }
    }

    #[test]
    fn a_deadline_past_the_loaded_calendar_is_flagged() {
        let calendar = national_day_2026().with_years([2026]);
        // 5 working days from Monday 14 December 2026: due Monday 21 December, inside 2026.
        let inside = clock(&calendar, Limit::working_days(5), "2026-12-14 10:00");
        assert_eq!(
            inside.at(at("2026-12-14 10:00")).deadline,
            at("2026-12-21 10:00")
        );
        assert!(!inside.at(at("2026-12-14 10:00")).beyond_calendar);
        // Read on 4 January 2027 (overdue), now is past the calendar: flagged.
        assert!(inside.at(at("2027-01-04 09:00")).beyond_calendar);
        // From Tuesday 29 December the deadline falls in 2027, counted on ordinary weekdays.
        let across = clock(&calendar, Limit::working_days(5), "2026-12-29 10:00");
        let standing = across.at(at("2026-12-29 10:00"));
        assert_eq!(standing.deadline, at("2027-01-05 10:00"));
        assert!(standing.beyond_calendar);
        // Once 2027 is loaded too, the same clock is not flagged.
        let both = national_day_2026().with_years([2026, 2027]);
        assert!(
            !clock(&both, Limit::working_days(5), "2026-12-29 10:00")
                .at(at("2026-12-29 10:00"))
                .beyond_calendar
        );
        // Minutes need no calendar; a calendar that loaded no year flags every working clock.
        let minutes = clock(&calendar, Limit::minutes(30), "2026-12-31 23:50");
        assert!(!minutes.at(at("2027-01-01 00:30")).beyond_calendar);
        let unloaded = WorkCalendar::default();
        assert!(
            clock(&unloaded, Limit::working_hours(4), "2026-11-24 10:00")
                .at(at("2026-11-24 10:00"))
                .beyond_calendar
        );
    }

    #[test]
    fn units_parse_by_their_seed_names() {
        for unit in [
            LimitUnit::Minutes,
            LimitUnit::WorkingMinutes,
            LimitUnit::WorkingHours,
            LimitUnit::WorkingDays,
        ] {
            assert_eq!(unit.name().parse::<LimitUnit>(), Ok(unit));
        }
        assert!("hours".parse::<LimitUnit>().unwrap_err().contains("hours"));
        assert_eq!(Limit::working_days(20).to_string(), "20 working days");
        assert_eq!(Limit::working_minutes(90).to_string(), "90 working minutes");
    }
}
