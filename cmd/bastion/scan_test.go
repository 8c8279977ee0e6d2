package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/deploy"
	"github.com/bastion-ssh/bastion/internal/scan"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// runScan executes `bastion scan` in-process. It builds the command itself
// rather than through newRootCommand, so it does not depend on where the
// command is registered; --data-dir is what the root flag would set.
func runScan(t *testing.T, dataDir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{build: buildInfo{Version: "v-test"}, dataDir: dataDir, stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	cmd := newScanCommand(a)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cmd.ExecuteContext(ctx); err != nil {
		errb.WriteString("bastion: " + err.Error() + "\n")
		return out.String(), errb.String(), exitCode(err)
	}
	return out.String(), errb.String(), 0
}

// hardenedTarget starts an sshd with the shipped target snippet and a host
// certificate signed with `bastion ca sign --host` from dataDir's CA.
func hardenedTarget(t *testing.T, dataDir string) *testbed.SSHD {
	t.Helper()
	d := testbed.NewSSHD(t, testbed.SSHDConfig{})
	certPath := filepath.Join(d.Dir, "host-cert.pub")
	mustRun(t, dataDir, "ca", "sign", "--host", "-I", "target", "-n", "127.0.0.1", "--out", certPath, d.HostKeyPath+".pub")
	userCA, _ := mustRun(t, dataDir, "ca", "export", "--user")
	snippet, err := deploy.TargetSSHDConfigWithPaths(map[string]string{
		"TrustedUserCAKeys": d.WriteFile("user_ca.pub", []byte(userCA)),
		"RevokedKeys":       d.WriteFile("revoked.krl", nil),
		"HostCertificate":   certPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.Config.Extra = snippet
	d.Start()
	return d
}

func TestScanCommand(t *testing.T) {
	testbed.RequireOpenSSH(t)
	dataDir := t.TempDir()
	mustRun(t, dataDir, "ca", "init")
	hardened := hardenedTarget(t, dataDir)
	soft := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "PasswordAuthentication yes\n"})

	t.Run("table, all pass", func(t *testing.T) {
		out, errOut, code := runScan(t, dataDir, hardened.Addr)
		if code != 0 {
			t.Fatalf("exit %d, want 0\n%s%s", code, out, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("want a header and one row:\n%s", out)
		}
		for _, h := range []string{"TARGET", "VERSION", "AUTH METHODS", "HOST CERT", "WEAK ALGS", "RESULT"} {
			if !strings.Contains(lines[0], h) {
				t.Errorf("header lacks %s: %q", h, lines[0])
			}
		}
		row := strings.Fields(lines[1])
		want := []string{hardened.Addr, "publickey", "ours", "0", "PASS"}
		for _, w := range want {
			if !strings.Contains(" "+strings.Join(row, " ")+" ", " "+w+" ") {
				t.Errorf("row %q lacks %q", lines[1], w)
			}
		}
	})

	t.Run("table, one fails", func(t *testing.T) {
		out, errOut, code := runScan(t, dataDir, hardened.Addr, soft.Addr)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
		}
		if !strings.Contains(out, "publickey,password") || !strings.Contains(out, "password_auth") || !strings.Contains(errOut, "1 of 2 targets failed") {
			t.Errorf("output does not explain the failure:\n%s\nstderr: %s", out, errOut)
		}
		// Rows stay in the order given.
		if strings.Index(out, hardened.Addr) > strings.Index(out, soft.Addr) {
			t.Errorf("rows out of order:\n%s", out)
		}
	})

	t.Run("json", func(t *testing.T) {
		out, _, code := runScan(t, dataDir, "--json", "--concurrency", "1", "--timeout", "10s", soft.Addr, hardened.Addr)
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		var res []scan.Result
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if len(res) != 2 || res[0].Pass || !res[1].Pass || !res[0].HasFinding(scan.CodePasswordAuth) || !res[1].HostCertFromOurCA {
			t.Errorf("results: %+v", res)
		}
	})

	t.Run("host CA from a file", func(t *testing.T) {
		export, _ := mustRun(t, dataDir, "ca", "export", "--host")
		caFile := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(caFile, []byte(export), 0o644); err != nil {
			t.Fatal(err)
		}
		// An empty data dir: the CA comes from the file only.
		out, errOut, code := runScan(t, t.TempDir(), "--host-ca", caFile, hardened.Addr)
		if code != 0 || !strings.Contains(out, "ours") {
			t.Fatalf("exit %d:\n%s%s", code, out, errOut)
		}
		out, errOut, code = runScan(t, t.TempDir(), hardened.Addr)
		if code != 0 || !strings.Contains(out, " yes ") || !strings.Contains(errOut, "no host CA") {
			t.Fatalf("without a CA, want the certificate reported as unchecked and a note: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("unreachable target", func(t *testing.T) {
		port := testbed.FreePort(t)
		out, _, code := runScan(t, dataDir, "--timeout", "2s", "127.0.0.1:"+strconv.Itoa(port))
		if code != 1 || !strings.Contains(out, "ERROR") || !strings.Contains(out, "probe_failed") {
			t.Fatalf("exit %d, want 1 with ERROR:\n%s", code, out)
		}
	})
}

func TestScanCommandUsageErrors(t *testing.T) {
	badCA := filepath.Join(t.TempDir(), "ca.pub")
	if err := os.WriteFile(badCA, []byte("not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := map[string][]string{
		"no targets":          {},
		"unknown flag":        {"--bogus", "web1"},
		"bad timeout":         {"--timeout", "soon", "web1"},
		"zero concurrency":    {"--concurrency", "0", "web1"},
		"bad target":          {"alice@web1"},
		"bad port":            {"web1:99999"},
		"unreadable host CA":  {"--host-ca", "/nonexistent/ca.pub", "web1"},
		"host CA not a key":   {"--host-ca", badCA, "web1"},
		"print with a target": {"--print-sshd-config", "web1"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := runScan(t, t.TempDir(), args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (usage error)\n%s", code, errOut)
			}
			if strings.TrimSpace(errOut) == "" {
				t.Errorf("no message on stderr")
			}
		})
	}
}

func TestScanPrintSSHDConfig(t *testing.T) {
	out, _, code := runScan(t, t.TempDir(), "--print-sshd-config")
	if code != 0 || out != deploy.TargetSSHDConfig() {
		t.Fatalf("exit %d; output is not the shipped snippet:\n%s", code, out)
	}
	for _, d := range []string{"PasswordAuthentication no", "PermitRootLogin no", "AuthenticationMethods publickey"} {
		if !strings.Contains(out, "\n"+d+"\n") {
			t.Errorf("snippet lacks %q", d)
		}
	}
}

func TestScanCommandHelp(t *testing.T) {
	cmd := newScanCommand(&app{})
	if cmd.Short == "" || cmd.Long == "" || cmd.Example == "" {
		t.Fatal("scan needs Short, Long and Example")
	}
}
