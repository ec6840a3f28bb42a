-- Cases: an append-only event log per case, its projection, and the outbox/inbox of the bus.

CREATE TABLE cases (
    id             UUID PRIMARY KEY,
    number         TEXT NOT NULL UNIQUE,
    client_id      TEXT NOT NULL UNIQUE,
    category_code  TEXT NOT NULL,
    description    TEXT NOT NULL,
    longitude      DOUBLE PRECISION NOT NULL,
    latitude       DOUBLE PRECISION NOT NULL,
    grid_code      TEXT NOT NULL,
    state          TEXT NOT NULL,
    owner_tier     TEXT NOT NULL,
    owner_org      TEXT NOT NULL,
    department     TEXT,
    check_outcome  TEXT,
    check_by_tier  TEXT,
    urgency        TEXT NOT NULL,
    reporter_id    TEXT NOT NULL,
    captured_at    TIMESTAMPTZ NOT NULL,
    reported_at    TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    version        BIGINT NOT NULL,
    -- The whole projection as protobuf, so reads need no joins.
    snapshot       BYTEA NOT NULL
);
CREATE INDEX cases_grid ON cases (grid_code text_pattern_ops);
CREATE INDEX cases_state ON cases (state, reported_at);
CREATE INDEX cases_department ON cases (department) WHERE department IS NOT NULL;

CREATE TABLE case_events (
    event_id UUID PRIMARY KEY,
    case_id  UUID NOT NULL REFERENCES cases (id),
    seq      BIGINT NOT NULL CHECK (seq > 0),
    at       TIMESTAMPTZ NOT NULL,
    tier     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    -- The event as protobuf (wangge.v1.CaseEvent), exactly as it travels.
    body     BYTEA NOT NULL,
    UNIQUE (case_id, seq)
);

-- Daily report numbers per community (350205002006-20261126-0042).
CREATE TABLE case_numbers (
    community_code TEXT NOT NULL,
    day            DATE NOT NULL,
    last           INTEGER NOT NULL,
    PRIMARY KEY (community_code, day)
);

-- Events written here in the same transaction as the state change; the relay publishes and deletes them.
CREATE TABLE outbox (
    event_id   UUID PRIMARY KEY,
    subject    TEXT NOT NULL,
    body       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_created ON outbox (created_at);

-- Events applied from the bus; a second delivery hits the key and has no effect.
CREATE TABLE inbox (
    event_id   UUID PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Messages that could not be applied (undecodable, or refused by the state machine): kept, not lost.
CREATE TABLE dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    subject     TEXT NOT NULL,
    body        BYTEA NOT NULL,
    error       TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
