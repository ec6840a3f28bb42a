-- End-to-end delivery. An outbox row now stays until every peer tier confirmed that it holds the
-- event (a receipt, or reconciliation finding the event there); JetStream's acknowledgement alone
-- deletes nothing. Events that arrive ahead of their predecessor are parked instead of redelivered,
-- and an event that can neither travel nor be applied is set aside as a dead letter at either end.

ALTER TABLE outbox
    ADD COLUMN case_id         UUID,
    ADD COLUMN seq             BIGINT,
    -- Peer tiers ('village', 'street', 'district') that have not yet confirmed the event.
    ADD COLUMN pending_tiers   TEXT[] NOT NULL DEFAULT '{}',
    -- Set when JetStream acknowledged the last send; the stream sequence and the stream's creation
    -- time (unix ns) tell later whether the message is still in that stream.
    ADD COLUMN published_at    TIMESTAMPTZ,
    ADD COLUMN stream_seq      BIGINT,
    ADD COLUMN stream_created  BIGINT,
    ADD COLUMN sends           INTEGER NOT NULL DEFAULT 0,
    -- Failed sends that were this message's own fault (others got through); bounded.
    ADD COLUMN failures        INTEGER NOT NULL DEFAULT 0,
    -- Unpublished: when to try again. Published: when to check on the confirmation.
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN checks          INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error      TEXT;
CREATE INDEX outbox_unpublished ON outbox (created_at, event_id) WHERE published_at IS NULL;
CREATE INDEX outbox_unconfirmed ON outbox (next_attempt_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_case ON outbox (case_id, seq);

-- Events that arrived before their predecessor: applied as soon as it is here, never redelivered
-- into the consumer's ack-pending window.
CREATE TABLE parked_events (
    event_id    UUID PRIMARY KEY,
    case_id     UUID NOT NULL,
    seq         BIGINT NOT NULL,
    -- The tier that authored the event: asked first for what is missing.
    author_tier TEXT NOT NULL,
    subject     TEXT NOT NULL,
    -- The envelope as it arrived.
    body        BYTEA NOT NULL,
    parked_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (case_id, seq)
);
CREATE INDEX parked_events_parked_at ON parked_events (parked_at);

ALTER TABLE dead_letters
    ADD COLUMN direction TEXT NOT NULL DEFAULT 'incoming' CHECK (direction IN ('incoming', 'outgoing')),
    ADD COLUMN event_id  UUID,
    ADD COLUMN case_id   UUID;
-- The same event is set aside once per direction, however often it comes back.
CREATE UNIQUE INDEX dead_letters_event ON dead_letters (direction, event_id) WHERE event_id IS NOT NULL;

-- Reconciliation compares cases by the day of their last change.
CREATE INDEX cases_updated ON cases (updated_at);
