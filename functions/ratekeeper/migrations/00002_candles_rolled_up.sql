-- +goose Up

-- From here on the ratekeeper writes only S5 candles per tick (in ratekeeper.candles) and rolls
-- closed S5 candles up into M1, M5 and H1 candles in ratekeeper.rollups. marks.rolled_up_to is,
-- per pair, the S5 bucket from which on nothing is rolled up yet (NULL: nothing rolled up): every S5
-- candle before it is in the pair's rollups, none from it on is, and reads merge the latter in.
--
-- Replicas of the old scheme (every tick into all four granularities of ratekeeper.candles) may run
-- beside this one during a rolling deploy. They write S5 candles as this scheme does, and their M1,
-- M5 and H1 rows stay in ratekeeper.candles, which this scheme neither reads nor writes; so their
-- ticks reach the rollups exactly once, through their S5 candles. Their prune deletes S5 candles
-- older than the retention (48 h) whether rolled up or not, so they must stop within 47 hours: an
-- S5 candle not yet rolled up is at most an hour old at the migration (below) or newer than it.
ALTER TABLE ratekeeper.marks ADD COLUMN rolled_up_to timestamptz;

CREATE TABLE ratekeeper.rollups (
    pair        text NOT NULL,
    granularity text NOT NULL CHECK (granularity IN ('M1', 'M5', 'H1')),
    bucket      timestamptz NOT NULL,
    open_bid    numeric NOT NULL,
    high_bid    numeric NOT NULL,
    low_bid     numeric NOT NULL,
    close_bid   numeric NOT NULL,
    open_ask    numeric NOT NULL,
    high_ask    numeric NOT NULL,
    low_ask     numeric NOT NULL,
    close_ask   numeric NOT NULL,
    volume      bigint NOT NULL CHECK (volume > 0),
    PRIMARY KEY (pair, granularity, bucket)
);

-- The old scheme's wider candles become the rollups, in one statement (one snapshot of the candles
-- and the marks; ALTER TABLE above holds off the old scheme's writers until this commits). A pair's
-- latest S5 candle may still receive ticks if it is under an hour old: it stays open, that is its
-- volume is taken out of the wider candles that hold it (its prices merge again by max, min and the
-- later close when it is rolled up), a wider candle that held nothing else is left out, and
-- rolled_up_to is its bucket. An older one is closed: it stays in the wider candles, and rolled_up_to
-- is its end, so the old scheme's prune may delete it. Buckets are aligned to UTC whatever the
-- session's time zone.
WITH latest AS (
    SELECT DISTINCT ON (pair) pair, bucket, volume
    FROM ratekeeper.candles WHERE granularity = 'S5' ORDER BY pair, bucket DESC
), open_s5 AS (
    SELECT pair, bucket, volume FROM latest WHERE bucket >= now() - interval '1 hour'
), marked AS (
    INSERT INTO ratekeeper.marks (pair, rolled_up_to)
    SELECT l.pair, coalesce(o.bucket, l.bucket + interval '5 seconds') FROM latest l LEFT JOIN open_s5 o USING (pair)
    ON CONFLICT (pair) DO UPDATE SET rolled_up_to = EXCLUDED.rolled_up_to
    RETURNING pair
)
INSERT INTO ratekeeper.rollups (pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
    open_ask, high_ask, low_ask, close_ask, volume)
SELECT c.pair, c.granularity, c.bucket, c.open_bid, c.high_bid, c.low_bid, c.close_bid,
    c.open_ask, c.high_ask, c.low_ask, c.close_ask, c.volume - coalesce(o.volume, 0)
FROM ratekeeper.candles c
LEFT JOIN open_s5 o ON o.pair = c.pair AND c.bucket = date_bin(
    CASE c.granularity WHEN 'M1' THEN interval '1 minute' WHEN 'M5' THEN interval '5 minutes' ELSE interval '1 hour' END,
    o.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00')
WHERE c.granularity IN ('M1', 'M5', 'H1') AND c.volume > coalesce(o.volume, 0);

-- +goose Down

-- Back to the old scheme: the wider candles of ratekeeper.candles become the rollups with every S5
-- candle not yet rolled up merged in. Writers of either scheme lock their marks first, so the lock
-- holds them off until this commits. Stop the new scheme's replicas before: a tick they commit after
-- this reaches no wider candle.
LOCK TABLE ratekeeper.marks IN ACCESS EXCLUSIVE MODE;

DELETE FROM ratekeeper.candles WHERE granularity IN ('M1', 'M5', 'H1');

INSERT INTO ratekeeper.candles (pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
    open_ask, high_ask, low_ask, close_ask, volume)
SELECT pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
    open_ask, high_ask, low_ask, close_ask, volume
FROM ratekeeper.rollups;

INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
    open_ask, high_ask, low_ask, close_ask, volume)
SELECT s.pair, g.code, date_bin(g.width, s.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
    (array_agg(s.open_bid ORDER BY s.bucket))[1], max(s.high_bid), min(s.low_bid), (array_agg(s.close_bid ORDER BY s.bucket DESC))[1],
    (array_agg(s.open_ask ORDER BY s.bucket))[1], max(s.high_ask), min(s.low_ask), (array_agg(s.close_ask ORDER BY s.bucket DESC))[1],
    sum(s.volume)::bigint
FROM ratekeeper.candles s
JOIN ratekeeper.marks m ON m.pair = s.pair
CROSS JOIN (VALUES ('M1', interval '1 minute'), ('M5', interval '5 minutes'), ('H1', interval '1 hour')) AS g(code, width)
WHERE s.granularity = 'S5' AND s.bucket >= coalesce(m.rolled_up_to, '-infinity')
GROUP BY s.pair, g.code, 3
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
    high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid),
    close_bid = EXCLUDED.close_bid,
    high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask),
    close_ask = EXCLUDED.close_ask,
    volume = c.volume + EXCLUDED.volume;

DROP TABLE ratekeeper.rollups;
ALTER TABLE ratekeeper.marks DROP COLUMN rolled_up_to;
