package config

import (
	"fmt"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// minRecordingBytes is the smallest limit accepted: less would keep
// little more than the first screen.
const minRecordingBytes = 64 << 10

// ByteSize is a size in bytes, written as a number or with a unit (KiB,
// MiB, GiB).
type ByteSize int64

var sizeRE = regexp.MustCompile(`^(\d+)\s*(B|KiB|MiB|GiB)?$`)

// UnmarshalYAML accepts 1048576, 1024KiB, 64MiB or 2GiB.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a size such as 64MiB", n.Line)
	}
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return fmt.Errorf("line %d: %s is not a size: use forms such as 65536, 512KiB, 64MiB or 1GiB", n.Line, shown(s))
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30}[m[2]]
	if err != nil || v > (1<<40)>>shift {
		return fmt.Errorf("line %d: %s is too large (at most 1024GiB)", n.Line, shown(s))
	}
	*b = ByteSize(v << shift)
	return nil
}

// validateRecording checks the recording: section.
func (f *File) validateRecording() error {
	if m := f.Recording.MaxBytesPerSession; m != 0 && m < minRecordingBytes {
		return fmt.Errorf("recording.max_bytes_per_session: %d bytes would keep little more than a screen: use 64KiB or more (default 64MiB)", m)
	}
	return nil
}
