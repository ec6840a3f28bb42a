-- The village's intake of field reports. A client_id is the field app's own id of a report, unique
-- per reporter, not across the platform: two workers' apps may draft the same id, and cases
-- replicated from other villages must never collide on it. The digest of the normalized report tells
-- a resubmission (same payload: the same case) from a reused id (another payload: refused).

CREATE TABLE intake_keys (
    reporter_id    TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    -- Deferred: the key is claimed first in the report's transaction, the case inserted after it.
    case_id        UUID NOT NULL REFERENCES cases (id) DEFERRABLE INITIALLY DEFERRED,
    -- SHA-256 of the normalized report as the village parsed it; NULL for keys carried over from
    -- before digests, which answer any resubmission with their case, as they did then.
    payload_digest BYTEA CHECK (octet_length(payload_digest) = 32),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (reporter_id, client_id)
);

INSERT INTO intake_keys (reporter_id, client_id, case_id)
SELECT c.reporter_id, c.client_id, c.id
FROM cases c
JOIN case_events e ON e.case_id = c.id AND e.seq = 1 AND e.tier = 'village'
ON CONFLICT DO NOTHING;

ALTER TABLE cases DROP CONSTRAINT cases_client_id_key;
