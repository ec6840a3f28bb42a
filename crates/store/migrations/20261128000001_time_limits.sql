-- The rules of the command clock, as data (seeds/time-limits.toml, seeds/skip-tier.toml): time limits
-- per stage by category and urgency, standard extensions, skip-tier rules, and the years each work
-- calendar was loaded for.

-- One limit per stage, category (NULL: every category) and urgency (NULL: any). The most specific
-- rule wins (wangge_domain::limits::LimitRules::limit_for).
CREATE TABLE time_limits (
    stage         TEXT NOT NULL
                  CHECK (stage IN ('accept', 'dispatch', 'sign', 'handle', 'check', 'case')),
    category_code TEXT REFERENCES categories (code),
    urgency       TEXT CHECK (urgency IN ('normal', 'urgent', 'emergency')),
    amount        INTEGER NOT NULL CHECK (amount > 0),
    unit          TEXT NOT NULL CHECK (unit IN ('minutes', 'working_hours', 'working_days'))
);
CREATE UNIQUE INDEX time_limits_rule
    ON time_limits (stage, (coalesce(category_code, '')), (coalesce(urgency, '')));

-- 标准延期: what a duty chief may grant once, per category (NULL: every category).
CREATE TABLE extension_limits (
    category_code TEXT REFERENCES categories (code),
    amount        INTEGER NOT NULL CHECK (amount > 0),
    unit          TEXT NOT NULL CHECK (unit IN ('minutes', 'working_hours', 'working_days'))
);
CREATE UNIQUE INDEX extension_limits_category ON extension_limits ((coalesce(category_code, '')));

-- 越级上报: reports of the category (大类 or 小类) at `urgency` or above go from the village straight
-- to the district; the street gets a copy.
CREATE TABLE skip_tier_rules (
    category_code TEXT PRIMARY KEY REFERENCES categories (code),
    urgency       TEXT NOT NULL CHECK (urgency IN ('normal', 'urgent', 'emergency'))
);

-- The years whose calendar file was imported, per org: a year with no exception to the ordinary
-- week is still a loaded year, which calendar_days alone cannot tell.
CREATE TABLE calendar_years (
    org_code TEXT NOT NULL,
    year     INTEGER NOT NULL,
    PRIMARY KEY (org_code, year)
);

-- The limits of a category now live in time_limits only (one source); a database migrated from
-- the earlier schema gets them back from the next run of wangge-seed.
ALTER TABLE categories
    DROP COLUMN accept_limit,
    DROP COLUMN accept_limit_unit,
    DROP COLUMN handle_limit,
    DROP COLUMN handle_limit_unit;
