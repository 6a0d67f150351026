package testbed

import (
	"context"
	"fmt"
)

// Restart stops this Pebble (if it runs) and starts it again on the same
// addresses and configuration, waiting until it serves. Like the testbed's own
// Pebble after StartProcess, it comes back with new roots and no state: every
// account, order and authorization it held is gone.
func (ca *ExtraCA) Restart(ctx context.Context) error {
	ca.Stop()
	ca.tb.mu.Lock()
	p := ca.tb.procs[ca.name]
	ca.tb.mu.Unlock()
	if p == nil {
		return fmt.Errorf("testbed: %s is not known", ca.name)
	}
	if err := ca.tb.run(ctx, p); err != nil {
		ca.Stop()
		return fmt.Errorf("testbed: restart %s: %w\n%s", ca.name, err, p.tail(30))
	}
	return nil
}
