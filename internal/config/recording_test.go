package config

import (
	"strings"
	"testing"
)

func TestRecordingMaxBytes(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want int64
		err  string
	}{
		{"", 0, ""},
		{"recording:\n  max_bytes_per_session: 64MiB\n", 64 << 20, ""},
		{"recording:\n  max_bytes_per_session: 1GiB\n", 1 << 30, ""},
		{"recording:\n  max_bytes_per_session: 1048576\n", 1 << 20, ""},
		{"recording:\n  max_bytes_per_session: 512KiB\n", 512 << 10, ""},
		{"recording:\n  max_bytes_per_session: 10KiB\n", 0, "recording.max_bytes_per_session"},
		{"recording:\n  max_bytes_per_session: lots\n", 0, "not a size"},
		{"recording:\n  max_bytes_per_session: -5\n", 0, "not a size"},
		{"recording:\n  max_bytes_per_session: 99999999GiB\n", 0, "too large"},
		{"recording:\n  max_bytes: 1MiB\n", 0, `unknown key "max_bytes"`},
	} {
		f, err := Parse([]byte("data_dir: ./d\n" + tc.yaml))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: err %v, want one containing %q", tc.yaml, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err == "" && int64(f.Recording.MaxBytesPerSession) != tc.want:
			t.Errorf("%q: %d bytes, want %d", tc.yaml, f.Recording.MaxBytesPerSession, tc.want)
		}
	}
}
