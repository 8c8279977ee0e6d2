package deploy_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/bastion-ssh/bastion/internal/config"
)

// manifests holds every object of deploy/kubernetes, decoded strictly.
type manifests struct {
	namespaces   []*corev1.Namespace
	configMaps   []*corev1.ConfigMap
	secrets      []*corev1.Secret
	services     []*corev1.Service
	statefulSets []*appsv1.StatefulSet
	policies     []*networkingv1.NetworkPolicy
	budgets      []*policyv1.PodDisruptionBudget
	kustomize    *kustomization
	files        []string
}

// kustomization is the part of kustomize's Kustomization we use; decoded
// strictly too, so an unsupported key fails.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeStrict decodes one YAML document into the k8s.io/api type for its
// kind the way the API server's strict field validation does: field names
// are case-sensitive, and unknown or duplicate fields are errors. So a typo
// such as "readinesProbe" or "runAsNonroot" fails the test instead of being
// silently dropped (encoding/json alone would accept the second).
func decodeStrict(doc []byte, into any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, into)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// loadManifests decodes every *.yaml in dir (deploy/kubernetes or its
// cluster/ variant) strictly.
func loadManifests(t *testing.T, dir string) *manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/%s: %v", dir, err)
	}
	m := &manifests{}
	for _, f := range files {
		m.files = append(m.files, filepath.Base(f))
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Namespace":
				o := &corev1.Namespace{}
				m.namespaces, obj = append(m.namespaces, o), o
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				m.configMaps, obj = append(m.configMaps, o), o
			case "v1 Secret":
				o := &corev1.Secret{}
				m.secrets, obj = append(m.secrets, o), o
			case "v1 Service":
				o := &corev1.Service{}
				m.services, obj = append(m.services, o), o
			case "apps/v1 StatefulSet":
				o := &appsv1.StatefulSet{}
				m.statefulSets, obj = append(m.statefulSets, o), o
			case "networking.k8s.io/v1 NetworkPolicy":
				o := &networkingv1.NetworkPolicy{}
				m.policies, obj = append(m.policies, o), o
			case "policy/v1 PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				m.budgets, obj = append(m.budgets, o), o
			case "kustomize.config.k8s.io/v1beta1 Kustomization":
				m.kustomize = &kustomization{}
				obj = m.kustomize
			default:
				t.Fatalf("%s document %d: unexpected apiVersion/kind %q %q; add it to this test", f, i+1, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i+1, tm.Kind, err)
			}
		}
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestKubernetesStrictDecodingCatchesTypos proves the decoder is strict:
// one misspelt field must fail.
func TestKubernetesStrictDecodingCatchesTypos(t *testing.T) {
	data, err := os.ReadFile("kubernetes/statefulset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, typo := range [][2]string{{"readinessProbe:", "readinesProbe:"}, {"runAsNonRoot:", "runAsNonroot:"}, {"  replicas: 1", "  replicas: 1\n  replicas: 2"}} {
		bad := strings.Replace(string(data), typo[0], typo[1], 1)
		if bad == string(data) {
			t.Fatalf("statefulset.yaml has no %q to misspell", typo[0])
		}
		if err := decodeStrict([]byte(bad), &appsv1.StatefulSet{}); err == nil {
			t.Errorf("replacing %q with %q still decodes; the check is not strict", typo[0], typo[1])
		}
	}
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t, "kubernetes")
	if len(m.statefulSets) != 1 || len(m.configMaps) != 1 || len(m.secrets) != 1 || len(m.policies) != 1 || len(m.namespaces) != 1 {
		t.Fatalf("want one each of StatefulSet, ConfigMap, Secret, NetworkPolicy, Namespace; got %d %d %d %d %d",
			len(m.statefulSets), len(m.configMaps), len(m.secrets), len(m.policies), len(m.namespaces))
	}
	sts, cm, secret, ns := m.statefulSets[0], m.configMaps[0], m.secrets[0], m.namespaces[0]

	t.Run("kustomization lists every manifest", func(t *testing.T) {
		if m.kustomize == nil {
			t.Fatal("no kustomization.yaml")
		}
		var want []string
		for _, f := range m.files {
			if f != "kustomization.yaml" {
				want = append(want, f)
			}
		}
		got := slices.Sorted(slices.Values(m.kustomize.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("kustomization resources %v, want %v", got, want)
		}
	})

	t.Run("namespace enforces restricted", func(t *testing.T) {
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("namespace labels %v", ns.Labels)
		}
		for _, o := range []metav1.Object{sts, cm, secret, m.policies[0]} {
			if o.GetNamespace() != ns.Name {
				t.Errorf("%s is in namespace %q, want %q", o.GetName(), o.GetNamespace(), ns.Name)
			}
		}
	})

	t.Run("statefulset", func(t *testing.T) {
		if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 {
			t.Errorf("replicas %v, want 1: bbolt allows one writer", sts.Spec.Replicas)
		}
		if len(sts.Spec.VolumeClaimTemplates) != 1 {
			t.Fatalf("want one volumeClaimTemplate, got %d", len(sts.Spec.VolumeClaimTemplates))
		}
		pvc := sts.Spec.VolumeClaimTemplates[0]
		if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
			t.Errorf("access modes %v, want ReadWriteOnce only", pvc.Spec.AccessModes)
		}
		if !hasService(m.services, sts.Spec.ServiceName, corev1.ClusterIPNone) {
			t.Errorf("serviceName %q is not a headless Service in the manifests", sts.Spec.ServiceName)
		}
		pod := sts.Spec.Template.Spec
		for _, p := range restrictedProblems(pod) {
			t.Error(p)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Error("automountServiceAccountToken must be false: bastion needs no Kubernetes API access")
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("want one container, got %d", len(pod.Containers))
		}
		c := pod.Containers[0]
		if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/bastion/bastion.yaml"}) {
			t.Errorf("args %v", c.Args)
		}
		// Readiness follows /healthz, which fails while the audit log
		// cannot be written; liveness must not, or a full disk would
		// restart the gateway and cut every live session.
		for name, pp := range map[string]struct {
			probe *corev1.Probe
			path  string
		}{"liveness": {c.LivenessProbe, "/livez"}, "startup": {c.StartupProbe, "/livez"}, "readiness": {c.ReadinessProbe, "/healthz"}} {
			if pp.probe == nil || pp.probe.HTTPGet == nil || pp.probe.HTTPGet.Path != pp.path || containerPort(c, pp.probe.HTTPGet.Port) != 9222 {
				t.Errorf("%s probe %+v, want httpGet %s on 9222", name, pp.probe, pp.path)
			}
		}
		if containerPort(c, intstr.FromString("ssh")) != 2222 {
			t.Error("no ssh port 2222")
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, vm := range c.VolumeMounts {
			mounts[vm.MountPath] = vm
		}
		if mounts["/var/lib/bastion"].Name != pvc.Name {
			t.Errorf("/var/lib/bastion is not the %q volume claim", pvc.Name)
		}
		if vm := mounts["/etc/bastion/bastion.yaml"]; !vm.ReadOnly || vm.SubPath != "bastion.yaml" {
			t.Errorf("config mount %+v", vm)
		}
		// Every ConfigMap and Secret key the pod uses exists.
		for _, v := range pod.Volumes {
			switch {
			case v.ConfigMap != nil:
				if v.ConfigMap.Name != cm.Name {
					t.Errorf("volume %s uses ConfigMap %q, not %q", v.Name, v.ConfigMap.Name, cm.Name)
				}
			case v.Secret != nil:
				if v.Secret.SecretName != secret.Name {
					t.Errorf("volume %s uses Secret %q, not %q", v.Name, v.Secret.SecretName, secret.Name)
				}
				for _, it := range v.Secret.Items {
					if _, ok := secret.StringData[it.Key]; !ok {
						t.Errorf("volume %s wants Secret key %q, which the Secret lacks", v.Name, it.Key)
					}
				}
			}
		}
	})

	t.Run("service", func(t *testing.T) {
		var lb *corev1.Service
		for _, s := range m.services {
			if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				lb = s
			}
		}
		if lb == nil {
			t.Fatal("no LoadBalancer Service for SSH")
		}
		c := sts.Spec.Template.Spec.Containers[0]
		if len(lb.Spec.Ports) != 1 || lb.Spec.Ports[0].Port != 22 || containerPort(c, lb.Spec.Ports[0].TargetPort) != 2222 {
			t.Errorf("LoadBalancer ports %+v, want only 22 → 2222", lb.Spec.Ports)
		}
		for k, v := range lb.Spec.Selector {
			if sts.Spec.Template.Labels[k] != v {
				t.Errorf("Service selector %s=%s does not select the pod", k, v)
			}
		}
	})

	t.Run("configmap holds a valid bastion.yaml", func(t *testing.T) {
		f, err := config.Parse([]byte(cm.Data["bastion.yaml"]))
		if err != nil {
			t.Fatalf("bastion.yaml in the ConfigMap: %v", err)
		}
		if !f.RequireHardenedTargets {
			t.Error("require_hardened_targets is off")
		}
		if f.OIDC == nil || !mountedFile(sts.Spec.Template.Spec.Containers[0], f.OIDC.ClientSecretFile) {
			t.Errorf("oidc.client_secret_file is not a file the pod mounts")
		}
		if f.Listen != "0.0.0.0:2222" || f.MetricsListen != "0.0.0.0:9222" || f.DataDir != "/var/lib/bastion" {
			t.Errorf("listen %q metrics %q data_dir %q; the probes, Service and volume expect 0.0.0.0:2222, 0.0.0.0:9222, /var/lib/bastion", f.Listen, f.MetricsListen, f.DataDir)
		}
	})

	t.Run("secret holds placeholders only", func(t *testing.T) {
		for _, k := range []string{"user_ca", "user_ca.pub", "host_ca", "host_ca.pub", "oidc-client-secret"} {
			v, ok := secret.StringData[k]
			if !ok {
				t.Errorf("Secret lacks %s", k)
			} else if !strings.Contains(v, "REPLACE-ME") {
				t.Errorf("Secret %s is not a placeholder: real secrets must not be committed", k)
			}
		}
	})

	t.Run("networkpolicy", func(t *testing.T) {
		np := m.policies[0]
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			t.Errorf("policyTypes %v, want Ingress and Egress", np.Spec.PolicyTypes)
		}
		for k, v := range np.Spec.PodSelector.MatchLabels {
			if sts.Spec.Template.Labels[k] != v {
				t.Errorf("NetworkPolicy selector %s=%s does not select the pod", k, v)
			}
		}
	})
}

func hasService(svcs []*corev1.Service, name, clusterIP string) bool {
	for _, s := range svcs {
		if s.Name == name && s.Spec.ClusterIP == clusterIP {
			return true
		}
	}
	return false
}

// containerPort resolves a numeric or named port of c.
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// restrictedProblems checks pod against the PodSecurity "restricted"
// profile (what admission would refuse) plus a read-only root filesystem.
func restrictedProblems(pod corev1.PodSpec) []string {
	var p []string
	psc := pod.SecurityContext
	if psc == nil {
		return []string{"pod has no securityContext"}
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		p = append(p, "pod uses host namespaces")
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		p = append(p, "pod seccompProfile must be RuntimeDefault")
	}
	podNonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		p = append(p, "pod runAsUser 0")
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			p = append(p, "volume "+v.Name+" is a hostPath")
		}
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			p = append(p, c.Name+": no securityContext")
			continue
		}
		if !podNonRoot && (sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot) {
			p = append(p, c.Name+": runAsNonRoot not set")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			p = append(p, c.Name+": allowPrivilegeEscalation must be false")
		}
		if sc.Privileged != nil && *sc.Privileged {
			p = append(p, c.Name+": privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			p = append(p, c.Name+": capabilities must drop ALL")
		} else {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					p = append(p, c.Name+": adds capability "+string(add))
				}
			}
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			p = append(p, c.Name+": readOnlyRootFilesystem must be true")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			p = append(p, c.Name+": runAsUser 0")
		}
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				p = append(p, c.Name+": hostPort")
			}
		}
	}
	return p
}

// mountedFile reports whether path lies under one of c's volume mounts.
func mountedFile(c corev1.Container, path string) bool {
	for _, vm := range c.VolumeMounts {
		if path == vm.MountPath || strings.HasPrefix(path, strings.TrimSuffix(vm.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}
