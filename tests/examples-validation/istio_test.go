package examplesvalidation

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1 "istio.io/api/security/v1"
	"sigs.k8s.io/yaml"
)

const (
	istioOperatorExample = "examples/istio/istio-operator.yaml"
	istiodValuesExample  = "examples/istio/istiod-values.yaml"
	authzPolicyExample   = "examples/istio/authorization-policy.yaml"
	providerName         = "portcullis"
)

// meshConfigOf parses a meshConfig block with istio.io/api's MeshConfig, strictly.
func meshConfigOf(t *testing.T, what string, block any) *meshv1alpha1.MeshConfig {
	t.Helper()
	if block == nil {
		t.Fatalf("%s: no meshConfig", what)
	}
	var mc meshv1alpha1.MeshConfig
	unmarshalStrict(t, what+": meshConfig", subDocument(t, what, block), &mc)
	if problems := validateTree(&mc, "meshConfig"); len(problems) > 0 {
		t.Fatalf("%s: %s", what, strings.Join(problems, "\n"))
	}
	return &mc
}

// portcullisProvider checks the extension provider both Istio examples register.
func portcullisProvider(t *testing.T, what string, mc *meshv1alpha1.MeshConfig) *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider {
	t.Helper()
	var found *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider
	for _, p := range mc.GetExtensionProviders() {
		if p.GetName() == providerName {
			found = p.GetEnvoyExtAuthzGrpc()
		}
	}
	if found == nil {
		t.Fatalf("%s: no envoyExtAuthzGrpc extension provider named %q", what, providerName)
	}
	if found.GetPort() != 50051 {
		t.Errorf("%s: port %d, want the chart's gRPC port 50051", what, found.GetPort())
	}
	if !strings.HasSuffix(found.GetService(), ".svc.cluster.local") {
		t.Errorf("%s: service %q should be the Service's cluster-local name", what, found.GetService())
	}
	if !sameDuration(t, found.GetTimeout(), recommendedTimeout) {
		t.Errorf("%s: timeout %s, want the recommended %s", what, durationString(found.GetTimeout()), recommendedTimeout)
	}
	if found.GetFailOpen() {
		t.Errorf("%s: failOpen must be false (fail closed)", what)
	}
	if found.GetStatusOnError() != "503" {
		t.Errorf("%s: statusOnError %q, want \"503\"", what, found.GetStatusOnError())
	}
	// maxRequestBytes: 0 becomes Envoy's with_request_body.max_request_bytes: 0, which
	// Envoy rejects; Portcullis decides on headers and needs no body.
	if found.GetIncludeRequestBodyInCheck() != nil {
		t.Errorf("%s: includeRequestBodyInCheck must not be set", what)
	}
	return found
}

func loadYAML(t *testing.T, rel string) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(yamlToJSON(t, rel, readFile(t, rel)), &doc); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return doc
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// The IstioOperator overlay sets only spec.meshConfig, and that parses as a MeshConfig.
func TestIstioOperatorExample(t *testing.T) {
	doc := loadYAML(t, istioOperatorExample)
	if doc["apiVersion"] != "install.istio.io/v1alpha1" || doc["kind"] != "IstioOperator" {
		t.Fatalf("%s: apiVersion/kind %v/%v, want install.istio.io/v1alpha1 IstioOperator", istioOperatorExample, doc["apiVersion"], doc["kind"])
	}
	if keys := sortedKeys(doc); strings.Join(keys, ",") != "apiVersion,kind,spec" {
		t.Errorf("%s: top-level keys %v", istioOperatorExample, keys)
	}
	spec, _ := doc["spec"].(map[string]any)
	if keys := sortedKeys(spec); strings.Join(keys, ",") != "meshConfig" {
		t.Errorf("%s: spec has %v; an overlay for Portcullis sets only spec.meshConfig", istioOperatorExample, keys)
	}
	mc := meshConfigOf(t, istioOperatorExample, spec["meshConfig"])
	if len(mc.GetExtensionProviders()) != 1 {
		t.Errorf("%s: only the portcullis provider belongs in the overlay", istioOperatorExample)
	}
	portcullisProvider(t, istioOperatorExample, mc)
}

// The istiod Helm values set only meshConfig, the same provider as the IstioOperator.
func TestIstiodHelmValuesExample(t *testing.T) {
	doc := loadYAML(t, istiodValuesExample)
	if keys := sortedKeys(doc); strings.Join(keys, ",") != "meshConfig" {
		t.Errorf("%s: top-level keys %v, want only meshConfig", istiodValuesExample, keys)
	}
	fromValues := portcullisProvider(t, istiodValuesExample, meshConfigOf(t, istiodValuesExample, doc["meshConfig"]))
	op := loadYAML(t, istioOperatorExample)["spec"].(map[string]any)
	fromOperator := portcullisProvider(t, istioOperatorExample, meshConfigOf(t, istioOperatorExample, op["meshConfig"]))
	if !proto.Equal(fromValues, fromOperator) {
		t.Errorf("the provider differs between %s and %s", istiodValuesExample, istioOperatorExample)
	}
}

// The AuthorizationPolicy parses as security/v1 and hands requests to the provider.
func TestAuthorizationPolicyExample(t *testing.T) {
	doc := loadYAML(t, authzPolicyExample)
	if doc["apiVersion"] != "security.istio.io/v1" || doc["kind"] != "AuthorizationPolicy" {
		t.Fatalf("%s: apiVersion/kind %v/%v", authzPolicyExample, doc["apiVersion"], doc["kind"])
	}
	meta, _ := doc["metadata"].(map[string]any)
	if meta["name"] == nil || meta["namespace"] == nil {
		t.Errorf("%s: metadata needs name and namespace", authzPolicyExample)
	}
	var policy securityv1.AuthorizationPolicy
	unmarshalStrict(t, authzPolicyExample, subDocument(t, authzPolicyExample, doc["spec"]), &policy)
	if problems := validateTree(&policy, "spec"); len(problems) > 0 {
		t.Fatalf("%s: %s", authzPolicyExample, strings.Join(problems, "\n"))
	}
	if policy.GetAction().String() != "CUSTOM" {
		t.Errorf("%s: action %v, want CUSTOM", authzPolicyExample, policy.GetAction())
	}
	if policy.GetProvider().GetName() != providerName {
		t.Errorf("%s: provider %q, want the extension provider %q", authzPolicyExample, policy.GetProvider().GetName(), providerName)
	}
	if len(policy.GetSelector().GetMatchLabels()) == 0 && len(policy.GetTargetRefs()) == 0 {
		t.Errorf("%s: selects no workload (selector or targetRefs)", authzPolicyExample)
	}
}

// No example replaces the user's whole mesh config (an `istio` ConfigMap).
func TestNoIstioExampleReplacesTheMeshConfig(t *testing.T) {
	files, err := filepath.Glob(repoPath(t, "examples/istio/*.y*ml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Istio examples: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range documents(data) {
			var obj map[string]any
			if err := yaml.Unmarshal(d, &obj); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if obj["kind"] == "ConfigMap" {
				t.Errorf("%s: a ConfigMap would replace the mesh config; use meshConfig.extensionProviders", f)
			}
			if strings.Contains(string(d), "includeRequestBodyInCheck") {
				t.Errorf("%s: includeRequestBodyInCheck", f)
			}
		}
	}
}
