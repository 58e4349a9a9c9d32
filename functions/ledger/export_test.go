package ledger

import (
	"context"
	"time"

	"github.com/kawase-fx/kawase/eventing"
)

// ApplyTogether applies cmds in one round, as commands delivered at the same time are, and returns
// each one's result and error, in the order of cmds.
func (l *Ledger) ApplyTogether(cmds []*eventing.OrderCommandV1) ([]eventing.OrderResultV1, []error) {
	reqs := make([]*request, len(cmds))
	for i, c := range cmds {
		reqs[i] = &request{ctx: context.Background(), cmd: c, started: time.Now(), done: make(chan reply, 1)}
	}
	l.applyRound(reqs)
	res := make([]eventing.OrderResultV1, len(cmds))
	errs := make([]error, len(cmds))
	for i, r := range reqs {
		rep := <-r.done
		res[i], errs[i] = rep.res, rep.err
	}
	return res, errs
}
