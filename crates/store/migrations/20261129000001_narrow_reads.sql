-- Lists that stay flat when their filter is narrow (wangge bench --scale, 1M cases): a grid
-- worker's grid, one community, a department's work, the cases a tier holds itself. Each is read
-- from an index whose leading columns are its filter, one (…, state) range at a time in id order,
-- so a page reads about a page of rows whatever the closed history holds.

-- Codes are digit strings, compared byte by byte: with the C collation a grid-code prefix is an
-- index range (`>= prefix AND < prefix || ':'`) whatever the database's collation.
DROP INDEX cases_grid;
ALTER TABLE cases ALTER COLUMN grid_code TYPE TEXT COLLATE "C";

-- One community's or grid's cases by grid, state and id (the lists find the grids under a prefix
-- by skipping along this index). Replaces (grid_code), which is its leading column.
CREATE INDEX cases_grid_state_id ON cases (grid_code, state, id);

-- A department's cases by state (ListAssigned: its open ones, never the closed ones it handled).
-- Replaces (department).
CREATE INDEX cases_department_state_id ON cases (department, state, id) WHERE department IS NOT NULL;
DROP INDEX cases_department;

-- The cases a tier holds itself, by state (the district's own open cases among the streets').
CREATE INDEX cases_owner_state_id ON cases (owner_tier, state, id);
