package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// unitBinary is where the units expect the bastion binary.
const unitBinary = "/usr/local/bin/bastion"

// unitDirectives parses a unit file into keyword → values (a keyword may
// repeat), ignoring sections and comments.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	var cont strings.Builder
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cont.Len() == 0 && (line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cont.WriteString(strings.TrimSuffix(line, "\\"))
			continue
		}
		cont.WriteString(line)
		k, v, _ := strings.Cut(cont.String(), "=")
		out[k] = append(out[k], v)
		cont.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSystemdUnitsVerify runs `systemd-analyze verify` on every unit.
// verify requires each Exec binary to exist, so the units are checked as
// copies whose /usr/local/bin/bastion points at a binary built with the
// Dockerfile's command; nothing else in them changes. verify reports
// unknown keys and bad values as warnings with exit status 0, so any output
// at all fails the test.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found: install systemd (Debian: apt-get install systemd); CI needs it to check deploy/systemd")
	}
	bin := buildLikeDockerfile(t, "unit-test", "unit")
	units, err := filepath.Glob("systemd/*.service")
	if err != nil {
		t.Fatal(err)
	}
	timers, _ := filepath.Glob("systemd/*.timer")
	units = append(units, timers...)
	if len(units) < 5 {
		t.Fatalf("found units %v; want bastion.service and the KRL and host-cert timer pairs", units)
	}
	dir := t.TempDir()
	var copies []string
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), unitBinary, bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, p)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, copies...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The bastion commands the units run exist, with the flags they use.
	for _, u := range units {
		for _, use := range bastionInvocations(t, u) {
			args := strings.Fields(use)
			sub := []string{}
			for _, a := range args {
				if strings.HasPrefix(a, "-") {
					break
				}
				sub = append(sub, a)
			}
			help, err := exec.Command(bin, append(sub, "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("%s runs `bastion %s`, which does not exist: %v\n%s", u, use, err, help)
				continue
			}
			for _, a := range args {
				if strings.HasPrefix(a, "--") && !strings.Contains(string(help), strings.SplitN(a, "=", 2)[0]+" ") {
					t.Errorf("%s: `bastion %s` has no flag %s", u, strings.Join(sub, " "), a)
				}
			}
		}
	}
}

// TestSystemdShellCommands checks the shell scripts the units run: systemd
// expands $NAME in command lines before the shell sees them, so a shell
// variable must be written $$NAME; and each script must parse.
func TestSystemdShellCommands(t *testing.T) {
	units, _ := filepath.Glob("systemd/*.service")
	shellVar := regexp.MustCompile(`(^|[^$])\$[a-zA-Z_({]`)
	n := 0
	for _, u := range units {
		for k, vals := range unitDirectives(t, u) {
			if !strings.HasPrefix(k, "Exec") {
				continue
			}
			for _, v := range vals {
				_, script, ok := strings.Cut(v, "/bin/sh -ec '")
				if !ok {
					continue
				}
				n++
				script = strings.TrimSuffix(strings.TrimSpace(script), "'")
				if m := shellVar.FindString(script); m != "" {
					t.Errorf("%s %s: %q would be expanded by systemd, not the shell; write $$", u, k, m)
				}
				script = strings.ReplaceAll(script, "$$", "$")
				if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
					t.Errorf("%s %s: shell syntax: %v\n%s\n%s", u, k, err, out, script)
				}
			}
		}
	}
	if n < 3 {
		t.Fatalf("found %d shell commands in the units, want at least 3", n)
	}
}

// bastionInvocations returns the arguments of every bastion command line
// in a unit.
func bastionInvocations(t *testing.T, unit string) []string {
	t.Helper()
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(regexp.QuoteMeta(unitBinary) + ` ([a-z][^'"\\\n]*)`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		out = append(out, strings.TrimSpace(m[1]))
	}
	return out
}

// TestSystemdServiceHardening checks that bastion.service keeps the
// properties issue 6 asks for.
func TestSystemdServiceHardening(t *testing.T) {
	d := unitDirectives(t, "systemd/bastion.service")
	want := map[string]string{
		"User":                   "bastion",
		"DynamicUser":            "no",
		"NoNewPrivileges":        "yes",
		"ProtectSystem":          "strict",
		"ProtectHome":            "yes",
		"PrivateTmp":             "yes",
		"CapabilityBoundingSet":  "CAP_NET_BIND_SERVICE",
		"AmbientCapabilities":    "CAP_NET_BIND_SERVICE",
		"Restart":                "on-failure",
		"ExecStart":              unitBinary + " serve --config /etc/bastion/bastion.yaml",
		"Environment":            "BASTION_DATA_DIR=/var/lib/bastion",
		"StateDirectoryMode":     "0700",
		"ConfigurationDirectory": "bastion",
	}
	for k, v := range want {
		if !slices.Contains(d[k], v) {
			t.Errorf("bastion.service: %s=%v, want %s", k, d[k], v)
		}
	}
	if len(d["StateDirectory"]) == 0 || !slices.Contains(strings.Fields(d["StateDirectory"][0]), "bastion") {
		t.Errorf("StateDirectory=%v, want bastion", d["StateDirectory"])
	}
	// Two descriptors per session: 10,000 sessions need over 20,000.
	if len(d["LimitNOFILE"]) == 0 {
		t.Error("bastion.service sets no LimitNOFILE; the default 1024 soft limit caps the gateway at about 500 sessions")
	} else if n, err := strconv.Atoi(d["LimitNOFILE"][0]); err != nil || n < 20480 {
		t.Errorf("LimitNOFILE=%s, want at least 20480 (two descriptors for each of 10,000 sessions)", d["LimitNOFILE"][0])
	}
	// bastion has no config reload; a unit that claimed one would lie.
	if len(d["ExecReload"]) > 0 {
		t.Errorf("ExecReload=%v, but bastion has no configuration reload", d["ExecReload"])
	}
	if len(d["WantedBy"]) == 0 {
		t.Error("bastion.service has no [Install] WantedBy")
	}
}
