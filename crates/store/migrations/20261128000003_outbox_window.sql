-- The relay counts the events published lately and still awaiting a peer (its confirmation
-- window). Without an index on published_at that count walked every published row still awaiting
-- confirmation: behind a slow peer, the whole backlog, on every turn (wangge bench: the village's
-- PostgreSQL spent up to 9 ms of CPU per report once the outbox held tens of thousands of rows).
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
