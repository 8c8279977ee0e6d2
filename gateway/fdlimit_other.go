//go:build !unix

package gateway

// openFileLimit is unknown outside Unix.
func openFileLimit() uint64 { return 0 }
