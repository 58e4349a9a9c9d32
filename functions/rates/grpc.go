package rates

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// pairsPerRequestMax bounds the pair list of a gRPC request (a pair may be named once).
const pairsPerRequestMax = 256

// rateServer is the RateService, answered from the same snapshot and hub as the REST API.
type rateServer struct {
	ratesv1.UnimplementedRateServiceServer
	s *Service
}

func (e *entry) proto() *ratesv1.Rate {
	return &ratesv1.Rate{Pair: string(e.spec.Pair), Bid: e.bid, Ask: e.ask, Spread: e.spread,
		Time: timestamppb.New(e.rate.ProviderTime), Tradeable: e.tradeable, QuoteId: e.rate.QuoteID}
}

func (rs *rateServer) indexes(pairs []string) ([]int, error) {
	if len(pairs) > pairsPerRequestMax {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d pairs", pairsPerRequestMax)
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	// The list is parsed joined with commas: an empty element, or one holding a comma, would be read
	// as something else (nothing, or two pairs).
	for _, p := range pairs {
		if strings.TrimSpace(p) == "" || strings.Contains(p, ",") {
			return nil, status.Errorf(codes.InvalidArgument, "pair %q is not a pair name", p)
		}
	}
	out, err := rs.s.pairIndexes(strings.Join(pairs, ","))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return out, nil
}

// GetRates returns the current rate of each requested pair that has one.
func (rs *rateServer) GetRates(_ context.Context, req *ratesv1.GetRatesRequest) (*ratesv1.GetRatesResponse, error) {
	idx, err := rs.indexes(req.GetPairs())
	if err != nil {
		return nil, err
	}
	snap := rs.s.book.load()
	filter := filterOf(idx, len(snap.entries))
	resp := &ratesv1.GetRatesResponse{}
	for i, e := range snap.entries {
		if e != nil && (filter == nil || filter[i]) {
			resp.Rates = append(resp.Rates, e.proto())
		}
	}
	return resp, nil
}

// WatchRates sends a snapshot, then conflated changes, until the client leaves, falls behind
// (RESOURCE_EXHAUSTED) or the server stops (UNAVAILABLE). A replica serves at most WatchClientsMax of
// these streams, counted apart from the SSE streams; one more is refused with RESOURCE_EXHAUSTED. A
// client that stops reading blocks Send once the flow-control window is full, and a blocked Send
// returns only when the stream ends; so a sender goroutine does the sending, and this loop, free to
// see the hub drop the client, ends the stream by returning, which unblocks that Send.
func (rs *rateServer) WatchRates(req *ratesv1.WatchRatesRequest, stream ratesv1.RateService_WatchRatesServer) error {
	idx, err := rs.indexes(req.GetPairs())
	if err != nil {
		return err
	}
	s := rs.s
	sub, err := s.hub.subscribe(streamWatch, filterOf(idx, len(s.book.specs)))
	if errors.Is(err, ErrTooManyStreams) {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	if err != nil {
		return status.Error(codes.Unavailable, "rates service stopping")
	}
	defer s.hub.unsubscribe(sub)
	out := newWatchSender(stream)
	defer out.stop()
	sent := make([]uint64, len(s.book.specs))
	first := &ratesv1.WatchRatesResponse{Snapshot: true}
	for i, e := range s.book.load().entries {
		if e != nil && sub.wants(i) {
			first.Rates = append(first.Rates, e.proto())
			sent[i] = e.version
		}
	}
	if err := out.send(stream.Context(), sub, first); err != nil {
		return err
	}
	latest := make([]*entry, len(sent))
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-sub.gone:
			return watchEnd(sub)
		case err := <-out.failed:
			return err
		case b := <-sub.ch:
			entries := sub.conflate(b, sent, latest)
			if len(entries) == 0 {
				continue
			}
			msg := &ratesv1.WatchRatesResponse{Rates: make([]*ratesv1.Rate, len(entries))}
			for i, e := range entries {
				msg.Rates[i] = e.proto()
			}
			if err := out.send(stream.Context(), sub, msg); err != nil {
				return err
			}
		}
	}
}

// watchEnd is the status of a stream the hub ended.
func watchEnd(sub *subscriber) error {
	if errors.Is(sub.goneErr, errDropped) {
		return status.Error(codes.ResourceExhausted, sub.goneErr.Error())
	}
	return status.Error(codes.Unavailable, "rates service stopping")
}

// watchSender sends one WatchRates stream's messages from its own goroutine, one at a time.
type watchSender struct {
	msgs   chan *ratesv1.WatchRatesResponse
	failed chan error
	done   chan struct{}
}

func newWatchSender(stream ratesv1.RateService_WatchRatesServer) *watchSender {
	w := &watchSender{msgs: make(chan *ratesv1.WatchRatesResponse), failed: make(chan error, 1), done: make(chan struct{})}
	go func() {
		for {
			select {
			case <-w.done:
				return
			case msg := <-w.msgs:
				if err := stream.Send(msg); err != nil {
					w.failed <- err
					return
				}
			}
		}
	}()
	return w
}

// send hands msg to the sender goroutine once it is free: meanwhile the hub keeps queueing batches,
// so a client whose Send stays blocked is dropped, and send returns its status.
func (w *watchSender) send(ctx context.Context, sub *subscriber, msg *ratesv1.WatchRatesResponse) error {
	select {
	case w.msgs <- msg:
		return nil
	case err := <-w.failed:
		return err
	case <-sub.gone:
		return watchEnd(sub)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop lets an idle sender goroutine go; one blocked in Send goes when the stream ends.
func (w *watchSender) stop() { close(w.done) }
