package sshclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// Paths locates the files bastion keeps for a user.
type Paths struct {
	// Dir is the directory, normally ~/.ssh/bastion.
	Dir string
}

// DefaultPaths returns the Paths under the user's home directory, which
// comes from $HOME (os.UserHomeDir).
func DefaultPaths() (Paths, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return Paths{}, fmt.Errorf("sshclient: cannot find your home directory for ~/.ssh/bastion: %w (set HOME)", err)
	}
	return Paths{Dir: filepath.Join(home, ".ssh", "bastion")}, nil
}

// Key is the private key file.
func (p Paths) Key() string { return filepath.Join(p.Dir, "id_ed25519") }

// PublicKey is the public key file beside Key.
func (p Paths) PublicKey() string { return p.Key() + ".pub" }

// Certificate is where the certificate is kept; OpenSSH looks for it
// there by name as well.
func (p Paths) Certificate() string { return p.Key() + "-cert.pub" }

// KnownHosts holds the pinned host CA.
func (p Paths) KnownHosts() string { return filepath.Join(p.Dir, "known_hosts") }

// Config is the ssh config written for `Include`.
func (p Paths) Config() string { return filepath.Join(p.Dir, "config") }

// State is the state.json file.
func (p Paths) State() string { return filepath.Join(p.Dir, "state.json") }

// Ensure creates Dir with mode 0700 (and ~/.ssh, if missing, likewise),
// and narrows Dir to 0700 if it is open to others: it holds a private key.
func (p Paths) Ensure() error {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("sshclient: create %s: %w", p.Dir, err)
	}
	st, err := os.Stat(p.Dir)
	if err != nil {
		return fmt.Errorf("sshclient: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("sshclient: %s is not a directory: move it away so bastion can keep its key there", p.Dir)
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(p.Dir, 0o700); err != nil { // #nosec G302 -- a directory needs its x bit
			return fmt.Errorf("sshclient: %s is open to other users and cannot be narrowed: %w (run `chmod 700 %s`)", p.Dir, err, p.Dir)
		}
	}
	return nil
}

// State is what `bastion login` remembers between runs.
type State struct {
	// Gateway is the host:port of the gateway last logged in to.
	Gateway string `json:"gateway,omitempty"`
	// Hosts are the host patterns of the last written config.
	Hosts []string `json:"hosts,omitempty"`
	// IncludeHintShown records that the user has been told how to
	// include the config, so the hint is printed once.
	IncludeHintShown bool `json:"include_hint_shown,omitempty"`
}

// LoadState reads state.json; a missing file is the zero State.
func LoadState(path string) (State, error) {
	var s State
	data, err := os.ReadFile(path) // #nosec G304 -- the user's own state file
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("sshclient: read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, fmt.Errorf("sshclient: %s is not valid JSON (%v): delete it; bastion login writes a new one", path, err)
	}
	return s, nil
}

// SaveState writes state.json (0600).
func SaveState(path string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

// writeFileAtomic replaces path with data, so that a reader (ssh, another
// bastion) sees the old file or the new one, never a part, even after a
// crash.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("sshclient: %w", err)
	}
	return nil
}
