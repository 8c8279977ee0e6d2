package scan

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// This file reads the server's identification line and its first binary
// packet, SSH_MSG_KEXINIT, by hand. golang.org/x/crypto/ssh negotiates
// algorithms but exposes only the ones it picked, never the server's full
// lists, and it refuses to negotiate at all with a server that offers only
// algorithms it does not implement (DSA host keys, CBC-only ciphers) —
// exactly the servers a scan must describe. The format before the first key
// exchange is plain text and unencrypted packets (RFC 4253 §4.2, §6, §7.1),
// small enough to parse directly; since the bytes come from the network,
// every length is checked and FuzzParseKexInit exercises the parser.

const (
	// maxLineLen bounds every line before and including the identification
	// string. RFC 4253 §4.2 allows 255 bytes for the identification string;
	// lines before it have no stated limit, so allow a little more.
	maxLineLen = 1024
	// maxPreambleLines bounds the lines a server may send before its
	// identification string.
	maxPreambleLines = 64
	// maxPacketLen bounds packet_length. RFC 4253 §6.1 requires 35000; the
	// 256 KiB that OpenSSH accepts leaves room for long algorithm lists.
	maxPacketLen = 256 * 1024
	// maxHelloLen is what a scan records of the server's first bytes:
	// preamble, identification string and one packet, with slack.
	maxHelloLen = maxPreambleLines*maxLineLen + maxPacketLen + 4

	// msgKexInit is SSH_MSG_KEXINIT (RFC 4250 §4.1.2).
	msgKexInit = 20
	// cookieLen is the random cookie that starts a KEXINIT.
	cookieLen = 16
)

// kexInit is the algorithm part of an SSH_MSG_KEXINIT (RFC 4253 §7.1).
type kexInit struct {
	KexAlgos                []string
	HostKeyAlgos            []string
	CiphersClientServer     []string
	CiphersServerClient     []string
	MACsClientServer        []string
	MACsServerClient        []string
	CompressionClientServer []string
	CompressionServerClient []string
	LanguagesClientServer   []string
	LanguagesServerClient   []string
	FirstKexFollows         bool
}

// readServerHello reads the server's identification string (skipping the
// lines RFC 4253 §4.2 lets a server send before it) and the payload of its
// first binary packet, which must be SSH_MSG_KEXINIT.
func readServerHello(r *bufio.Reader) (ident string, k kexInit, err error) {
	for i := 0; ; i++ {
		line, err := readLine(r)
		if err != nil {
			return "", k, fmt.Errorf("scan: read the server's identification string: %w", err)
		}
		if strings.HasPrefix(line, "SSH-") {
			ident = line
			break
		}
		if i >= maxPreambleLines {
			return "", k, fmt.Errorf("scan: no SSH identification string in the first %d lines; is this an SSH server?", maxPreambleLines)
		}
	}
	if len(ident) > 253 { // 255 including CR LF
		return "", k, fmt.Errorf("scan: identification string is %d bytes, longer than RFC 4253 allows", len(ident))
	}
	if !strings.HasPrefix(ident, "SSH-2.0-") && !strings.HasPrefix(ident, "SSH-1.99-") {
		return ident, k, fmt.Errorf("scan: server speaks %q, not SSH protocol 2", ident)
	}
	payload, err := readPacket(r)
	if err != nil {
		return ident, k, err
	}
	k, err = parseKexInit(payload)
	return ident, k, err
}

// readLine reads one line ending in LF (CR LF or a bare LF, as OpenSSH
// accepts) and returns it without the line ending.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		c, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if c == '\n' {
			return strings.TrimSuffix(string(b), "\r"), nil
		}
		if len(b) >= maxLineLen {
			return "", fmt.Errorf("line longer than %d bytes", maxLineLen)
		}
		b = append(b, c)
	}
}

// readPacket reads one unencrypted binary packet (RFC 4253 §6) and returns
// its payload. Before the first key exchange there is no MAC.
func readPacket(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("scan: read the server's first packet: %w", err)
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	padding := uint32(hdr[4])
	if length < 1+1+4 || length > maxPacketLen {
		return nil, fmt.Errorf("scan: server's first packet has length %d, outside 6..%d; is this an SSH server?", length, maxPacketLen)
	}
	if padding+1 >= length {
		return nil, fmt.Errorf("scan: server's first packet has %d bytes of padding in a packet of %d", padding, length)
	}
	body := make([]byte, length-1)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("scan: read the server's first packet: %w", err)
	}
	return body[:len(body)-int(padding)], nil
}

// parseKexInit decodes an SSH_MSG_KEXINIT payload: the message number, a
// 16-byte cookie, ten name-lists, a boolean and a reserved uint32. Bytes
// after the reserved field are ignored, as OpenSSH does.
func parseKexInit(payload []byte) (kexInit, error) {
	var k kexInit
	if len(payload) == 0 {
		return k, errors.New("scan: empty packet where SSH_MSG_KEXINIT was expected")
	}
	if payload[0] != msgKexInit {
		return k, fmt.Errorf("scan: expected SSH_MSG_KEXINIT (%d) as the server's first packet, got message %d", msgKexInit, payload[0])
	}
	rest := payload[1:]
	if len(rest) < cookieLen {
		return k, errors.New("scan: SSH_MSG_KEXINIT is too short for its cookie")
	}
	rest = rest[cookieLen:]
	lists := []*[]string{
		&k.KexAlgos, &k.HostKeyAlgos,
		&k.CiphersClientServer, &k.CiphersServerClient,
		&k.MACsClientServer, &k.MACsServerClient,
		&k.CompressionClientServer, &k.CompressionServerClient,
		&k.LanguagesClientServer, &k.LanguagesServerClient,
	}
	for i, dst := range lists {
		var err error
		if *dst, rest, err = parseNameList(rest); err != nil {
			return kexInit{}, fmt.Errorf("scan: SSH_MSG_KEXINIT name-list %d: %w", i+1, err)
		}
	}
	if len(rest) < 1+4 {
		return kexInit{}, errors.New("scan: SSH_MSG_KEXINIT ends before first_kex_packet_follows and reserved")
	}
	// RFC 4251 §5: any non-zero boolean is TRUE.
	k.FirstKexFollows = rest[0] != 0
	return k, nil
}

// parseNameList decodes one RFC 4251 §5 name-list: a uint32 length and that
// many bytes of comma-separated names. Names must be non-empty printable
// US-ASCII without commas or spaces.
func parseNameList(b []byte) ([]string, []byte, error) {
	if len(b) < 4 {
		return nil, nil, errors.New("truncated length")
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(len(b)) {
		return nil, nil, fmt.Errorf("length %d exceeds the %d bytes left", n, len(b))
	}
	raw, rest := b[:n], b[n:]
	if n == 0 {
		return []string{}, rest, nil
	}
	names := strings.Split(string(raw), ",")
	for _, name := range names {
		if name == "" {
			return nil, nil, errors.New("empty name")
		}
		for i := 0; i < len(name); i++ {
			if c := name[i]; c <= ' ' || c > '~' {
				return nil, nil, fmt.Errorf("name %q has a byte 0x%02x outside printable US-ASCII", name, c)
			}
		}
	}
	return names, rest, nil
}
