//! The work calendar (工作日历): which days are working days (工作日) and which moments of a day are
//! working time, so that time limits (时限) in working hours and working days can be computed.
//!
//! A day is a working day when it is Monday to Friday, unless the calendar lists it as a holiday
//! (法定节假日 or a 调休 rest day), or when it is a weekend day the calendar lists as a make-up
//! working day (调休补班). Within a working day only the working periods count (作息时间: the
//! office hours with the lunch break). The working periods may change from a date on (summer
//! hours, a new schedule): a calendar holds them as steps, each applying from its date until the
//! next one. The calendar's data lives in the seeds (`seeds/calendar-2026.toml`, tables
//! `calendar_days` and `working_hours`): no date is hard-coded here, and the one built-in
//! schedule, [`default_periods`], is only where a calendar built in code starts from.
//!
//! A calendar also knows which years it was loaded for (a `calendar-<year>.toml` per year): the
//! holidays of a year are announced only late in the year before, so a deadline that runs into a
//! year without a calendar is computed on ordinary weekdays, and the clock flags it
//! ([`crate::clock::Standing::beyond_calendar`]) instead of pretending to know.
//!
//! All times are local wall-clock times (Asia/Shanghai has no daylight saving time), so plain
//! [`NaiveDateTime`] arithmetic is exact.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Weekday};

/// An exception to the Monday-to-Friday week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DayKind {
    /// A weekday off: a public holiday (法定节假日) or a 调休 rest day.
    Holiday,
    /// A Saturday or Sunday worked: a 调休 make-up working day (补班).
    Workday,
}

impl DayKind {
    /// The name stored in `calendar_days.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            DayKind::Holiday => "holiday",
            DayKind::Workday => "workday",
        }
    }
}

impl FromStr for DayKind {
    type Err = CalendarError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "holiday" => Ok(DayKind::Holiday),
            "workday" => Ok(DayKind::Workday),
            other => Err(CalendarError::UnknownDayKind(other.to_owned())),
        }
    }
}

impl fmt::Display for DayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a calendar could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("working period {start}-{end} is empty or runs backwards")]
    EmptyPeriod { start: NaiveTime, end: NaiveTime },
    #[error("working periods {first} and {second} overlap")]
    Overlap {
        first: WorkingPeriod,
        second: WorkingPeriod,
    },
    #[error("a work calendar needs at least one working period")]
    NoPeriods,
    #[error("unknown day kind {0:?} (expected \"holiday\" or \"workday\")")]
    UnknownDayKind(String),
    #[error("working period {0:?} is not HH:MM-HH:MM")]
    MalformedPeriod(String),
}

/// A stretch of working time within a working day, `start` included, `end` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingPeriod {
    start: NaiveTime,
    end: NaiveTime,
}

impl WorkingPeriod {
    pub fn new(start: NaiveTime, end: NaiveTime) -> Result<Self, CalendarError> {
        if start >= end {
            return Err(CalendarError::EmptyPeriod { start, end });
        }
        Ok(WorkingPeriod { start, end })
    }

    pub fn start(&self) -> NaiveTime {
        self.start
    }

    pub fn end(&self) -> NaiveTime {
        self.end
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }

    fn contains(&self, time: NaiveTime) -> bool {
        self.start <= time && time < self.end
    }
}

impl FromStr for WorkingPeriod {
    type Err = CalendarError;

    /// `08:30-12:00`, as the seeds write a period.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || CalendarError::MalformedPeriod(s.to_owned());
        let (start, end) = s.split_once('-').ok_or_else(malformed)?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| malformed());
        WorkingPeriod::new(time(start)?, time(end)?)
    }
}

/// The working periods of one day sorted by their start, or why they cannot be: none at all, or
/// two that overlap.
pub fn day_periods(
    periods: impl IntoIterator<Item = WorkingPeriod>,
) -> Result<Vec<WorkingPeriod>, CalendarError> {
    let mut periods: Vec<WorkingPeriod> = periods.into_iter().collect();
    if periods.is_empty() {
        return Err(CalendarError::NoPeriods);
    }
    periods.sort_by_key(|p| p.start);
    for pair in periods.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(CalendarError::Overlap {
                first: pair[0],
                second: pair[1],
            });
        }
    }
    Ok(periods)
}

impl fmt::Display for WorkingPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// Xiamen office hours: 08:30-12:00 and 14:30-17:30 (6.5 working hours a day), the schedule of a
/// calendar built in code until [`WorkCalendar::with_periods`] or
/// [`WorkCalendar::with_periods_from`] says otherwise. The seeds carry the same values (`hours`
/// in `seeds/calendar-2026.toml`); a calendar loaded from the database takes the seeded ones.
pub fn default_periods() -> Vec<WorkingPeriod> {
    let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN);
    vec![
        WorkingPeriod {
            start: hm(8, 30),
            end: hm(12, 0),
        },
        WorkingPeriod {
            start: hm(14, 30),
            end: hm(17, 30),
        },
    ]
}

/// Working days (工作日) and working time, for time limits in working hours and working days.
///
/// Built from the exceptions to the Monday-to-Friday week (holidays, 调休 make-up working days),
/// the working periods of the day from the dates they apply from, and the years whose schedule
/// was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCalendar {
    exceptions: BTreeMap<NaiveDate, DayKind>,
    /// The working periods of a day from a date on, until the next entry's date. The first entry
    /// is keyed [`NaiveDate::MIN`], so every date has periods; each value is sorted,
    /// non-overlapping and never empty.
    hours: BTreeMap<NaiveDate, Vec<WorkingPeriod>>,
    /// The years whose schedule was loaded (a year without exceptions is still loaded); outside
    /// them the calendar knows only the ordinary week.
    years: BTreeSet<i32>,
}

impl Default for WorkCalendar {
    /// Monday to Friday with Xiamen office hours, no holidays, and no year loaded.
    fn default() -> Self {
        WorkCalendar {
            exceptions: BTreeMap::new(),
            hours: BTreeMap::from([(NaiveDate::MIN, default_periods())]),
            years: BTreeSet::new(),
        }
    }
}

impl WorkCalendar {
    /// A calendar with the default office hours from its holidays (weekdays off) and its 调休
    /// make-up working days (weekend days worked).
    pub fn new(
        holidays: impl IntoIterator<Item = NaiveDate>,
        workdays: impl IntoIterator<Item = NaiveDate>,
    ) -> Self {
        Self::from_days(
            holidays
                .into_iter()
                .map(|d| (d, DayKind::Holiday))
                .chain(workdays.into_iter().map(|d| (d, DayKind::Workday))),
        )
    }

    /// A calendar with the default office hours from `calendar_days` rows; a date listed twice
    /// takes its last kind. No year counts as loaded until [`WorkCalendar::with_years`] says so.
    pub fn from_days(days: impl IntoIterator<Item = (NaiveDate, DayKind)>) -> Self {
        WorkCalendar {
            exceptions: days.into_iter().collect(),
            ..WorkCalendar::default()
        }
    }

    /// The same calendar, with `years` counted as loaded too (the years of the calendar files
    /// imported, table `calendar_years`).
    pub fn with_years(mut self, years: impl IntoIterator<Item = i32>) -> Self {
        self.years.extend(years);
        self
    }

    /// The years whose schedule was loaded.
    pub fn years(&self) -> &BTreeSet<i32> {
        &self.years
    }

    /// The last day of the last year loaded; None when no year is. Beyond it the calendar knows
    /// only the ordinary Monday-to-Friday week.
    pub fn covered_until(&self) -> Option<NaiveDate> {
        let last = self.years.last()?;
        NaiveDate::from_ymd_opt(*last, 12, 31)
    }

    /// Whether every day from `from` to `to` (inclusive, in either order) lies in a loaded year:
    /// a span that reaches past [`WorkCalendar::covered_until`], or into a year missing between
    /// two loaded ones, is not covered.
    pub fn covers(&self, from: NaiveDate, to: NaiveDate) -> bool {
        let (first, last) = (from.min(to).year(), from.max(to).year());
        (first..=last).all(|year| self.years.contains(&year))
    }

    /// The same calendar with other working periods on every day (a 24-hour service …): the
    /// periods set from dates on are dropped.
    pub fn with_periods(
        mut self,
        periods: impl IntoIterator<Item = WorkingPeriod>,
    ) -> Result<Self, CalendarError> {
        self.hours = BTreeMap::from([(NaiveDate::MIN, day_periods(periods)?)]);
        Ok(self)
    }

    /// The same calendar with other working periods from `from` on, until the next date periods
    /// are set from (summer hours from 1 June, the ordinary ones again from 1 October). Setting
    /// a date twice keeps the last periods.
    pub fn with_periods_from(
        mut self,
        from: NaiveDate,
        periods: impl IntoIterator<Item = WorkingPeriod>,
    ) -> Result<Self, CalendarError> {
        self.hours.insert(from, day_periods(periods)?);
        Ok(self)
    }

    /// The working periods of `date` (whether or not it is a working day).
    pub fn periods_on(&self, date: NaiveDate) -> &[WorkingPeriod] {
        self.hours
            .range(..=date)
            .next_back()
            .or_else(|| self.hours.first_key_value())
            .map_or(&[], |(_, periods)| periods.as_slice())
    }

    /// The dates the working periods change on, with the periods from then on, in date order
    /// (before the first, the periods of [`WorkCalendar::with_periods`] or the default apply).
    pub fn period_changes(&self) -> impl Iterator<Item = (NaiveDate, &[WorkingPeriod])> {
        self.hours
            .iter()
            .filter(|(date, _)| **date > NaiveDate::MIN)
            .map(|(date, periods)| (*date, periods.as_slice()))
    }

    /// The working time of a working day on `date` (6.5 hours with the default periods).
    pub fn working_day_length_on(&self, date: NaiveDate) -> Duration {
        self.periods_on(date)
            .iter()
            .map(WorkingPeriod::duration)
            .fold(Duration::zero(), |a, b| a + b)
    }

    /// The working time of a working day under the latest periods the calendar knows (those of
    /// its last change), for comparing limits of different units where no date matters.
    pub fn working_day_length(&self) -> Duration {
        self.hours
            .keys()
            .next_back()
            .map_or(Duration::zero(), |date| self.working_day_length_on(*date))
    }

    /// Whether `date` is a working day (工作日): Monday to Friday unless a holiday, or a weekend day
    /// listed as a 调休 make-up working day.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        match self.exceptions.get(&date) {
            Some(DayKind::Holiday) => false,
            Some(DayKind::Workday) => true,
            None => !matches!(date.weekday(), Weekday::Sat | Weekday::Sun),
        }
    }

    /// Whether `at` falls in a working period of a working day.
    pub fn is_working_time(&self, at: NaiveDateTime) -> bool {
        self.is_working_day(at.date())
            && self
                .periods_on(at.date())
                .iter()
                .any(|p| p.contains(at.time()))
    }

    /// The first working day strictly after `date`.
    pub fn next_working_day(&self, date: NaiveDate) -> NaiveDate {
        let mut day = date;
        // Ends: a weekday that is no exception always comes, the exceptions being finite.
        while let Some(next) = day.succ_opt() {
            day = next;
            if self.is_working_day(day) {
                break;
            }
        }
        day
    }

    /// `at` itself if it is working time, otherwise the start of the next working period.
    pub fn next_working_moment(&self, at: NaiveDateTime) -> NaiveDateTime {
        let date = at.date();
        if self.is_working_day(date) {
            for period in self.periods_on(date) {
                if period.contains(at.time()) {
                    return at;
                }
                if at.time() < period.start {
                    return date.and_time(period.start);
                }
            }
        }
        let next = self.next_working_day(date);
        next.and_time(self.first_start(next))
    }

    /// The same time of day `n` working days later (a limit in working days, e.g. 私搭乱建 20
    /// working days). A start outside working time first moves to the next working moment, so a
    /// case filed on Friday evening with 1 working day is due on Tuesday 08:30 (Monday being
    /// a working day).
    pub fn add_working_days(&self, start: NaiveDateTime, n: u32) -> NaiveDateTime {
        let from = self.next_working_moment(start);
        let mut day = from.date();
        for _ in 0..n {
            day = self.next_working_day(day);
        }
        day.and_time(from.time())
    }

    /// The moment when `duration` of working time has passed since `start`, counting only the
    /// working periods of working days (a limit in working hours, e.g. 暴露垃圾 4 working hours).
    /// A limit that runs out exactly at the end of a period ends there (12:00, not 14:30).
    /// A negative duration counts as zero.
    pub fn add_working_hours(&self, start: NaiveDateTime, duration: Duration) -> NaiveDateTime {
        let mut left = duration.max(Duration::zero());
        let mut at = self.next_working_moment(start);
        loop {
            let period_end = self.period_end(at);
            let available = period_end - at;
            if left <= available {
                return at + left;
            }
            left -= available;
            at = self.next_working_moment(period_end);
        }
    }

    /// The working time between `from` and `to` (negative when `to` is earlier): the inverse of
    /// [`WorkCalendar::add_working_hours`], used for the traffic light (share of the limit used).
    pub fn working_time_between(&self, from: NaiveDateTime, to: NaiveDateTime) -> Duration {
        if to < from {
            return -self.working_time_between(to, from);
        }
        let mut total = Duration::zero();
        let mut day = from.date();
        while day <= to.date() {
            if self.is_working_day(day) {
                for period in self.periods_on(day) {
                    let start = day.and_time(period.start).max(from);
                    let end = day.and_time(period.end).min(to);
                    if end > start {
                        total += end - start;
                    }
                }
            }
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        total
    }

    fn first_start(&self, date: NaiveDate) -> NaiveTime {
        self.periods_on(date)
            .first()
            .map_or(NaiveTime::MIN, |p| p.start)
    }

    /// The end of the last working period of `date`.
    pub fn day_end(&self, date: NaiveDate) -> Option<NaiveTime> {
        self.periods_on(date).last().map(|p| p.end)
    }

    /// The end of the working period that contains `at` (which must be working time).
    fn period_end(&self, at: NaiveDateTime) -> NaiveDateTime {
        debug_assert!(self.is_working_time(at), "{at} is not working time");
        let end = self
            .periods_on(at.date())
            .iter()
            .find(|p| p.contains(at.time()))
            .map_or(at.time(), |p| p.end);
        at.date().and_time(end)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn hours(h: i64) -> Duration {
        Duration::hours(h)
    }

    /// The 2026 schedule of the State Council, as in `seeds/calendar-2026.toml`.
    fn xiamen_2026() -> WorkCalendar {
        #[rustfmt::skip]
        let holidays = [
            "2026-01-01", "2026-01-02", // 元旦
            "2026-02-16", "2026-02-17", "2026-02-18", "2026-02-19", "2026-02-20", "2026-02-23", // 春节
            "2026-04-06", // 清明节
            "2026-05-01", "2026-05-04", "2026-05-05", // 劳动节
            "2026-06-19", // 端午节
            "2026-09-25", // 中秋节
            "2026-10-01", "2026-10-02", "2026-10-05", "2026-10-06", "2026-10-07", // 国庆节
        ];
        let workdays = [
            "2026-01-04",
            "2026-02-14",
            "2026-02-28",
            "2026-05-09",
            "2026-09-20",
            "2026-10-10",
        ];
        WorkCalendar::new(holidays.map(d), workdays.map(d))
    }

    #[test]
    fn weekdays_work_and_weekends_rest_unless_the_calendar_says_otherwise() {
        let cal = xiamen_2026();
        let cases = [
            ("2026-11-25", true),  // an ordinary Wednesday
            ("2026-11-28", false), // an ordinary Saturday
            ("2026-01-01", false), // 元旦
            ("2026-01-04", true),  // Sunday, 元旦 调休
            ("2026-02-14", true),  // Saturday, 春节 调休
            ("2026-02-23", false), // Monday, last day of 春节
            ("2026-02-28", true),  // Saturday, 春节 调休
            ("2026-05-09", true),  // Saturday, 劳动节 调休
            ("2026-09-20", true),  // Sunday, 国庆节 调休
            ("2026-10-01", false), // 国庆节
            ("2026-10-03", false), // Saturday inside 国庆节
            ("2026-10-07", false), // Wednesday, last day of 国庆节
            ("2026-10-08", true),  // Thursday after 国庆节
            ("2026-10-10", true),  // Saturday, 国庆节 调休
        ];
        for (day, working) in cases {
            assert_eq!(cal.is_working_day(d(day)), working, "{day}");
        }
    }

    #[test]
    fn the_2026_calendar_has_248_working_days() {
        let cal = xiamen_2026();
        let days = d("2026-01-01")
            .iter_days()
            .take_while(|day| day.year() == 2026);
        assert_eq!(days.filter(|day| cal.is_working_day(*day)).count(), 248);
    }

    #[test]
    fn working_time_is_office_hours_of_working_days() {
        let cal = xiamen_2026();
        assert!(cal.is_working_time(t("2026-11-25 08:30")));
        assert!(cal.is_working_time(t("2026-11-25 11:59")));
        assert!(
            !cal.is_working_time(t("2026-11-25 12:00")),
            "the morning ends at 12:00"
        );
        assert!(!cal.is_working_time(t("2026-11-25 13:00")), "lunch break");
        assert!(cal.is_working_time(t("2026-11-25 14:30")));
        assert!(!cal.is_working_time(t("2026-11-25 17:30")));
        assert!(!cal.is_working_time(t("2026-10-01 10:00")), "国庆节");
        assert!(cal.is_working_time(t("2026-09-20 10:00")), "调休 Sunday");
        assert_eq!(cal.working_day_length(), Duration::minutes(390));
    }

    #[test]
    fn the_next_working_moment_skips_breaks_nights_and_holidays() {
        let cal = xiamen_2026();
        let cases = [
            ("2026-11-25 10:00", "2026-11-25 10:00"),
            ("2026-11-25 07:00", "2026-11-25 08:30"),
            ("2026-11-25 12:00", "2026-11-25 14:30"),
            ("2026-11-25 17:30", "2026-11-26 08:30"),
            ("2026-11-27 18:00", "2026-11-30 08:30"), // Friday evening: Monday
            ("2026-09-30 17:45", "2026-10-08 08:30"), // 国庆节
            ("2026-09-18 20:00", "2026-09-20 08:30"), // Friday evening: the 调休 Sunday
        ];
        for (at, next) in cases {
            assert_eq!(cal.next_working_moment(t(at)), t(next), "{at}");
        }
    }

    #[test]
    fn working_hours_skip_the_national_day_holiday() {
        let cal = xiamen_2026();
        // 1.5 h on Sep 30 (16:00-17:30), Oct 1-7 off, 2.5 h on Thursday Oct 8 (08:30-11:00).
        assert_eq!(
            cal.add_working_hours(t("2026-09-30 16:00"), hours(4)),
            t("2026-10-08 11:00")
        );
        // 暴露垃圾, 4 working hours, reported during lunch: 14:30-17:30, then 08:30-09:30.
        assert_eq!(
            cal.add_working_hours(t("2026-11-25 12:30"), hours(4)),
            t("2026-11-26 09:30")
        );
        // 道路不洁, 2 working hours across the lunch break.
        assert_eq!(
            cal.add_working_hours(t("2026-11-25 11:00"), hours(2)),
            t("2026-11-25 15:30")
        );
    }

    #[test]
    fn a_limit_that_runs_out_at_the_end_of_a_period_ends_there() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.add_working_hours(t("2026-11-26 11:00"), hours(1)),
            t("2026-11-26 12:00")
        );
        assert_eq!(
            cal.add_working_hours(t("2026-11-26 08:30"), Duration::minutes(390)),
            t("2026-11-26 17:30")
        );
    }

    #[test]
    fn working_hours_count_make_up_weekend_days() {
        let cal = xiamen_2026();
        // Friday 17:00: half an hour left that day, then the 调休 Sunday Sep 20.
        assert_eq!(
            cal.add_working_hours(t("2026-09-18 17:00"), hours(1)),
            t("2026-09-20 09:00")
        );
        // Friday Oct 9 17:00: Saturday Oct 10 is worked.
        assert_eq!(
            cal.add_working_hours(t("2026-10-09 17:00"), hours(1)),
            t("2026-10-10 09:00")
        );
    }

    #[test]
    fn zero_and_negative_durations_only_move_to_working_time() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.add_working_hours(t("2026-11-25 10:00"), Duration::zero()),
            t("2026-11-25 10:00")
        );
        assert_eq!(
            cal.add_working_hours(t("2026-11-25 13:00"), Duration::zero()),
            t("2026-11-25 14:30")
        );
        assert_eq!(
            cal.add_working_hours(t("2026-11-25 10:00"), hours(-3)),
            t("2026-11-25 10:00")
        );
    }

    #[test]
    fn working_days_keep_the_time_of_day() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.add_working_days(t("2026-09-30 10:00"), 1),
            t("2026-10-08 10:00")
        );
        assert_eq!(
            cal.add_working_days(t("2026-09-24 15:00"), 5),
            t("2026-10-09 15:00")
        );
        // 路灯不亮, 1 working day, filed on Friday Oct 9: Saturday Oct 10 is a 调休 working day.
        assert_eq!(
            cal.add_working_days(t("2026-10-09 10:00"), 1),
            t("2026-10-10 10:00")
        );
        assert_eq!(
            cal.add_working_days(t("2026-10-09 10:00"), 2),
            t("2026-10-12 10:00")
        );
        // 私搭乱建, 20 working days across 春节.
        assert_eq!(
            cal.add_working_days(t("2026-02-10 09:00"), 20),
            t("2026-03-16 09:00")
        );
        // Friday Feb 13 15:00 plus 1: the 调休 Saturday Feb 14.
        assert_eq!(
            cal.add_working_days(t("2026-02-13 15:00"), 1),
            t("2026-02-14 15:00")
        );
        assert_eq!(
            cal.add_working_days(t("2026-04-30 09:00"), 5),
            t("2026-05-11 09:00")
        );
    }

    #[test]
    fn working_days_from_outside_working_time_start_at_the_next_working_moment() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.add_working_days(t("2026-09-30 18:00"), 1),
            t("2026-10-09 08:30")
        );
        assert_eq!(
            cal.add_working_days(t("2026-11-27 19:00"), 1),
            t("2026-12-01 08:30")
        );
        assert_eq!(
            cal.add_working_days(t("2026-11-25 12:15"), 1),
            t("2026-11-26 14:30")
        );
        assert_eq!(
            cal.add_working_days(t("2026-10-03 10:00"), 0),
            t("2026-10-08 08:30")
        );
    }

    #[test]
    fn working_time_between_counts_only_working_periods() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.working_time_between(t("2026-09-30 16:00"), t("2026-10-08 11:00")),
            hours(4)
        );
        assert_eq!(
            cal.working_time_between(t("2026-10-08 11:00"), t("2026-09-30 16:00")),
            hours(-4)
        );
        assert_eq!(
            cal.working_time_between(t("2026-11-25 11:00"), t("2026-11-25 15:00")),
            Duration::minutes(90)
        );
        assert_eq!(
            cal.working_time_between(t("2026-10-01 09:00"), t("2026-10-07 17:00")),
            Duration::zero()
        );
        // An ordinary week: 5 days of 6.5 hours.
        assert_eq!(
            cal.working_time_between(t("2026-11-23 00:00"), t("2026-11-30 00:00")),
            Duration::minutes(5 * 390)
        );
        // The 国庆节 fortnight Sep 28 - Oct 11: Sep 28-30, Oct 8-10 worked.
        assert_eq!(
            cal.working_time_between(t("2026-09-28 00:00"), t("2026-10-12 00:00")),
            Duration::minutes(6 * 390)
        );
    }

    #[test]
    fn working_time_between_is_the_inverse_of_add_working_hours() {
        let cal = xiamen_2026();
        let durations = [0, 1, 30, 60, 210, 240, 390, 1200, 4000].map(Duration::minutes);
        let mut start = t("2026-09-17 06:00");
        while start < t("2026-10-13 00:00") {
            for duration in durations {
                let end = cal.add_working_hours(start, duration);
                assert_eq!(
                    cal.working_time_between(start, end),
                    duration,
                    "{start} + {duration}"
                );
                assert!(end >= start);
                // The end is the earliest such moment: a minute earlier is not enough.
                if duration > Duration::zero() {
                    let before = end - Duration::minutes(1);
                    assert!(
                        cal.working_time_between(start, before) < duration,
                        "{start} + {duration}"
                    );
                }
            }
            start += Duration::minutes(37);
        }
    }

    #[test]
    fn working_periods_are_configurable() {
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        // Xiamen's summer hours: the afternoon starts at 15:00.
        let summer = xiamen_2026()
            .with_periods([
                WorkingPeriod::new(hm(15, 0), hm(18, 0)).unwrap(),
                WorkingPeriod::new(hm(8, 30), hm(12, 0)).unwrap(),
            ])
            .unwrap();
        assert_eq!(
            summer.periods_on(d("2026-07-01"))[0].start(),
            hm(8, 30),
            "periods are sorted"
        );
        assert_eq!(
            summer.next_working_moment(t("2026-07-01 14:40")),
            t("2026-07-01 15:00")
        );
        assert_eq!(
            summer.add_working_hours(t("2026-07-01 11:00"), hours(2)),
            t("2026-07-01 16:00")
        );

        let around_the_clock = WorkCalendar::default()
            .with_periods([WorkingPeriod::new(NaiveTime::MIN, hm(23, 59)).unwrap()])
            .unwrap();
        assert_eq!(
            around_the_clock.add_working_hours(t("2026-11-25 20:00"), hours(1)),
            t("2026-11-25 21:00")
        );
    }

    #[test]
    fn working_periods_change_from_their_dates_on() {
        let summer: Vec<WorkingPeriod> = ["08:00-12:00", "15:00-18:00"]
            .map(|p| p.parse().unwrap())
            .into();
        // Summer hours from 1 June, the ordinary office hours again from 1 October.
        let cal = xiamen_2026()
            .with_periods_from(d("2026-06-01"), summer.clone())
            .unwrap()
            .with_periods_from(d("2026-10-01"), default_periods())
            .unwrap();
        assert_eq!(cal.periods_on(d("2026-05-29")), default_periods());
        assert_eq!(cal.periods_on(d("2026-06-01")), summer);
        assert_eq!(cal.periods_on(d("2026-09-30")), summer);
        assert_eq!(cal.periods_on(d("2026-10-08")), default_periods());
        assert_eq!(
            cal.period_changes()
                .map(|(date, periods)| (date, periods.len()))
                .collect::<Vec<_>>(),
            [(d("2026-06-01"), 2), (d("2026-10-01"), 2)]
        );
        assert_eq!(cal.working_day_length_on(d("2026-07-01")), hours(7));
        assert_eq!(
            cal.working_day_length_on(d("2026-11-25")),
            Duration::minutes(390)
        );
        assert_eq!(
            cal.working_day_length(),
            Duration::minutes(390),
            "the latest periods"
        );

        // The summer lunch break runs to 15:00.
        assert!(!cal.is_working_time(t("2026-07-01 14:40")));
        assert!(cal.is_working_time(t("2026-07-01 17:45")));
        assert_eq!(
            cal.next_working_moment(t("2026-07-01 12:30")),
            t("2026-07-01 15:00")
        );
        // Friday 29 May 16:30 with 4 working hours: 1 h under the office hours, then Monday
        // 1 June under the summer hours, from 08:00: due 11:00.
        assert_eq!(
            cal.add_working_hours(t("2026-05-29 16:30"), hours(4)),
            t("2026-06-01 11:00")
        );
        assert_eq!(
            cal.next_working_moment(t("2026-05-29 18:00")),
            t("2026-06-01 08:00")
        );
        // Wednesday 30 September 17:00 with 2 working hours: the summer day ends at 18:00, 国庆节
        // rests, and Thursday 8 October is back on office hours: due 09:30.
        assert_eq!(
            cal.add_working_hours(t("2026-09-30 17:00"), hours(2)),
            t("2026-10-08 09:30")
        );
        assert_eq!(
            cal.working_time_between(t("2026-05-29 00:00"), t("2026-06-02 00:00")),
            Duration::minutes(390) + hours(7)
        );
        // Working days keep the time of day across the change.
        assert_eq!(
            cal.add_working_days(t("2026-05-29 10:00"), 1),
            t("2026-06-01 10:00")
        );
        // And the inverse still holds across both changes.
        for (from, until) in [
            ("2026-05-27 06:00", "2026-06-03 00:00"),
            ("2026-09-28 06:00", "2026-10-09 00:00"),
        ] {
            let mut start = t(from);
            while start < t(until) {
                for duration in [1, 45, 240, 420, 1000].map(Duration::minutes) {
                    let end = cal.add_working_hours(start, duration);
                    assert_eq!(cal.working_time_between(start, end), duration, "{start}");
                }
                start += Duration::minutes(53);
            }
        }
    }

    #[test]
    fn periods_parse_as_the_seeds_write_them() {
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert_eq!(
            "08:30-12:00".parse::<WorkingPeriod>(),
            WorkingPeriod::new(hm(8, 30), hm(12, 0))
        );
        assert_eq!(
            " 14:30 - 17:30 "
                .parse::<WorkingPeriod>()
                .unwrap()
                .to_string(),
            "14:30-17:30"
        );
        for bad in ["08:30", "8h30-12:00", "08:30-25:00", ""] {
            assert!(
                matches!(
                    bad.parse::<WorkingPeriod>(),
                    Err(CalendarError::MalformedPeriod(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            "12:00-08:30".parse::<WorkingPeriod>(),
            Err(CalendarError::EmptyPeriod { .. })
        ));
    }

    #[test]
    fn invalid_working_periods_are_refused() {
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(WorkingPeriod::new(hm(12, 0), hm(8, 30)).is_err());
        assert!(WorkingPeriod::new(hm(8, 30), hm(8, 30)).is_err());
        let overlapping = [
            WorkingPeriod::new(hm(8, 30), hm(12, 0)).unwrap(),
            WorkingPeriod::new(hm(11, 0), hm(17, 0)).unwrap(),
        ];
        assert!(matches!(
            WorkCalendar::default().with_periods(overlapping),
            Err(CalendarError::Overlap { .. })
        ));
        assert_eq!(
            WorkCalendar::default().with_periods([]),
            Err(CalendarError::NoPeriods)
        );
    }

    #[test]
    fn a_calendar_covers_the_years_it_was_loaded_for() {
        let cal = xiamen_2026();
        assert_eq!(
            cal.covered_until(),
            None,
            "a calendar built by hand loads no year"
        );
        assert!(!cal.covers(d("2026-10-01"), d("2026-10-08")));

        let cal = xiamen_2026().with_years([2026]);
        assert_eq!(cal.covered_until(), Some(d("2026-12-31")));
        assert!(cal.covers(d("2026-01-01"), d("2026-12-31")));
        assert!(cal.covers(d("2026-12-31"), d("2026-06-01")), "either order");
        assert!(!cal.covers(d("2026-12-20"), d("2027-01-05")), "into 2027");
        assert!(!cal.covers(d("2025-12-31"), d("2026-01-05")), "from 2025");

        // 2028 loaded without 2027: covered until the end of 2028, but not across 2027.
        let gap = cal.clone().with_years([2028]);
        assert_eq!(gap.covered_until(), Some(d("2028-12-31")));
        assert!(gap.covers(d("2028-03-01"), d("2028-03-02")));
        assert!(!gap.covers(d("2026-12-30"), d("2028-01-02")));
        // The years change nothing of the working days themselves.
        assert!(!gap.is_working_day(d("2026-10-01")));
        assert!(
            gap.is_working_day(d("2027-10-01")),
            "an ordinary Friday, 2027 not loaded"
        );
    }

    #[test]
    fn day_kinds_round_trip_through_their_names() {
        for kind in [DayKind::Holiday, DayKind::Workday] {
            assert_eq!(kind.as_str().parse::<DayKind>().unwrap(), kind);
        }
        assert!("weekend".parse::<DayKind>().is_err());
    }
}
