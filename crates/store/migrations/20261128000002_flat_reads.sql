-- Reads that stay flat however long the history grows (a district holds millions of cases).

-- How many cases the database holds, kept as cases are added, so that GetStatus never counts the
-- table. A new case adds a row to case_count_deltas (an insert takes no lock another writer waits
-- for, so concurrent reports and batches never queue or deadlock on a counter); reading the count
-- folds the deltas into case_counts first.
CREATE TABLE case_counts (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    cases    BIGINT NOT NULL
);
INSERT INTO case_counts (cases) SELECT count(*) FROM cases;
CREATE TABLE case_count_deltas (
    added INTEGER NOT NULL
);

-- Lists by state read each state's range in id order (the console pages by id): the few thousand
-- open cases are found without walking the closed million. Replaces (state, reported_at), which
-- nothing reads in that order.
CREATE INDEX cases_state_id ON cases (state, id);
DROP INDEX cases_state;

-- Possible duplicates at intake: open cases of the category in the cells (0.001°, ~100 m) around a
-- new report, reported lately. By category and time alone, every report read all of its
-- category's recent reports in the district.
CREATE INDEX cases_nearby ON cases (
    category_code,
    (floor(longitude * 1000)::integer),
    (floor(latitude * 1000)::integer),
    reported_at
);
DROP INDEX cases_category_reported;
