-- The registry every tier keeps for its scope: org tree, grids, categories, departments, workers, calendar.

CREATE TABLE orgs (
    code        TEXT PRIMARY KEY CHECK (code ~ '^[0-9]{12}$'),
    name        TEXT NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('city', 'district', 'street', 'community')),
    parent_code TEXT REFERENCES orgs (code),
    -- Codes of abolished units are never reused: they keep their validity dates.
    valid_from  DATE,
    valid_to    DATE
);
CREATE INDEX orgs_parent ON orgs (parent_code);

CREATE TABLE grids (
    code           TEXT PRIMARY KEY CHECK (code ~ '^[0-9]{15}$'),
    name           TEXT NOT NULL,
    community_code TEXT NOT NULL REFERENCES orgs (code),
    households     INTEGER NOT NULL DEFAULT 0,
    -- A GeoJSON Polygon or MultiPolygon geometry (WGS 84).
    boundary       JSONB NOT NULL
);
CREATE INDEX grids_community ON grids (community_code);

CREATE TABLE departments (
    code     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    org_code TEXT NOT NULL REFERENCES orgs (code),
    kind     TEXT NOT NULL
);
CREATE INDEX departments_org ON departments (org_code);

CREATE TABLE workers (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    role     TEXT NOT NULL,
    -- The grid of a grid worker, the org of other staff.
    org_code TEXT NOT NULL
);

CREATE TABLE categories (
    code              TEXT PRIMARY KEY,
    scheme            TEXT NOT NULL,
    name              TEXT NOT NULL,
    parent_code       TEXT REFERENCES categories (code),
    department_kind   TEXT NOT NULL DEFAULT '',
    accept_limit      INTEGER,
    accept_limit_unit TEXT,
    handle_limit      INTEGER,
    handle_limit_unit TEXT,
    CHECK (accept_limit_unit IN ('minutes', 'working_hours', 'working_days')),
    CHECK (handle_limit_unit IN ('minutes', 'working_hours', 'working_days'))
);

-- Exceptions to the Monday-to-Friday week, per org (the root org's calendar applies below it).
CREATE TABLE calendar_days (
    org_code TEXT NOT NULL,
    day      DATE NOT NULL,
    -- 'holiday': a weekday off; 'workday': a weekend day worked (调休 make-up day).
    kind     TEXT NOT NULL CHECK (kind IN ('holiday', 'workday')),
    name     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (org_code, day)
);
