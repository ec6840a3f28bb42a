-- Intake looks for open cases of the same category reported near a new report shortly before
-- (possible duplicates): by category and time first, the location is then checked in the box.
CREATE INDEX cases_category_reported ON cases (category_code, reported_at);
