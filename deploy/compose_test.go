package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/bastion-ssh/bastion/internal/config"
)

// composeFile is the part of the Compose specification the demo uses.
type composeFile struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
	Networks map[string]struct {
		Internal bool `json:"internal"`
	} `json:"networks"`
	Volumes map[string]any `json:"volumes"`
}

type composeService struct {
	Build *struct {
		Context    string            `json:"context"`
		Dockerfile string            `json:"dockerfile"`
		Args       map[string]string `json:"args"`
	} `json:"build"`
	Image      string                    `json:"image"`
	Hostname   string                    `json:"hostname"`
	Command    []string                  `json:"command"`
	Ports      []string                  `json:"ports"`
	Volumes    []string                  `json:"volumes"`
	Networks   []string                  `json:"networks"`
	DependsOn  map[string]map[string]any `json:"depends_on"`
	Restart    string                    `json:"restart"`
	Entrypoint []string                  `json:"entrypoint"`
}

// TestComposeDemo checks the compose demo without a Docker engine: the file
// parses (strictly, against the keys the demo uses), it has the gateway and
// two targets whose sshd uses the shipped snippet unmodified, every file it
// mounts or builds from exists, and its bastion.yaml is a valid config.
func TestComposeDemo(t *testing.T) {
	data, err := os.ReadFile("compose/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"setup", "bastion", "target1", "target2"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("no service %q", name)
		}
	}

	// Paths are relative to deploy/compose.
	exists := func(rel string) bool {
		_, err := os.Stat(filepath.Join("compose", rel))
		return err == nil
	}
	for name, s := range c.Services {
		if s.Build != nil {
			df := "Dockerfile"
			if s.Build.Dockerfile != "" {
				df = s.Build.Dockerfile
			}
			if !exists(filepath.Join(s.Build.Context, df)) {
				t.Errorf("%s builds from %s/%s, which does not exist", name, s.Build.Context, df)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") && !exists(src) {
				t.Errorf("%s mounts %s, which does not exist", name, src)
			}
			if _, declared := c.Volumes[src]; !strings.HasPrefix(src, ".") && !declared {
				t.Errorf("%s uses volume %s, which is not declared", name, src)
			}
		}
		for dep, cond := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
			if cond["condition"] != "service_completed_successfully" {
				t.Errorf("%s must wait for %s to complete", name, dep)
			}
		}
	}

	for _, name := range []string{"target1", "target2"} {
		s := c.Services[name]
		if !slices.Contains(s.Volumes, "../target/sshd_config.d/bastion.conf:/etc/ssh/sshd_config.d/bastion.conf:ro") {
			t.Errorf("%s does not mount the target snippet unmodified at /etc/ssh/sshd_config.d/bastion.conf: %v", name, s.Volumes)
		}
		if slices.Contains(s.Networks, "front") || len(s.Ports) > 0 {
			t.Errorf("%s must be reachable only through the gateway", name)
		}
	}
	if !c.Networks["targets"].Internal {
		t.Error("the targets network must be internal")
	}
	gw := c.Services["bastion"]
	if gw.Build == nil || gw.Build.Context != "../.." || gw.Build.Dockerfile != "" {
		t.Error("the gateway must be built from the repository's Dockerfile")
	}
	if !slices.Contains(gw.Volumes, "./bastion.yaml:/etc/bastion/bastion.yaml:ro") {
		t.Errorf("gateway volumes %v lack bastion.yaml at the image's default config path", gw.Volumes)
	}

	cfg, err := os.ReadFile("compose/bastion.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse(cfg)
	if err != nil {
		t.Fatalf("compose/bastion.yaml: %v", err)
	}
	if f.Listen != "0.0.0.0:2222" || f.DataDir != "/var/lib/bastion" {
		t.Errorf("compose/bastion.yaml listen %q data_dir %q", f.Listen, f.DataDir)
	}

	// The helper script at least parses.
	if out, err := exec.Command("sh", "-n", "compose/demo.sh").CombinedOutput(); err != nil {
		t.Errorf("compose/demo.sh: %v\n%s", err, out)
	}
}
