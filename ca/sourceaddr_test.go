package ca

import (
	"net/netip"
	"strings"
	"testing"
)

// TestParseSourceAddress follows OpenSSH's addr_match_cidr_list: what it
// refuses, the parser refuses; where OpenSSH is looser (inet_aton forms),
// the parser is stricter.
func TestParseSourceAddress(t *testing.T) {
	for _, tc := range []struct {
		list    string
		wantErr string
	}{
		{"10.0.0.0/8", ""},
		{"10.0.0.1", ""},
		{"10.0.0.1/32,192.168.0.0/16", ""},
		{"2001:db8::/32", ""},
		{"::ffff:10.0.0.0/104", ""},
		{"", "empty address list"},
		{"10.0.0.1/8", "host bits"},
		{"2001:db8::1/32", "host bits"},
		{"10.0.0.0/8,", "empty entry"},
		{",10.0.0.0/8", "empty entry"},
		{"10.0.0.0/8,,10.1.0.0/16", "empty entry"},
		{"10.0.0.0/8, 10.1.0.0/16", "characters"},
		{"fe80::1%eth0", "characters"},
		{"10.0.0.0/33", "CIDR"},
		{"10.0.0.0/", "CIDR"},
		{"10.1", "not an IP address"},
		{"010.0.0.1", "not an IP address"},
		{"*", "characters"},
		{strings.Repeat("1", 50), "too long"},
	} {
		_, err := ParseSourceAddress(tc.list)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.list, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: err = %v, want one mentioning %q", tc.list, err, tc.wantErr)
		}
	}
}

func TestSourceAddressAllows(t *testing.T) {
	for _, tc := range []struct {
		list, addr string
		want       bool
	}{
		{"10.0.0.0/8", "10.1.2.3", true},
		{"10.0.0.0/8", "::ffff:10.1.2.3", true}, // sshd normalises a mapped peer
		{"10.0.0.0/8", "11.0.0.1", false},
		{"::ffff:10.0.0.0/104", "10.1.2.3", false}, // a mapped entry stays IPv6
		{"::ffff:10.0.0.0/104", "::ffff:10.1.2.3", false},
		{"2001:db8::/32", "2001:db8::5", true},
		{"0.0.0.0/0", "2001:db8::5", false},
		{"::/0", "10.0.0.1", false},
		{"10.0.0.1,2001:db8::5", "2001:db8::5", true},
	} {
		sa, err := ParseSourceAddress(tc.list)
		if err != nil {
			t.Fatal(err)
		}
		if got := sa.Allows(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%q allows %s = %v, want %v", tc.list, tc.addr, got, tc.want)
		}
	}
}

// FuzzParseSourceAddress: the parser never panics, and whatever it
// accepts is a list of canonical networks (no host bits) of at most as
// many entries as commas allow.
func FuzzParseSourceAddress(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.1/8", "::ffff:10.0.0.0/104", "a,,b", "fe80::1%eth0", "2001:db8::/32,10.0.0.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		sa, err := ParseSourceAddress(list)
		if err != nil {
			return
		}
		if len(sa) != strings.Count(list, ",")+1 {
			t.Fatalf("%q: %d entries", list, len(sa))
		}
		for _, p := range sa {
			if p.Masked() != p {
				t.Fatalf("%q: accepted %s with host bits", list, p)
			}
		}
	})
}
