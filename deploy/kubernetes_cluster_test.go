package deploy_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bastion-ssh/bastion/internal/config"
)

// TestKubernetesClusterManifests checks deploy/kubernetes/cluster, decoded
// strictly like the single-gateway manifests: N replicas, each naming
// itself from its pod, one per node, a disruption budget, readiness on
// /healthz, the CA keys, etcd client files and OIDC secret from Secrets
// that exist with the keys the pod asks for, and a bastion.yaml that
// config.Parse accepts with a cluster: block whose files the pod mounts.
func TestKubernetesClusterManifests(t *testing.T) {
	m := loadManifests(t, "kubernetes/cluster")
	if len(m.statefulSets) != 1 || len(m.configMaps) != 1 || len(m.policies) != 1 || len(m.namespaces) != 1 || len(m.budgets) != 1 {
		t.Fatalf("want one each of StatefulSet, ConfigMap, NetworkPolicy, Namespace, PodDisruptionBudget; got %d %d %d %d %d",
			len(m.statefulSets), len(m.configMaps), len(m.policies), len(m.namespaces), len(m.budgets))
	}
	sts, cm, ns, pdb := m.statefulSets[0], m.configMaps[0], m.namespaces[0], m.budgets[0]
	pod := sts.Spec.Template.Spec
	podLabels := sts.Spec.Template.Labels
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	secrets := map[string]*corev1.Secret{}
	for _, s := range m.secrets {
		secrets[s.Name] = s
	}

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
		if got := slices.Sorted(slices.Values(m.kustomize.Resources)); !slices.Equal(got, want) {
			t.Errorf("kustomization resources %v, want %v", got, want)
		}
	})

	t.Run("namespace", func(t *testing.T) {
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("namespace labels %v", ns.Labels)
		}
		objs := []metav1.Object{sts, cm, pdb, m.policies[0]}
		for _, s := range m.secrets {
			objs = append(objs, s)
		}
		for _, s := range m.services {
			objs = append(objs, s)
		}
		for _, o := range objs {
			if o.GetNamespace() != ns.Name {
				t.Errorf("%s is in namespace %q, want %q", o.GetName(), o.GetNamespace(), ns.Name)
			}
		}
	})

	t.Run("statefulset", func(t *testing.T) {
		if sts.Spec.Replicas == nil || *sts.Spec.Replicas < 2 {
			t.Errorf("replicas %v, want 2 or more", sts.Spec.Replicas)
		}
		if len(sts.Spec.VolumeClaimTemplates) != 1 || !slices.Equal(sts.Spec.VolumeClaimTemplates[0].Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
			t.Error("want one ReadWriteOnce volume claim per replica: each has its own bbolt audit log")
		}
		if !hasService(m.services, sts.Spec.ServiceName, corev1.ClusterIPNone) {
			t.Errorf("serviceName %q is not a headless Service in the manifests", sts.Spec.ServiceName)
		}
		for _, p := range restrictedProblems(pod) {
			t.Error(p)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Error("automountServiceAccountToken must be false")
		}
		aa := pod.Affinity
		if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
			t.Fatal("no required pod anti-affinity: two gateways could share a node")
		}
		term := aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
		if term.TopologyKey != "kubernetes.io/hostname" || term.LabelSelector == nil || !selects(term.LabelSelector.MatchLabels) {
			t.Errorf("anti-affinity %+v does not keep the gateways on different nodes", term)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("want one container, got %d", len(pod.Containers))
		}
		c := pod.Containers[0]
		if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/bastion/bastion.yaml"}) {
			t.Errorf("args %v", c.Args)
		}
		for name, pp := range map[string]struct {
			probe *corev1.Probe
			path  string
		}{"liveness": {c.LivenessProbe, "/livez"}, "startup": {c.StartupProbe, "/livez"}, "readiness": {c.ReadinessProbe, "/healthz"}} {
			if pp.probe == nil || pp.probe.HTTPGet == nil || pp.probe.HTTPGet.Path != pp.path || containerPort(c, pp.probe.HTTPGet.Port) != 9222 {
				t.Errorf("%s probe %+v, want httpGet %s on 9222", name, pp.probe, pp.path)
			}
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if e := env["POD_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("POD_NAME %+v, want the downward API's metadata.name", e)
		}
		if env[config.EnvGatewayID].Value != "$(POD_NAME)" {
			t.Errorf("%s = %q, want $(POD_NAME): the gateway id is the pod name", config.EnvGatewayID, env[config.EnvGatewayID].Value)
		}
		if adv := env[config.EnvAdvertise].Value; !strings.HasPrefix(adv, "$(POD_NAME)."+sts.Spec.ServiceName+".") || !strings.HasSuffix(adv, ":2222") {
			t.Errorf("%s = %q, want the pod's stable name under %s, port 2222", config.EnvAdvertise, adv, sts.Spec.ServiceName)
		}
		// Every Secret a volume uses exists with the keys it asks for.
		for _, v := range pod.Volumes {
			if v.Secret == nil {
				continue
			}
			s, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Errorf("volume %s uses Secret %q, which the manifests lack", v.Name, v.Secret.SecretName)
				continue
			}
			for _, it := range v.Secret.Items {
				if _, ok := s.StringData[it.Key]; !ok {
					t.Errorf("volume %s wants Secret key %q, which %s lacks", v.Name, it.Key, s.Name)
				}
			}
		}
		for _, s := range m.secrets {
			for k, v := range s.StringData {
				if !strings.Contains(v, "REPLACE-ME") {
					t.Errorf("Secret %s key %s is not a placeholder: real secrets must not be committed", s.Name, k)
				}
			}
		}
	})

	t.Run("configmap holds a valid cluster bastion.yaml", func(t *testing.T) {
		// The pod's environment names the replica.
		t.Setenv(config.EnvGatewayID, "bastion-0")
		t.Setenv(config.EnvAdvertise, "bastion-0.bastion-internal.bastion.svc:2222")
		f, err := config.Parse([]byte(cm.Data["bastion.yaml"]))
		if err != nil {
			t.Fatalf("bastion.yaml in the ConfigMap: %v", err)
		}
		c := pod.Containers[0]
		if f.Listen != "0.0.0.0:2222" || f.MetricsListen != "0.0.0.0:9222" || f.DataDir != "/var/lib/bastion" {
			t.Errorf("listen %q metrics %q data_dir %q", f.Listen, f.MetricsListen, f.DataDir)
		}
		cc := f.ClusterConfig()
		if cc == nil {
			t.Fatal("no cluster: block")
		}
		if cc.GatewayID != "bastion-0" || cc.Advertise != "bastion-0.bastion-internal.bastion.svc:2222" {
			t.Errorf("gateway id %q advertise %q: bastion.yaml must leave both to the pod", cc.GatewayID, cc.Advertise)
		}
		for _, ep := range cc.Endpoints {
			if !strings.HasPrefix(ep, "https://") {
				t.Errorf("etcd endpoint %q is not https", ep)
			}
		}
		for _, p := range []string{cc.CAFile, cc.CertFile, cc.KeyFile, f.OIDC.ClientSecretFile} {
			if !mountedFile(c, p) {
				t.Errorf("%s is not a file the pod mounts", p)
			}
		}
		// ca.dir is the memory volume install-ca fills from the CA Secret.
		var caVol string
		for _, vm := range c.VolumeMounts {
			if vm.MountPath == f.CA.Dir {
				caVol = vm.Name
				if !vm.ReadOnly {
					t.Error("the gateway's CA key mount must be read-only")
				}
			}
		}
		if caVol == "" {
			t.Fatalf("ca.dir %q is not a mount of the container", f.CA.Dir)
		}
		for _, v := range pod.Volumes {
			if v.Name == caVol && (v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory) {
				t.Errorf("the CA key volume %s is not a memory emptyDir: keys would land on the node's disk", caVol)
			}
		}
		var filled bool
		for _, ic := range pod.InitContainers {
			for _, vm := range ic.VolumeMounts {
				if vm.Name == caVol && vm.MountPath == f.CA.Dir && strings.Contains(strings.Join(ic.Command, " "), "install -m 0600") {
					filled = true
				}
			}
		}
		if !filled {
			t.Error("no init container copies the CA keys into ca.dir with mode 0600")
		}
		if f.Cluster.Consistency != "best_effort" {
			t.Errorf("consistency %q; the shipped default is best_effort (README, Consistency)", f.Cluster.Consistency)
		}
	})

	t.Run("services", func(t *testing.T) {
		var lb *corev1.Service
		for _, s := range m.services {
			if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				lb = s
			}
		}
		if lb == nil {
			t.Fatal("no LoadBalancer Service for SSH")
		}
		c := pod.Containers[0]
		if len(lb.Spec.Ports) != 1 || lb.Spec.Ports[0].Port != 22 || containerPort(c, lb.Spec.Ports[0].TargetPort) != 2222 {
			t.Errorf("LoadBalancer ports %+v, want only 22 → 2222", lb.Spec.Ports)
		}
		if !selects(lb.Spec.Selector) {
			t.Error("the LoadBalancer does not select the gateways")
		}
	})

	t.Run("disruption budget", func(t *testing.T) {
		if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels) {
			t.Error("the PodDisruptionBudget does not select the gateways")
		}
		one := intstr.FromInt32(1)
		if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != one {
			t.Errorf("maxUnavailable %v, want 1: drains take one gateway at a time", pdb.Spec.MaxUnavailable)
		}
	})

	t.Run("networkpolicy lets the gateways reach etcd and each other", func(t *testing.T) {
		np := m.policies[0]
		if !selects(np.Spec.PodSelector.MatchLabels) {
			t.Error("the NetworkPolicy does not select the gateways")
		}
		var etcd, peers bool
		for _, e := range np.Spec.Egress {
			for _, p := range e.Ports {
				if p.Port == nil {
					continue
				}
				switch p.Port.IntValue() {
				case 2379:
					etcd = true
				case 2222:
					for _, to := range e.To {
						if to.PodSelector != nil && selects(to.PodSelector.MatchLabels) {
							peers = true
						}
					}
				}
			}
		}
		if !etcd || !peers {
			t.Errorf("egress to etcd (2379): %v, to the other gateways (2222): %v", etcd, peers)
		}
	})
}
