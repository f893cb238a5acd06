package bed

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// pollInterval is how often conditions are checked: short, because most
// waits here are for a process or controller a few hundred milliseconds away.
const pollInterval = 200 * time.Millisecond

// poll checks cond until it returns true, returns an error (which ends the
// wait), or timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-t.C:
		}
	}
}

// Eventually waits until cond returns nil, checking every 200ms, and fails
// the test after timeout with the last thing cond said was still wrong. cond
// gets a context that ends with the wait; what names the wait in the failure.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func(ctx context.Context) error) {
	t.Helper()
	if err := WaitFor(context.Background(), timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// WaitFor is Eventually for code without a testing.TB: it returns the last
// error cond returned if timeout passes first.
func WaitFor(ctx context.Context, timeout time.Duration, cond func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	var last error
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		// A call cut short by the deadline says less than the answer
		// before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %s: %w", timeout, last)
		case <-t.C:
		}
	}
}

// ErrNotYet is a ready-made "still waiting" for conditions with nothing more
// specific to say.
var ErrNotYet = errors.New("condition not met yet")
