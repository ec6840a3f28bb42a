-- The working periods of a day (作息时间: office hours and the lunch break) as data, the `hours` of
-- seeds/calendar-<year>.toml: per org, from a date on until the org's next entry, inherited like
-- the calendar days (the nearest org of district → street → community whose entries have begun
-- wins). Period i runs from starts[i] (included) to ends[i] (excluded); the importer checks that
-- they are well formed and do not overlap.
CREATE TABLE working_hours (
    org_code   TEXT NOT NULL,
    valid_from DATE NOT NULL,
    starts     TIME[] NOT NULL,
    ends       TIME[] NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (org_code, valid_from),
    CHECK (cardinality(starts) > 0 AND cardinality(starts) = cardinality(ends))
);

-- Working minutes: a limit counted, like working hours, in the working periods of working days
-- only (wall-clock `minutes` stay for the command center, staffed around the clock).
ALTER TABLE time_limits
    DROP CONSTRAINT time_limits_unit_check,
    ADD CONSTRAINT time_limits_unit_check
        CHECK (unit IN ('minutes', 'working_minutes', 'working_hours', 'working_days'));
ALTER TABLE extension_limits
    DROP CONSTRAINT extension_limits_unit_check,
    ADD CONSTRAINT extension_limits_unit_check
        CHECK (unit IN ('minutes', 'working_minutes', 'working_hours', 'working_days'));
