package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/config"
)

// TestServeLoggerSafe: the logger serve hands every component (gateway,
// cluster, shared state) escapes an operator's U+202E in a lock name as
// the terminal output does, writes durations as "30s" and says a deadline
// as "timed out", in both log formats.
func TestServeLoggerSafe(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log := newLogger(&buf, config.Log{Level: "info", Format: format})
			log.Info("applied a change from the cluster", "name", "gift\u202egnp.exe", "max_staleness", 30*time.Second,
				"err", fmt.Errorf("publish: %w", context.DeadlineExceeded))
			out := buf.String()
			if strings.ContainsRune(out, '\u202e') || !strings.Contains(out, `\u202e`) {
				t.Errorf("U+202E not escaped: %s", out)
			}
			if strings.Contains(out, "30000000000") || !strings.Contains(out, "30s") {
				t.Errorf("duration not written as text: %s", out)
			}
			if strings.Contains(out, "context deadline exceeded") || !strings.Contains(out, "timed out") {
				t.Errorf("deadline not said as timed out: %s", out)
			}
		})
	}
}
