package rates

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kawase-fx/kawase/eventing/observe"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Limits of the candles endpoint. candleCountMax matches the ratekeeper's CandleCountMax.
const (
	candleCountDefault = 100
	candleCountMax     = 5000
	candlesTimeoutMs   = 3_000
)

var granularities = map[string]ratesv1.Granularity{
	"S5": ratesv1.Granularity_GRANULARITY_S5,
	"M1": ratesv1.Granularity_GRANULARITY_M1,
	"M5": ratesv1.Granularity_GRANULARITY_M5,
	"H1": ratesv1.Granularity_GRANULARITY_H1,
}

type ohlcJSON struct {
	Open  string `json:"o"`
	High  string `json:"h"`
	Low   string `json:"l"`
	Close string `json:"c"`
}

type candleJSON struct {
	Time     string   `json:"time"`
	Bid      ohlcJSON `json:"bid"`
	Ask      ohlcJSON `json:"ask"`
	Volume   int64    `json:"volume"`
	Complete bool     `json:"complete"`
}

type candlesJSON struct {
	Pair        string       `json:"pair"`
	Granularity string       `json:"granularity"`
	Candles     []candleJSON `json:"candles"`
}

// getCandles serves GET /v1/rates/{pair}/candles?granularity=M1&count=N from the ratekeeper's
// CandleService; this service never reads the ratekeeper's tables.
func (s *Service) getCandles(w http.ResponseWriter, r *http.Request) {
	i, err := s.pairIndex(r.PathValue("pair"))
	if err != nil {
		s.badRequest(w, observe.Problem{Status: http.StatusNotFound, Code: "unknown_pair", Title: "unknown pair", Detail: err.Error()})
		return
	}
	req, p := s.candleRequest(r, string(s.book.specs[i].Pair))
	if p != nil {
		s.badRequest(w, *p)
		return
	}
	if s.candles == nil {
		writeUnavailable(w, "candles are not configured on this replica")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), candlesTimeoutMs*time.Millisecond)
	defer cancel()
	resp, err := s.candles.GetCandles(ctx, req)
	if err != nil {
		if status.Code(err) == codes.InvalidArgument {
			s.badRequest(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_candles_request",
				Title: "invalid candles request", Detail: status.Convert(err).Message()})
			return
		}
		s.log.Warnw("candles unavailable", "error", err)
		writeUnavailable(w, status.Convert(err).Message())
		return
	}
	body, err := json.Marshal(candlesBody(resp, r.URL.Query().Get("granularity")))
	if err != nil {
		panic(fmt.Sprintf("rates: encode candles: %v", err)) // strings, ints and bools always encode
	}
	h := fnv.New64a()
	h.Write(body)
	etag := `"` + strconv.FormatUint(h.Sum64(), 36) + `"`
	s.writeJSON(w, r, etag, func(b []byte) []byte { return append(b, body...) }, len(body))
}

func (s *Service) candleRequest(r *http.Request, pair string) (*ratesv1.GetCandlesRequest, *observe.Problem) {
	if len(r.URL.RawQuery) > queryBytesMax {
		return nil, &observe.Problem{Status: http.StatusRequestURITooLong, Code: "query_too_long", Title: "query too long",
			Detail: fmt.Sprintf("the query string is at most %d bytes", queryBytesMax)}
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, &observe.Problem{Status: http.StatusBadRequest, Code: "invalid_query", Title: "invalid query", Detail: err.Error()}
	}
	if len(q["granularity"]) > 1 {
		return nil, &observe.Problem{Status: http.StatusBadRequest, Code: "invalid_granularity",
			Title: "invalid granularity", Detail: "give granularity once"}
	}
	if len(q["count"]) > 1 {
		return nil, &observe.Problem{Status: http.StatusBadRequest, Code: "invalid_count", Title: "invalid count",
			Detail: "give count once"}
	}
	g, ok := granularities[q.Get("granularity")]
	if !ok {
		return nil, &observe.Problem{Status: http.StatusBadRequest, Code: "invalid_granularity",
			Title: "invalid granularity", Detail: "granularity is one of S5, M1, M5, H1"}
	}
	count := candleCountDefault
	if c := q.Get("count"); c != "" {
		count, err = strconv.Atoi(c)
		if err != nil || count < 1 || count > candleCountMax {
			return nil, &observe.Problem{Status: http.StatusBadRequest, Code: "invalid_count", Title: "invalid count",
				Detail: fmt.Sprintf("count is a whole number from 1 to %d", candleCountMax)}
		}
	}
	return &ratesv1.GetCandlesRequest{Pair: pair, Granularity: g, Count: int32(count)}, nil
}

func candlesBody(resp *ratesv1.GetCandlesResponse, granularity string) candlesJSON {
	out := candlesJSON{Pair: resp.GetPair(), Granularity: granularity, Candles: make([]candleJSON, 0, len(resp.GetCandles()))}
	for _, c := range resp.GetCandles() {
		out.Candles = append(out.Candles, candleJSON{Time: c.GetTime().AsTime().UTC().Format(timeLayout),
			Bid:    ohlcJSON{c.GetBid().GetOpen(), c.GetBid().GetHigh(), c.GetBid().GetLow(), c.GetBid().GetClose()},
			Ask:    ohlcJSON{c.GetAsk().GetOpen(), c.GetAsk().GetHigh(), c.GetAsk().GetLow(), c.GetAsk().GetClose()},
			Volume: c.GetVolume(), Complete: c.GetComplete()})
	}
	return out
}

func writeUnavailable(w http.ResponseWriter, detail string) {
	w.Header().Set("Retry-After", retryAfterSeconds)
	observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "candles_unavailable",
		Title: "candles unavailable", Detail: detail})
}
