package usertext

import (
	"errors"
	"fmt"
	"testing"
)

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"sshclient: open a session on the gateway: EOF":                             "open a session on the gateway: EOF",
		"bastion: auditquery: --type: audit: event type \"x\" unknown":              "bastion: --type: event type \"x\" unknown",
		"devidp: unknown user or wrong password":                                    "unknown user or wrong password",
		"casual: words stay":                                                        "casual: words stay",
		"line one\nca: line two":                                                    "line one\nline two",
		"cluster: list cluster members: context deadline exceeded":                  "list cluster members: timed out",
		"read: rpc error: code = DeadlineExceeded desc = context deadline exceeded": "read: timed out",
		"sshclient: SSH handshake with 127.0.0.1:1: ssh: handshake failed: EOF":     "SSH handshake with 127.0.0.1:1: handshake failed: EOF",
		"list: rpc error: code = Unavailable desc = etcdserver: no leader":          "list: etcdserver: no leader",
		"clusterstate: publish: etcdclient: no leader":                              "publish: no leader",
	} {
		if got := Clean(in); got != want {
			t.Errorf("Clean(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Error(fmt.Errorf("gateway: listen: %w", errors.New("oidc: down"))); got != "listen: down" {
		t.Errorf("Error = %q", got)
	}
}
