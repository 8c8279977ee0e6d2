package deploy_test

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// moduleRoot is the repository root, where the Dockerfile's build runs.
const moduleRoot = ".."

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	cmd  string // upper-cased keyword: FROM, RUN, COPY, ...
	args string
	line int
}

// parseDockerfile reads a Dockerfile into instructions: comments and blank
// lines dropped, backslash continuations joined.
func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		kw, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{cmd: strings.ToUpper(kw), args: strings.TrimSpace(args), line: start})
		cur.Reset()
	}
	return out
}

// goBuildInstruction returns the Dockerfile's RUN ... go build ... line.
func goBuildInstruction(t *testing.T, ins []instruction) instruction {
	t.Helper()
	var found []instruction
	for _, in := range ins {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			found = append(found, in)
		}
	}
	if len(found) != 1 {
		t.Fatalf("Dockerfile has %d RUN ... go build instructions, want exactly 1", len(found))
	}
	return found[0]
}

// buildLikeDockerfile runs the Dockerfile's go build command, exactly as
// written, through sh (as Docker's RUN does) in the module root, with the
// build arguments VERSION and COMMIT in the environment. Only the output
// path changes, from /out/bastion to a temporary directory.
func buildLikeDockerfile(t *testing.T, version, commit string) string {
	t.Helper()
	in := goBuildInstruction(t, parseDockerfile(t, filepath.Join(moduleRoot, "Dockerfile")))
	const out = "-o /out/bastion "
	if strings.Count(in.args, out) != 1 {
		t.Fatalf("Dockerfile line %d: the build must write %q once: %s", in.line, out, in.args)
	}
	bin := filepath.Join(t.TempDir(), "bastion")
	script := strings.Replace(in.args, out, "-o "+bin+" ", 1)
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = moduleRoot
	// TARGETOS and TARGETARCH are empty without buildx: go then builds
	// for the host, as it does in a plain `docker build`.
	cmd.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit, "TARGETOS=", "TARGETARCH=")
	if outb, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("Dockerfile build command failed: %v\n%s\ncommand: %s", err, outb, script)
	}
	return bin
}

// TestDockerfileBuild builds the binary with the Dockerfile's own command
// and checks what that command promises: the stamped version, a static
// binary, no build paths.
func TestDockerfileBuild(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	bin := buildLikeDockerfile(t, "1.2.3-test", "0123abcd")

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || string(out) != "bastion 1.2.3-test (commit 0123abcd)\n" {
		t.Fatalf("`bastion version` = %q, %v; want the stamped version and commit", out, err)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a dynamic loader (PT_INTERP): CGO_ENABLED=0 did not take; distroless/static has no libc")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary links %v; it must be static", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("binary has a symbol table: -ldflags -s did not take")
	}

	abs, err := filepath.Abs(moduleRoot)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(abs+"/")) {
		t.Errorf("binary contains the build directory %s: -trimpath did not take", abs)
	}
}

// TestDockerfileNamesWhatItMust checks the Dockerfile's structure, since no
// Docker engine runs here to build it.
func TestDockerfileNamesWhatItMust(t *testing.T) {
	ins := parseDockerfile(t, filepath.Join(moduleRoot, "Dockerfile"))
	index := func(cmd, argsRE string) int {
		re := regexp.MustCompile(argsRE)
		for i, in := range ins {
			if in.cmd == cmd && re.MatchString(in.args) {
				return i
			}
		}
		return -1
	}
	must := func(cmd, argsRE, why string) int {
		i := index(cmd, argsRE)
		if i < 0 {
			t.Errorf("Dockerfile has no %s matching %q: %s", cmd, argsRE, why)
		}
		return i
	}

	// Builder: the Go version of go.mod.
	gomod, err := os.ReadFile(filepath.Join(moduleRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go directive")
	}
	must("ARG", `^GO_VERSION=`+regexp.QuoteMeta(string(goVersion[1]))+`$`, "the builder must use go.mod's Go version")
	build := must("FROM", `golang:\$\{GO_VERSION\}\S* AS build$`, "a named build stage on the official Go image")

	// Modules in their own layer, before the sources.
	copyMod := must("COPY", `^go\.mod go\.sum \./$`, "go.mod and go.sum copied alone")
	download := must("RUN", `^go mod download`, "modules downloaded in their own layer")
	copyAll := must("COPY", `^\. \.$`, "the sources copied after the download")
	if !(build < copyMod && copyMod < download && download < copyAll) {
		t.Errorf("order: FROM build (%d), COPY go.mod go.sum (%d), RUN go mod download (%d), COPY . . (%d); the download layer must come before the sources", build, copyMod, download, copyAll)
	}

	// The build command's flags.
	run := goBuildInstruction(t, ins)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"`, "./cmd/bastion"} {
		if !strings.Contains(run.args, want) {
			t.Errorf("build command lacks %s: %s", want, run.args)
		}
	}
	buildIdx := slices.IndexFunc(ins, func(in instruction) bool { return in.line == run.line })
	for _, arg := range []string{"VERSION", "COMMIT"} {
		if i := index("ARG", `^`+arg+`(=|$)`); i < 0 || i > buildIdx || i < copyAll {
			t.Errorf("ARG %s must be declared in the build stage, after the sources and before the build (so the module layer stays cached)", arg)
		}
	}

	// Runtime: distroless static, non-root, volume, ports, entrypoint.
	runtime := must("FROM", `^gcr\.io/distroless/static-debian12:nonroot$`, "a minimal non-root runtime image")
	if runtime < buildIdx {
		t.Error("the runtime stage must come after the build stage")
	}
	must("COPY", `^--from=build /out/bastion /bastion$`, "the binary copied into the runtime image")
	must("COPY", `^--from=build --chown=65532:65532 \S+ /var/lib/bastion$`, "the data directory owned by the nonroot user, so a new volume is writable")
	must("USER", `^(nonroot|65532)(:(nonroot|65532))?$`, "run as non-root")
	must("VOLUME", `"/var/lib/bastion"`, "the data directory as a volume")
	if i := must("EXPOSE", `.`, "the SSH and metrics ports"); i >= 0 {
		ports := strings.Fields(ins[i].args)
		if !slices.Contains(ports, "2222") || !slices.Contains(ports, "9222") {
			t.Errorf("EXPOSE %v, want 2222 and 9222", ports)
		}
	}
	must("ENTRYPOINT", `^\["/bastion"\]$`, "the binary as entrypoint")
	must("CMD", `^\["serve", "--config", "/etc/bastion/bastion.yaml"\]$`, "serve with the conventional config path")
	if index("HEALTHCHECK", `.`) >= 0 {
		t.Error("HEALTHCHECK in a distroless image: there is no shell or client to run it")
	}
	dockerfile, _ := os.ReadFile(filepath.Join(moduleRoot, "Dockerfile"))
	if !strings.Contains(string(dockerfile), "/healthz") {
		t.Error("the Dockerfile must document the health probe (GET /healthz on the metrics port)")
	}
}

// TestDockerignoreKeepsBuildInputs: the build context must keep what the
// build reads, including deploy/target, which package deploy embeds.
func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(moduleRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	for _, p := range []string{".git", "data", "audit.db"} {
		if !ignored(patterns, p) {
			t.Errorf(".dockerignore does not exclude %s", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/bastion/main.go", "deploy/deploy.go", "deploy/target/sshd_config.d/bastion.conf", "internal/scan/scan.go", "deploy/compose/demo.sh"} {
		if ignored(patterns, p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
}

// ignored applies .dockerignore patterns to path the way Docker does for
// these simple patterns: a match on the path or any parent excludes it;
// "**/" matches any number of directories.
func ignored(patterns []string, path string) bool {
	excluded := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		for dir := path; dir != "." && dir != ""; dir = filepath.Dir(dir) {
			ok, _ := filepath.Match(p, dir)
			if rest, found := strings.CutPrefix(p, "**/"); found && !ok {
				ok, _ = filepath.Match(rest, filepath.Base(dir))
			}
			if ok {
				excluded = !neg
				break
			}
		}
	}
	return excluded
}
