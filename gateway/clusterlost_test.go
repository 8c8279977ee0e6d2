package gateway

import (
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/cluster"
)

// TestLostSessionEndIsAnUpperBound: the session.end a member writes for a
// lost gateway's session does not claim a duration it cannot know: its
// duration_ms is "unknown" and duration_max_ms is up to when the loss
// was noticed.
func TestLostSessionEndIsAnUpperBound(t *testing.T) {
	tg := startGateway(t)
	start := time.Now().Add(-11 * time.Second)
	tg.gw.endLostSessions(t.Context(), "gw-9", []cluster.Session{{ID: "lost0000000001", Gateway: "gw-9", User: "alice", Target: "web1:22", Start: start, Kind: "tunnel"}})
	end := tg.waitEvent(t, audit.TypeSessionEnd, map[string]string{"reason": cluster.ReasonGatewayLost})
	if end.Fields["duration_ms"] != "unknown" || end.Fields["duration_max_ms"] == "" || end.Fields["duration_max_ms"] < "11000" || len(end.Fields["duration_max_ms"]) != 5 {
		t.Errorf("gateway_lost session.end = %v; want duration_ms unknown and duration_max_ms about 11000", end.Fields)
	}
}
