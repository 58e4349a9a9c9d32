package deadletters

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNotFound marks a dead letter id that does not exist.
var ErrNotFound = errors.New("no such dead letter")

// ErrReplayed marks a dead letter that was already delivered by a replay: there is nothing left to
// discard, and marking it discarded would misstate what happened to the event.
var ErrReplayed = errors.New("dead letter already replayed")

// store is the deadletters schema.
type store struct {
	pool *pgxpool.Pool
}

// incoming is one dead letter as it arrives.
type incoming struct {
	eventID, source, eventType, partitionKey string
	attributes                               map[string]string
	data                                     []byte
	dest, category                           string
	errorCode                                *int
	errorData                                []byte
	kafkaPartition                           *int32
	kafkaOffset                              *int64
}

// put stores a dead letter, or, when the same event already failed for the same destination, records
// the new failure on it (count, last failure, latest error). A letter that had been replayed opens
// again, because the event has failed since; a discarded one stays discarded.
func (s *store) put(ctx context.Context, in incoming) (id int64, inserted bool, err error) {
	err = s.pool.QueryRow(ctx, `
INSERT INTO deadletters.dead_letters (event_id, event_source, event_type, partition_key, attributes, data,
    dest, category, error_code, error_data, kafka_partition, kafka_offset)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (event_source, event_id, dest) DO UPDATE SET
    last_failed_at = now(),
    failure_count = dead_letters.failure_count + 1,
    category = EXCLUDED.category,
    error_code = EXCLUDED.error_code,
    error_data = EXCLUDED.error_data,
    status = CASE WHEN dead_letters.status = 'replayed' THEN 'open' ELSE dead_letters.status END
RETURNING id, xmax = 0`,
		in.eventID, in.source, in.eventType, in.partitionKey, in.attributes, in.data,
		in.dest, in.category, in.errorCode, in.errorData, in.kafkaPartition, in.kafkaOffset).Scan(&id, &inserted)
	if err != nil {
		return 0, false, fmt.Errorf("store dead letter %s: %w", in.eventID, err)
	}
	return id, inserted, nil
}

// filter selects dead letters for listing and replaying.
type filter struct {
	category, eventType, status, dest string
	since                             time.Time
	after                             int64
	limit                             int
}

const summaryColumns = `id, event_id, event_source, event_type, partition_key, category, status, error_code,
    error_data, dest, kafka_partition, kafka_offset, first_failed_at, last_failed_at, failure_count,
    replay_count, last_replay_at, last_replay_code, coalesce(last_replay_error, ''), replayed_at,
    coalesce(replayed_by, ''), discarded_at, coalesce(discarded_by, ''), coalesce(discard_reason, '')`

// scanSummary reads summaryColumns, then whatever extra columns follow them into extra.
func scanSummary(row pgx.Row, extra ...any) (DeadLetter, error) {
	var (
		d         DeadLetter
		errorData []byte
	)
	dest := append([]any{&d.ID, &d.EventID, &d.EventSource, &d.EventType, &d.PartitionKey, &d.Category, &d.Status,
		&d.ErrorCode, &errorData, &d.ErrorDest, &d.KafkaPartition, &d.KafkaOffset, &d.FirstFailedAt,
		&d.LastFailedAt, &d.FailureCount, &d.ReplayCount, &d.LastReplayAt, &d.LastReplayCode,
		&d.LastReplayError, &d.ReplayedAt, &d.ReplayedBy, &d.DiscardedAt, &d.DiscardedBy, &d.DiscardReason}, extra...)
	err := row.Scan(dest...)
	d.setErrorData(errorData)
	return d, err
}

// where renders f as a WHERE clause over its arguments.
func (f filter) where() (string, []any) {
	var since *time.Time
	if !f.since.IsZero() {
		since = &f.since
	}
	status := f.status
	if status == "" {
		status = StatusOpen
	}
	return `WHERE ($1 = '' OR category = $1) AND ($2 = '' OR event_type = $2) AND ($3 = 'all' OR status = $3)
    AND ($4 = '' OR dest = $4) AND ($5::timestamptz IS NULL OR last_failed_at >= $5) AND id > $6`,
		[]any{f.category, f.eventType, status, f.dest, since, f.after}
}

// list returns the dead letters f selects, oldest first.
func (s *store) list(ctx context.Context, f filter) ([]DeadLetter, error) {
	where, args := f.where()
	rows, err := s.pool.Query(ctx, `SELECT `+summaryColumns+` FROM deadletters.dead_letters `+where+
		` ORDER BY id LIMIT $7`, append(args, f.limit)...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		d, err := scanSummary(rows)
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return out, nil
}

// get returns one dead letter with its original event and history.
func (s *store) get(ctx context.Context, id int64) (DeadLetter, error) {
	row := s.pool.QueryRow(ctx, `SELECT `+summaryColumns+`, attributes, data FROM deadletters.dead_letters WHERE id = $1`, id)
	var (
		attrs map[string]string
		data  []byte
	)
	d, err := scanSummary(row, &attrs, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("get dead letter %d: %w", id, err)
	}
	d.Event = storedEvent(attrs, data)
	rows, err := s.pool.Query(ctx, `SELECT action, actor, reason, outcome, at FROM deadletters.actions
WHERE dead_letter_id = $1 ORDER BY id`, id)
	if err != nil {
		return d, fmt.Errorf("get dead letter %d history: %w", id, err)
	}
	d.History, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Action, error) {
		var a Action
		err := r.Scan(&a.Action, &a.Actor, &a.Reason, &a.Outcome, &a.At)
		return a, err
	})
	if err != nil {
		return d, fmt.Errorf("get dead letter %d history: %w", id, err)
	}
	return d, nil
}

const letterColumns = `id, event_id, partition_key, dest, attributes, data`

func scanLetter(row pgx.Row) (letter, error) {
	var l letter
	err := row.Scan(&l.id, &l.eventID, &l.partitionKey, &l.dest, &l.attributes, &l.data)
	return l, err
}

// letter returns what a replay of one dead letter needs, and its status.
func (s *store) letter(ctx context.Context, id int64) (letter, string, error) {
	var status string
	var l letter
	err := s.pool.QueryRow(ctx, `SELECT `+letterColumns+`, status FROM deadletters.dead_letters WHERE id = $1`, id).
		Scan(&l.id, &l.eventID, &l.partitionKey, &l.dest, &l.attributes, &l.data, &status)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, "", fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return l, "", fmt.Errorf("read dead letter %d: %w", id, err)
	}
	return l, status, nil
}

// letters returns the letters f selects, oldest first.
func (s *store) letters(ctx context.Context, f filter) ([]letter, error) {
	where, args := f.where()
	rows, err := s.pool.Query(ctx, `SELECT `+letterColumns+` FROM deadletters.dead_letters `+where+
		` ORDER BY id LIMIT $7`, append(args, f.limit)...)
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (letter, error) { return scanLetter(r) })
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	return out, nil
}

// parkedDestinations returns every destination with open parked letters.
func (s *store) parkedDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT dest FROM deadletters.dead_letters
WHERE status = 'open' AND category = 'parked' AND dest <> ''`)
	if err != nil {
		return nil, fmt.Errorf("parked destinations: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("parked destinations: %w", err)
	}
	return out, nil
}

// markReplayed records successful replays; a letter discarded meanwhile stays discarded.
func (s *store) markReplayed(ctx context.Context, ids []int64, by string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := s.pool.Exec(ctx, `UPDATE deadletters.dead_letters SET status = 'replayed', replayed_at = now(),
    replayed_by = $2, replay_count = replay_count + 1, last_replay_at = now(), last_replay_code = NULL,
    last_replay_error = NULL
WHERE id = ANY($1) AND status <> 'discarded'`, ids, by)
	if err != nil {
		return fmt.Errorf("mark %d dead letters replayed: %w", len(ids), err)
	}
	return nil
}

// markFailed records a failed replay: the letter stays open, in the category the new answer gives it.
func (s *store) markFailed(ctx context.Context, f failure) error {
	_, err := s.pool.Exec(ctx, `UPDATE deadletters.dead_letters SET category = $2, replay_count = replay_count + 1,
    last_replay_at = now(), last_replay_code = $3, last_replay_error = $4
WHERE id = $1`, f.id, f.category(), nullIfZero(f.status), f.err.Error())
	if err != nil {
		return fmt.Errorf("mark dead letter %d failed: %w", f.id, err)
	}
	return nil
}

// discard marks a letter discarded, once, with who and why; it reports whether this call did it.
func (s *store) discard(ctx context.Context, id int64, actor, reason string) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("discard dead letter %d: %w", id, err)
	}
	defer tx.Rollback(ctx)
	var prev string
	err = tx.QueryRow(ctx, `SELECT status FROM deadletters.dead_letters WHERE id = $1 FOR UPDATE`, id).Scan(&prev)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("discard dead letter %d: %w", id, err)
	}
	if prev == StatusDiscarded {
		return false, nil
	}
	if prev == StatusReplayed {
		return false, fmt.Errorf("dead letter %d: %w", id, ErrReplayed)
	}
	if _, err := tx.Exec(ctx, `UPDATE deadletters.dead_letters SET status = 'discarded', discarded_at = now(),
    discarded_by = $2, discard_reason = $3 WHERE id = $1`, id, actor, reason); err != nil {
		return false, fmt.Errorf("discard dead letter %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO deadletters.actions (dead_letter_id, action, actor, reason, outcome)
VALUES ($1, 'discard', $2, $3, $4)`, id, actor, reason, "was "+prev); err != nil {
		return false, fmt.Errorf("discard dead letter %d: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("discard dead letter %d: %w", id, err)
	}
	return true, nil
}

// recordAction notes a replay by hand in a letter's history.
func (s *store) recordAction(ctx context.Context, id int64, action, actor, reason, outcome string) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO deadletters.actions (dead_letter_id, action, actor, reason, outcome)
VALUES ($1, $2, $3, $4, $5)`, id, action, actor, reason, outcome); err != nil {
		return fmt.Errorf("record %s of dead letter %d: %w", action, id, err)
	}
	return nil
}

func nullIfZero(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}
