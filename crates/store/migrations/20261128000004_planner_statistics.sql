-- What ANALYZE's sample gets wrong at a district's size (wangge bench --scale, 1M cases), pinned so
-- that a plan does not flip from one ANALYZE to the next:
-- - the number of states: sampled at 8 to 11 of the 20, which made `state = x` look common enough
--   that a state's list walked the primary key from the oldest case (a million rows read for 11)
--   in five of eight ANALYZEs, instead of the (state, id) range;
-- - events per case: `case_id` sampled at 82k distinct values of 10M rows (122 events a case, for
--   some 10), which inflated the evaluation's estimate.
ALTER TABLE cases ALTER COLUMN state SET (n_distinct = 20);
ALTER TABLE case_events ALTER COLUMN case_id SET (n_distinct = -0.1);

