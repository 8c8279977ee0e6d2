package sshclient

import (
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestExpiryOfForeverCertificate: a certificate made without -V
// (valid_before 2^64-1) shows as the year 9999, not an overflowed date.
func TestExpiryOfForeverCertificate(t *testing.T) {
	c := &ssh.Certificate{ValidAfter: 0, ValidBefore: ssh.CertTimeInfinity}
	if got := Expiry(c).UTC().Format(time.RFC3339); got != "9999-12-31T23:59:59Z" {
		t.Errorf("Expiry = %s", got)
	}
	if !ValidAt(c, time.Now()) {
		t.Error("a forever certificate is not valid now")
	}
}
