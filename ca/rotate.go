package ca

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// Rotate replaces the kind's signing key with a new one of keyType (empty:
// the same type as the current key). The old public key stays trusted (in
// the .previous.pub file, and in `ca export` and KRLs) until Retire, so
// certificates it signed keep working during the overlap. The old private
// key is destroyed: it is no longer needed to verify anything.
func (a *Authority) Rotate(ctx context.Context, k Kind, keyType KeyType, actor string) (oldKey, newKey ssh.PublicKey, err error) {
	old := a.PublicKey(k)
	if keyType == "" {
		keyType = keyTypeOf(old)
	}
	priv, err := generateKey(keyType, a.rand)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: rotate: %w", err)
	}
	newKey, err = ssh.NewPublicKey(priv.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("ca: rotate: %w", err)
	}
	// Write the new pair beside the current one first, so a crash leaves
	// the current CA intact.
	next := a.layout.PrivateKey(k) + ".next"
	_ = os.Remove(next)
	_ = os.Remove(next + ".pub")
	if err := writeKeyPair(next, priv, "bastion-"+string(k)+"-ca", a.passphrase); err != nil {
		return nil, nil, err
	}
	defer os.Remove(next)
	defer os.Remove(next + ".pub")

	ev := audit.Event{Type: audit.TypeCARotated, Actor: actor, Fields: map[string]string{
		"ca": string(k), "old_fp": Fingerprint(old), "new_fp": Fingerprint(newKey), "key_type": string(keyType),
	}}
	if _, err := a.rec.Append(ctx, ev); err != nil {
		return nil, nil, fmt.Errorf("ca: rotate: not rotated, the audit record could not be written: %w", err)
	}
	prev, err := readPublicKeys(a.layout.PreviousKeys(k))
	if err != nil {
		return nil, nil, err
	}
	prev = append([]ssh.PublicKey{old}, prev...)
	if err := replaceFile(a.layout.PreviousKeys(k), keyLines(k, prev), 0o644); err != nil {
		return nil, nil, err
	}
	if err := os.Rename(next+".pub", a.layout.PublicKey(k)); err != nil {
		return nil, nil, fmt.Errorf("ca: rotate: %w", err)
	}
	if err := os.Rename(next, a.layout.PrivateKey(k)); err != nil {
		return nil, nil, fmt.Errorf("ca: rotate: %w", err)
	}
	if err := a.reload(); err != nil {
		return nil, nil, err
	}
	return old, newKey, nil
}

// Retire stops trusting older keys of kind k: the one whose fingerprint is
// fp, or all of them when fp is empty. The current key cannot be retired.
func (a *Authority) Retire(ctx context.Context, k Kind, fp, actor string) ([]ssh.PublicKey, error) {
	prev, err := readPublicKeys(a.layout.PreviousKeys(k))
	if err != nil {
		return nil, err
	}
	if fp != "" && fp == Fingerprint(a.PublicKey(k)) {
		return nil, fmt.Errorf("ca: retire: %s is the current %s CA key; rotate first", fp, k)
	}
	var keep, gone []ssh.PublicKey
	for _, p := range prev {
		if fp == "" || Fingerprint(p) == fp {
			gone = append(gone, p)
		} else {
			keep = append(keep, p)
		}
	}
	if len(gone) == 0 {
		if fp == "" {
			return nil, fmt.Errorf("ca: retire: the %s CA has no previous keys to retire", k)
		}
		return nil, fmt.Errorf("ca: retire: no previous %s CA key has fingerprint %s (see `bastion ca export --%s`)", k, fp, k)
	}
	fps := make([]string, len(gone))
	for i, g := range gone {
		fps[i] = Fingerprint(g)
	}
	ev := audit.Event{Type: audit.TypeCARetired, Actor: actor, Fields: map[string]string{"ca": string(k), "retired_fp": strings.Join(fps, ",")}}
	if _, err := a.rec.Append(ctx, ev); err != nil {
		return nil, fmt.Errorf("ca: retire: not retired, the audit record could not be written: %w", err)
	}
	// Keep the retired keys on record first: the KRL must go on revoking
	// what they signed, because hosts may still trust them.
	retired, err := readPublicKeys(a.layout.RetiredKeys(k))
	if err != nil {
		return nil, fmt.Errorf("ca: retire: %w", err)
	}
	if err := replaceFile(a.layout.RetiredKeys(k), keyLinesNamed(k, append(retired, gone...), "retired"), 0o644); err != nil {
		return nil, err
	}
	if len(keep) == 0 {
		if err := os.Remove(a.layout.PreviousKeys(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ca: retire: %w", err)
		}
	} else if err := replaceFile(a.layout.PreviousKeys(k), keyLines(k, keep), 0o644); err != nil {
		return nil, err
	}
	return gone, a.reload()
}

// keyTypeOf maps a public key back to the KeyType that makes one like it.
func keyTypeOf(k ssh.PublicKey) KeyType {
	switch k.Type() {
	case ssh.KeyAlgoECDSA256:
		return KeyECDSAP256
	case ssh.KeyAlgoRSA:
		return KeyRSA4096
	}
	return KeyEd25519
}

// keyLines renders keys as authorized_keys lines for a .previous.pub file.
func keyLines(k Kind, keys []ssh.PublicKey) []byte { return keyLinesNamed(k, keys, "previous") }

// keyLinesNamed renders keys as authorized_keys lines with the comment
// bastion-KIND-ca-WHAT, skipping repeated keys.
func keyLinesNamed(k Kind, keys []ssh.PublicKey, what string) []byte {
	var b strings.Builder
	seen := map[string]bool{}
	for _, key := range keys {
		if seen[string(key.Marshal())] {
			continue
		}
		seen[string(key.Marshal())] = true
		fmt.Fprintf(&b, "%s bastion-%s-ca-%s\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), k, what)
	}
	return []byte(b.String())
}
