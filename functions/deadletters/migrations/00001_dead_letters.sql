-- Dead letters: every event a Knative dispatcher gave up on, with why, and what has been done about it.
-- A dead letter is one (event source, event id, destination): the same event dead-lettered again for the
-- same destination updates its row (last failure, count) instead of adding one.

-- +goose Up
CREATE TABLE deadletters.dead_letters (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL,
    event_source     text NOT NULL,
    event_type       text NOT NULL,
    partition_key    text NOT NULL DEFAULT '',
    -- Every context attribute and extension of the original event, as strings, except Knative's
    -- knativeerror* and knativekafka* extensions (kept in their own columns).
    attributes       jsonb NOT NULL,
    data             bytea,
    -- knativeerrordest: the subscriber that failed, where a replay goes ('' when missing).
    dest             text NOT NULL,
    -- parked: the destination was unavailable (no answer, 5xx, 404, 408, 409, 429); redriven automatically.
    -- rejected: the destination refused the event (another 4xx); replayed only by hand.
    category         text NOT NULL CHECK (category IN ('parked', 'rejected')),
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    error_code       integer,  -- knativeerrorcode
    error_data       bytea,    -- knativeerrordata, base64-decoded
    kafka_partition  integer,  -- knativekafkapartition of the original record
    kafka_offset     bigint,   -- knativekafkaoffset of the original record
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    failure_count    integer NOT NULL DEFAULT 1,
    replay_count     integer NOT NULL DEFAULT 0,
    last_replay_at   timestamptz,
    last_replay_code integer,
    last_replay_error text,
    replayed_at      timestamptz,
    replayed_by      text,
    discarded_at     timestamptz,
    discarded_by     text,
    discard_reason   text,
    UNIQUE (event_source, event_id, dest)
);

-- The redrive reads each destination's open parked letters, oldest first.
CREATE INDEX dead_letters_parked ON deadletters.dead_letters (dest, id)
    WHERE status = 'open' AND category = 'parked';
CREATE INDEX dead_letters_last_failed ON deadletters.dead_letters (last_failed_at);

-- What people did to dead letters (replays by hand, discards): who, when, why, and what came of it.
CREATE TABLE deadletters.actions (
    id             bigserial PRIMARY KEY,
    dead_letter_id bigint NOT NULL REFERENCES deadletters.dead_letters (id),
    action         text NOT NULL CHECK (action IN ('replay', 'discard')),
    actor          text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    outcome        text NOT NULL DEFAULT '',
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX actions_dead_letter ON deadletters.actions (dead_letter_id, id);

-- +goose Down
DROP TABLE deadletters.actions;
DROP TABLE deadletters.dead_letters;
