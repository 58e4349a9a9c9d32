-- +goose Up

-- From here on the ratekeeper writes only S5 candles per tick and rolls each closed S5 candle up into
-- its M1, M5 and H1 candles; reads merge each pair's open (latest) S5 candle into those. Before, every
-- tick went into all four, so the wider candles already hold the open S5 candle's ticks, and rolling
-- it up when it closes would count its volume twice (its prices are merged by max, min and the later
-- close, which changes nothing). So take its volume out of the wider candles now, and drop a wider
-- candle that held nothing else: the read recreates it from the open S5 candle.
WITH open_s5 AS (
    SELECT DISTINCT ON (pair) pair, bucket, volume
    FROM ratekeeper.candles WHERE granularity = 'S5' ORDER BY pair, bucket DESC
), wider AS (
    SELECT o.pair, g.code, date_bin(g.width, o.bucket, TIMESTAMPTZ '2000-01-01') AS bucket, o.volume
    FROM open_s5 o
    CROSS JOIN (VALUES ('M1', interval '1 minute'), ('M5', interval '5 minutes'), ('H1', interval '1 hour')) AS g(code, width)
), emptied AS (
    DELETE FROM ratekeeper.candles c USING wider w
    WHERE c.pair = w.pair AND c.granularity = w.code AND c.bucket = w.bucket AND c.volume <= w.volume
)
UPDATE ratekeeper.candles c SET volume = c.volume - w.volume
FROM wider w
WHERE c.pair = w.pair AND c.granularity = w.code AND c.bucket = w.bucket AND c.volume > w.volume;

-- +goose Down
-- Put the open S5 candles' volume back into the wider candles that hold them (recreating a dropped one
-- from the S5 candle), as the eager scheme keeps it.
WITH open_s5 AS (
    SELECT DISTINCT ON (pair) *
    FROM ratekeeper.candles WHERE granularity = 'S5' ORDER BY pair, bucket DESC
)
INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
    open_ask, high_ask, low_ask, close_ask, volume)
SELECT o.pair, g.code, date_bin(g.width, o.bucket, TIMESTAMPTZ '2000-01-01'), o.open_bid, o.high_bid, o.low_bid,
    o.close_bid, o.open_ask, o.high_ask, o.low_ask, o.close_ask, o.volume
FROM open_s5 o
CROSS JOIN (VALUES ('M1', interval '1 minute'), ('M5', interval '5 minutes'), ('H1', interval '1 hour')) AS g(code, width)
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
    high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid),
    close_bid = EXCLUDED.close_bid,
    high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask),
    close_ask = EXCLUDED.close_ask,
    volume = c.volume + EXCLUDED.volume;
