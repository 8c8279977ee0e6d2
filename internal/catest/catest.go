// Package catest gives tests outside package ca a real bastion CA in a
// temporary data directory. It is apart from testbed because package ca's
// own tests use testbed, and testbed importing ca would be a cycle.
package catest

import (
	"testing"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// BastionCA is bastion's own CA in a temporary data directory, with its
// audit log open (closed in t.Cleanup unless the test closes it first).
type BastionCA struct {
	Layout ca.Layout
	Store  *audit.Store
	Auth   *ca.Authority
}

// NewBastionCA runs `bastion ca init`'s code in t.TempDir() and loads the
// authority with the default policy.
func NewBastionCA(t testing.TB) *BastionCA {
	t.Helper()
	l := ca.Layout{DataDir: t.TempDir()}
	if _, _, err := ca.Init(l, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	auth, err := ca.New(ca.Config{Layout: l}, store)
	if err != nil {
		t.Fatal(err)
	}
	return &BastionCA{Layout: l, Store: store, Auth: auth}
}
