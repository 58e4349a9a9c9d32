package deadletters

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Redrive bounds. Every redriveScanMs the redrive looks for destinations with parked letters. For
// each one it probes by replaying its oldest parked letter (if that fails, the oldest of the next key,
// up to replayUnavailableMax keys); once the destination answers 2xx (or refuses just that event), it
// replays the rest oldest first, redriveBatchMax at a time, at most redriveBatchesPerPassMax batches
// before it turns to the next destination. While the destination is unavailable, it waits
// redriveProbeDelayMs before the next probe, doubling up to redriveProbeDelayMaxMs. So a parked event
// is on its way at most about redriveProbeDelayMaxMs after its destination answers again.
const (
	redriveScanMs            = 1_000
	redriveProbeDelayMs      = 1_000
	redriveProbeDelayMaxMs   = 30_000
	redriveBatchMax          = 500
	redriveBatchesPerPassMax = 20
	// redriveLockRetryMs is how often a replica that does not hold the redrive lock tries to take it.
	redriveLockRetryMs = 5_000
	// redriveLockKey is the Postgres advisory lock that makes one replica the redriver, so two
	// replicas never replay the same letters at once.
	redriveLockKey int64 = 0x6b61776173650007 // "kawase", 7
)

// redriveBy is who the store records as replaying a letter the redrive replayed.
const redriveBy = "redrive"

// probe is the redrive's backoff for one destination.
type probe struct {
	delay time.Duration
	next  time.Time
}

// Run redrives parked dead letters until ctx ends. Only the replica holding the redrive lock works;
// the others wait to take over.
func (s *Service) Run(ctx context.Context) error {
	for {
		if err := s.leadRedrive(ctx); err != nil && ctx.Err() == nil {
			s.redriveErrors.Inc()
			s.log.Warnw("redrive stopped; retrying", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.scaled(redriveLockRetryMs)):
		}
	}
}

// leadRedrive takes the redrive lock on a connection of its own and redrives while it holds it.
func (s *Service) leadRedrive(ctx context.Context) error {
	conn, err := s.store.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("redrive: %w", err)
	}
	defer conn.Release()
	var leader bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, redriveLockKey).Scan(&leader); err != nil {
		return fmt.Errorf("redrive: take lock: %w", err)
	}
	if !leader {
		return nil
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, redriveLockKey) //nolint:errcheck // the lock dies with the session anyway
	probes := map[string]*probe{}
	for {
		// The lock lives as long as this connection's session; a dead connection has lost it.
		if err := conn.Ping(ctx); err != nil {
			return fmt.Errorf("redrive: lock connection: %w", err)
		}
		if err := s.redrivePass(ctx, probes); err != nil && ctx.Err() == nil {
			s.redriveErrors.Inc()
			s.log.Warnw("redrive pass failed; next pass retries", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.scaled(redriveScanMs)):
		}
	}
}

// redrivePass visits every destination with parked letters whose probe is due.
func (s *Service) redrivePass(ctx context.Context, probes map[string]*probe) error {
	dests, err := s.store.parkedDestinations(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, dest := range dests {
		live[dest] = true
		if checkDestination(dest) != nil {
			continue // only a person can deal with these (replay elsewhere is impossible; discard)
		}
		p := probes[dest]
		if p == nil {
			p = &probe{}
			probes[dest] = p
		}
		if time.Now().Before(p.next) {
			continue
		}
		delivered, unavailable, err := s.redriveDest(ctx, dest)
		if err != nil {
			return err
		}
		switch {
		case !unavailable:
			*p = probe{}
			continue
		case delivered > 0:
			// It answered, then faltered: try again soon, without growing the backoff.
			p.delay = s.scaled(redriveProbeDelayMs)
		default:
			s.probes.WithLabelValues("unavailable").Inc()
			p.delay = min(max(2*p.delay, s.scaled(redriveProbeDelayMs)), s.scaled(redriveProbeDelayMaxMs))
		}
		p.next = time.Now().Add(p.delay)
	}
	for dest := range probes {
		if !live[dest] {
			delete(probes, dest)
		}
	}
	return nil
}

// redriveDest probes dest with its oldest parked letters and, once it answers, replays the rest
// oldest first. It returns how many letters got through and whether the destination proved
// unavailable. The probe tries the oldest letter of up to replayUnavailableMax different keys in turn,
// so one letter the destination keeps failing (a 409 loop, say) cannot keep the others parked. While
// one batch is being sent, the next is read and the previous one's outcome written, so the database
// does not hold the sending up. A key whose letter found the destination unavailable is held back for
// the rest of the pass, so its letters never overtake each other.
func (s *Service) redriveDest(ctx context.Context, dest string) (delivered int, unavailable bool, err error) {
	f := filter{dest: dest, category: CategoryParked, status: StatusOpen, limit: redriveBatchMax}
	letters, err := s.store.letters(ctx, f)
	if err != nil || len(letters) == 0 {
		return 0, false, err
	}
	f.after = letters[len(letters)-1].id
	held := newKeySet()
	probed := map[int64]bool{}
	answered := false
	for _, l := range keyHeads(letters, replayUnavailableMax) {
		ok, failed, down := s.drain(ctx, []letter{l}, held)
		if err := s.record(ctx, redriveBy, redriveBy, ok, failed); err != nil {
			return delivered, false, err
		}
		probed[l.id] = true
		delivered += len(ok)
		if !down {
			answered = true
			break
		}
	}
	if !answered {
		return delivered, true, nil
	}
	s.probes.WithLabelValues("answered").Inc()
	s.log.Infow("destination answers again; redriving parked dead letters", "dest", dest)
	letters = slices.DeleteFunc(letters, func(l letter) bool { return probed[l.id] })

	var recording chan error // the previous batch's outcome being written; nil when none
	recorded := func() error {
		if recording == nil {
			return nil
		}
		err := <-recording
		recording = nil
		return err
	}
	defer func() {
		if rerr := recorded(); err == nil {
			err = rerr
		}
	}()
	type batch struct {
		letters []letter
		err     error
	}
	for range redriveBatchesPerPassMax {
		next := make(chan batch, 1)
		go func(f filter) {
			l, err := s.store.letters(ctx, f)
			next <- batch{l, err}
		}(f)
		ok, failed, down := s.drain(ctx, letters, held)
		delivered += len(ok)
		if err := recorded(); err != nil {
			<-next
			return delivered, false, err
		}
		ch := make(chan error, 1)
		go func() { ch <- s.record(ctx, redriveBy, redriveBy, ok, failed) }()
		recording = ch
		b := <-next
		if down || b.err != nil || len(b.letters) == 0 {
			return delivered, down, b.err
		}
		letters = b.letters
		f.after = letters[len(letters)-1].id
	}
	return delivered, false, nil
}

// keyHeads returns the oldest letter of each of the first n partition keys in letters (a letter
// without a key is a key of its own).
func keyHeads(letters []letter, n int) []letter {
	seen := map[string]bool{}
	var heads []letter
	for _, l := range letters {
		if len(heads) == n {
			break
		}
		if l.partitionKey != "" && seen[l.partitionKey] {
			continue
		}
		seen[l.partitionKey] = true
		heads = append(heads, l)
	}
	return heads
}

// scaled returns ms milliseconds divided by the time scale.
func (s *Service) scaled(ms int) time.Duration {
	return time.Duration(ms) * time.Millisecond / time.Duration(s.timeScale)
}
