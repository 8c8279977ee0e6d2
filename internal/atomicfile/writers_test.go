package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestNoDirectFileWrites keeps every file bastion writes going through
// this package: a direct os.WriteFile, os.Create or os.OpenFile(O_CREATE)
// in product code is a file a crash can leave empty or cut short.
func TestNoDirectFileWrites(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Streams, not files with a content to keep whole (logs), and code
	// that only runs in tests or benchmarks.
	allowed := map[string]bool{
		"cmd/bastion/dev.go": true, // os.Create of sshd.log, a log stream
	}
	skipDirs := []string{"internal/atomicfile", "internal/testbed", "internal/catest", "bench"}
	direct := regexp.MustCompile(`os\.(WriteFile|Create)\(|os\.OpenFile\([^)]*O_CREATE`)
	var found []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			for _, s := range skipDirs {
				if rel == s {
					return filepath.SkipDir
				}
			}
			if strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") || allowed[rel] {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if direct.MatchString(line) {
				found = append(found, rel+":"+itoa(i+1)+": "+strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		t.Errorf("direct file write (use internal/atomicfile): %s", f)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
