-- The feeder's fencing epoch: raised by one, under the leader-election lock, at the start of every
-- leadership term, and carried on every rate the term publishes.

-- +goose Up
CREATE TABLE feeder.epoch (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    value      bigint NOT NULL CHECK (value >= 0),
    holder     text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO feeder.epoch (id, value) VALUES (true, 0);

-- +goose Down
DROP TABLE feeder.epoch;
