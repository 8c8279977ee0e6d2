package scan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"strings"
	"testing"
)

// marshalKexInit encodes k as an SSH_MSG_KEXINIT payload with a zero cookie.
func marshalKexInit(k kexInit) []byte {
	b := []byte{msgKexInit}
	b = append(b, make([]byte, cookieLen)...)
	for _, l := range [][]string{
		k.KexAlgos, k.HostKeyAlgos,
		k.CiphersClientServer, k.CiphersServerClient,
		k.MACsClientServer, k.MACsServerClient,
		k.CompressionClientServer, k.CompressionServerClient,
		k.LanguagesClientServer, k.LanguagesServerClient,
	} {
		s := strings.Join(l, ",")
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	if k.FirstKexFollows {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return binary.BigEndian.AppendUint32(b, 0)
}

// packet wraps payload in an unencrypted binary packet with 4 bytes of
// padding.
func packet(payload []byte) []byte {
	const pad = 4
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)+pad))
	b = append(b, pad)
	b = append(b, payload...)
	return append(b, make([]byte, pad)...)
}

func sampleKexInit() kexInit {
	return kexInit{
		KexAlgos:                []string{"curve25519-sha256", "diffie-hellman-group14-sha1"},
		HostKeyAlgos:            []string{"ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519"},
		CiphersClientServer:     []string{"aes128-ctr"},
		CiphersServerClient:     []string{"aes128-ctr", "aes128-cbc"},
		MACsClientServer:        []string{"hmac-sha2-256-etm@openssh.com"},
		MACsServerClient:        []string{"hmac-sha2-256-etm@openssh.com"},
		CompressionClientServer: []string{"none"},
		CompressionServerClient: []string{"none", "zlib@openssh.com"},
		LanguagesClientServer:   []string{},
		LanguagesServerClient:   []string{},
	}
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseRealOpenSSHKexInit parses a KEXINIT captured from Debian 12's
// sshd with a single ed25519 host key and default settings.
func TestParseRealOpenSSHKexInit(t *testing.T) {
	k, err := parseKexInit(readTestdata(t, "openssh-9.2-kexinit.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(k.KexAlgos, "curve25519-sha256") || !slices.Contains(k.KexAlgos, strictKexServer) {
		t.Errorf("KexAlgos = %v", k.KexAlgos)
	}
	if !slices.Equal(k.HostKeyAlgos, []string{"ssh-ed25519"}) {
		t.Errorf("HostKeyAlgos = %v", k.HostKeyAlgos)
	}
	if !slices.Contains(k.MACsServerClient, "hmac-sha1") || len(k.LanguagesClientServer) != 0 {
		t.Errorf("MACs = %v, languages = %v", k.MACsServerClient, k.LanguagesClientServer)
	}

	ident, k2, err := readServerHello(bufio.NewReader(bytes.NewReader(readTestdata(t, "openssh-9.2-hello.bin"))))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ident, "SSH-2.0-OpenSSH_9.2") || !slices.Equal(k.KexAlgos, k2.KexAlgos) {
		t.Errorf("ident %q, kex %v", ident, k2.KexAlgos)
	}
}

func TestReadServerHello(t *testing.T) {
	good := packet(marshalKexInit(sampleKexInit()))
	tests := []struct {
		name    string
		stream  []byte
		ident   string
		wantErr string
	}{
		{"plain", append([]byte("SSH-2.0-Test_1.0\r\n"), good...), "SSH-2.0-Test_1.0", ""},
		{"bare LF and preamble", append([]byte("hello there\nSSH-2.0-Test_1.0 comment\n"), good...), "SSH-2.0-Test_1.0 comment", ""},
		{"ssh 1.99", append([]byte("SSH-1.99-Old\r\n"), good...), "SSH-1.99-Old", ""},
		{"ssh 1", append([]byte("SSH-1.5-Ancient\r\n"), good...), "SSH-1.5-Ancient", "not SSH protocol 2"},
		{"http", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), "", "identification string"},
		{"endless preamble", bytes.Repeat([]byte("x\n"), maxPreambleLines+2), "", "no SSH identification string"},
		{"long line", append(bytes.Repeat([]byte("x"), maxLineLen+1), '\n'), "", "longer than"},
		{"long ident", append([]byte("SSH-2.0-"+strings.Repeat("x", 250)+"\r\n"), good...), "", "longer than RFC 4253 allows"},
		{"no packet", []byte("SSH-2.0-Test\r\n"), "SSH-2.0-Test", "first packet"},
		{"huge packet", append([]byte("SSH-2.0-Test\r\n"), 0x7f, 0, 0, 0, 4), "SSH-2.0-Test", "outside"},
		{"padding too long", append([]byte("SSH-2.0-Test\r\n"), 0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0), "SSH-2.0-Test", "padding"},
		{"not kexinit", append([]byte("SSH-2.0-Test\r\n"), packet([]byte{21})...), "SSH-2.0-Test", "got message 21"},
		{"truncated packet", append([]byte("SSH-2.0-Test\r\n"), good[:len(good)-3]...), "SSH-2.0-Test", "first packet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ident, k, err := readServerHello(bufio.NewReader(bytes.NewReader(tc.stream)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "scan: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if !slices.Equal(k.CiphersServerClient, []string{"aes128-ctr", "aes128-cbc"}) {
				t.Errorf("ciphers = %v", k.CiphersServerClient)
			}
			if ident != tc.ident {
				t.Errorf("ident = %q, want %q", ident, tc.ident)
			}
		})
	}
}

func TestParseKexInitRejects(t *testing.T) {
	good := marshalKexInit(sampleKexInit())
	withList := func(list string) []byte {
		b := []byte{msgKexInit}
		b = append(b, make([]byte, cookieLen)...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(list)))
		return append(b, list...)
	}
	tests := map[string][]byte{
		"empty":             nil,
		"wrong message":     {21},
		"short cookie":      good[:10],
		"truncated list":    good[:1+cookieLen+6],
		"list past end":     append(append([]byte{msgKexInit}, make([]byte, cookieLen)...), 0, 0, 1, 0, 'a'),
		"empty name":        withList("a,,b"),
		"trailing comma":    withList("a,"),
		"space in name":     withList("a b"),
		"control character": withList("a\x00b"),
		"non-ascii":         withList("caf\xc3\xa9"),
		"no reserved":       good[:len(good)-2],
	}
	for name, payload := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := parseKexInit(payload); err == nil {
				t.Fatal("parsed, want an error")
			}
		})
	}
	k, err := parseKexInit(append(good, "trailing"...))
	if err != nil || !slices.Equal(k.KexAlgos, sampleKexInit().KexAlgos) {
		t.Fatalf("trailing bytes: %v %v; OpenSSH ignores them, so must we", k.KexAlgos, err)
	}
}

// FuzzParseKexInit checks that the KEXINIT parser never panics on
// network input and that what it accepts round-trips.
func FuzzParseKexInit(f *testing.F) {
	f.Add(marshalKexInit(sampleKexInit()))
	f.Add(marshalKexInit(kexInit{}))
	f.Add(readTestdata(f, "openssh-9.2-kexinit.bin"))
	f.Add([]byte{msgKexInit})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		k, err := parseKexInit(payload)
		if err != nil {
			return
		}
		for _, l := range [][]string{k.KexAlgos, k.HostKeyAlgos, k.CiphersClientServer, k.MACsServerClient, k.LanguagesServerClient} {
			for _, n := range l {
				if n == "" || strings.ContainsAny(n, ", \x00") {
					t.Fatalf("accepted bad name %q", n)
				}
			}
		}
		again, err := parseKexInit(marshalKexInit(k))
		if err != nil {
			t.Fatalf("re-encoded KEXINIT does not parse: %v", err)
		}
		if !slices.Equal(again.KexAlgos, k.KexAlgos) || !slices.Equal(again.MACsServerClient, k.MACsServerClient) || again.FirstKexFollows != k.FirstKexFollows {
			t.Fatalf("round trip changed %+v into %+v", k, again)
		}
		// Judging what was parsed must not panic either.
		judgeKexInit(k)
	})
}

// FuzzReadServerHello feeds arbitrary server output to the reader of the
// identification string and first packet.
func FuzzReadServerHello(f *testing.F) {
	f.Add(readTestdata(f, "openssh-9.2-hello.bin"))
	f.Add(append([]byte("SSH-2.0-x\r\n"), packet(marshalKexInit(sampleKexInit()))...))
	f.Add([]byte("junk\nSSH-2.0-x\n\x00\x00\x00\x06\x04\x14"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		ident, _, err := readServerHello(bufio.NewReader(bytes.NewReader(stream)))
		if err == nil && !strings.HasPrefix(ident, "SSH-") {
			t.Fatalf("accepted identification %q", ident)
		}
		if len(ident) > maxLineLen {
			t.Fatalf("identification of %d bytes", len(ident))
		}
	})
}
