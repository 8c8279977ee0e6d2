package ca

import (
	"math"
	"time"

	"golang.org/x/crypto/ssh"
)

// maxCertTime is the latest time bastion represents: certificate times are
// unsigned 64-bit seconds (PROTOCOL.certkeys), and 2^64-1 ("forever", what
// ssh-keygen writes without -V) does not fit a time.Time that formats.
var maxCertTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// CertTime converts a certificate's valid_after or valid_before (seconds
// since 1970, unsigned) to a time without overflow: values past the year
// 9999, including ssh.CertTimeInfinity, become 9999-12-31T23:59:59Z.
func CertTime(t uint64) time.Time {
	if t > math.MaxInt64 || t > uint64(maxCertTime.Unix()) {
		return maxCertTime
	}
	return time.Unix(int64(t), 0).UTC() // #nosec G115 -- bounded above
}

// FormatCertTime formats a certificate time as RFC 3339 in UTC, or
// "forever" for ssh.CertTimeInfinity.
func FormatCertTime(t uint64) string {
	if t == ssh.CertTimeInfinity {
		return "forever"
	}
	return CertTime(t).Format(time.RFC3339)
}
