package ca

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// PolicyFile is DATA_DIR/ca/policy.json: the signing policy the gateway
// last ran with, so that every path that signs (bastion ca sign on the same
// data dir included) applies the one policy the configuration sets. It
// stays in the data dir when the keys live elsewhere (Layout.KeyDir): the
// key directory may be a read-only mount shared by several gateways.
func (l Layout) PolicyFile() string { return filepath.Join(l.DataDir, "ca", "policy.json") }

// SavePolicy records p as the data dir's signing policy, atomically
// (temporary file, fsync, rename, fsync of the directory).
func SavePolicy(l Layout, p Policy) error {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(l.PolicyFile()), 0o700); err != nil {
		return fmt.Errorf("ca: save signing policy: %w", err)
	}
	if err := atomicfile.WriteFile(l.PolicyFile(), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("ca: save signing policy: %w", err)
	}
	return nil
}

// LoadPolicy reads the data dir's recorded signing policy; ok is false
// when none was recorded (no gateway has run on this data dir).
func LoadPolicy(l Layout) (p Policy, ok bool, err error) {
	data, err := os.ReadFile(l.PolicyFile())
	if errors.Is(err, fs.ErrNotExist) {
		return Policy{}, false, nil
	}
	if err != nil {
		return Policy{}, false, fmt.Errorf("ca: read the signing policy: %w", err)
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return Policy{}, false, fmt.Errorf("ca: %s is damaged (%v): restore it, or pass --config to sign with the configuration's policy", l.PolicyFile(), err)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, false, fmt.Errorf("%s: %w", l.PolicyFile(), err)
	}
	return p, true, nil
}
