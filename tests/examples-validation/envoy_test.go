package examplesvalidation

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"sigs.k8s.io/yaml"

	// Every typed_config / typed_extension_protocol_options type the example uses must be
	// linked in, or protojson cannot resolve its Any.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

const envoyExample = "examples/envoy/envoy.yaml"

func loadBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	var b bootstrapv3.Bootstrap
	unmarshalStrict(t, envoyExample, yamlToJSON(t, envoyExample, readFile(t, envoyExample)), &b)
	return &b
}

// The example parses strictly as an Envoy v3 bootstrap and passes the validation rules
// of every message in it, including the ones inside typed_config.
func TestEnvoyExampleIsAValidBootstrap(t *testing.T) {
	b := loadBootstrap(t)
	if problems := validateTree(b, "bootstrap"); len(problems) > 0 {
		t.Fatalf("%s fails Envoy's validation:\n%s", envoyExample, strings.Join(problems, "\n"))
	}
	if len(b.GetStaticResources().GetListeners()) == 0 || len(b.GetStaticResources().GetClusters()) == 0 {
		t.Fatal("no listeners or clusters")
	}
}

// envoyParts digs out the HTTP connection manager and the ext_authz filter.
func envoyParts(t *testing.T, b *bootstrapv3.Bootstrap) (*hcmv3.HttpConnectionManager, *extauthzv3.ExtAuthz) {
	t.Helper()
	var hcm *hcmv3.HttpConnectionManager
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if m, ok := unpack(t, f.GetTypedConfig()).(*hcmv3.HttpConnectionManager); ok {
					if hcm != nil {
						t.Fatal("more than one HTTP connection manager")
					}
					hcm = m
				}
			}
		}
	}
	if hcm == nil {
		t.Fatal("no HTTP connection manager")
	}
	var authz *extauthzv3.ExtAuthz
	var names []string
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
		if m, ok := unpack(t, f.GetTypedConfig()).(*extauthzv3.ExtAuthz); ok {
			authz = m
		}
	}
	if authz == nil {
		t.Fatal("no ext_authz filter")
	}
	if names[0] != "envoy.filters.http.ext_authz" || names[len(names)-1] != "envoy.filters.http.router" {
		t.Errorf("http_filters %v: ext_authz must come first and the router last", names)
	}
	return hcm, authz
}

func TestEnvoyExampleExtAuthzSettings(t *testing.T) {
	b := loadBootstrap(t)
	hcm, authz := envoyParts(t, b)

	// Paths are normalized before authorization; encoded slashes are refused (Portcullis
	// answers 400 MALFORMED_REQUEST for paths without one canonical form).
	if !hcm.GetNormalizePath().GetValue() {
		t.Error("normalize_path must be true")
	}
	if !hcm.GetMergeSlashes() {
		t.Error("merge_slashes must be true")
	}
	if got := hcm.GetPathWithEscapedSlashesAction(); got != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		t.Errorf("path_with_escaped_slashes_action = %v, want REJECT_REQUEST", got)
	}

	if authz.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Error("transport_api_version must be V3")
	}
	if authz.GetFailureModeAllow() {
		t.Error("failure_mode_allow must be false (fail closed)")
	}
	if got := authz.GetStatusOnError().GetCode(); got != typev3.StatusCode_ServiceUnavailable {
		t.Errorf("status_on_error = %v, want ServiceUnavailable (503)", got)
	}
	if authz.GetWithRequestBody() != nil {
		t.Error("with_request_body: Portcullis decides on headers; do not buffer bodies")
	}
	grpc := authz.GetGrpcService()
	if !sameDuration(t, grpc.GetTimeout(), recommendedTimeout) {
		t.Errorf("grpc_service.timeout = %s, want the recommended %s", durationString(grpc.GetTimeout()), recommendedTimeout)
	}

	// The authorization cluster exists and speaks HTTP/2; every route's cluster exists.
	clusters := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = true
		if c.GetName() != grpc.GetEnvoyGrpc().GetClusterName() {
			continue
		}
		opts, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
		if !ok {
			t.Fatalf("cluster %s: no HttpProtocolOptions (gRPC needs HTTP/2)", c.GetName())
		}
		hpo := unpack(t, opts).(*upstreamhttpv3.HttpProtocolOptions)
		if hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Errorf("cluster %s: not HTTP/2", c.GetName())
		}
		if len(c.GetHealthChecks()) == 0 || c.GetHealthChecks()[0].GetGrpcHealthCheck() == nil {
			t.Errorf("cluster %s: no gRPC health check", c.GetName())
		}
	}
	if !clusters[grpc.GetEnvoyGrpc().GetClusterName()] {
		t.Errorf("ext_authz cluster %q is not defined", grpc.GetEnvoyGrpc().GetClusterName())
	}
	for _, r := range routes(t, hcm) {
		if c := r.GetRoute().GetCluster(); c != "" && !clusters[c] {
			t.Errorf("route %v: cluster %q is not defined", r.GetMatch(), c)
		}
	}
}

func routes(t *testing.T, hcm *hcmv3.HttpConnectionManager) []*routev3.Route {
	t.Helper()
	var out []*routev3.Route
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		out = append(out, vh.GetRoutes()...)
	}
	if len(out) == 0 {
		t.Fatal("no routes (route_config must be inline)")
	}
	return out
}

// quickstartRule is the part of an authorization rule this test reads.
type quickstartRule struct {
	Name  string `json:"name"`
	Match struct {
		ContextExtensions map[string]string `json:"context_extensions"`
	} `json:"match"`
}

// Every context_extensions set the example's routes send selects at least one rule of
// examples/quickstart.yaml (the config the example is written for), and every quickstart
// rule that matches on context_extensions is selected by some route.
func TestEnvoyContextExtensionsSelectQuickstartRules(t *testing.T) {
	var quickstart struct {
		Authorization struct {
			Rules []quickstartRule `json:"rules"`
		} `json:"authorization"`
	}
	if err := yaml.Unmarshal(readFile(t, "examples/quickstart.yaml"), &quickstart); err != nil {
		t.Fatal(err)
	}
	hcm, _ := envoyParts(t, loadBootstrap(t))
	var sent []map[string]string
	for _, r := range routes(t, hcm) {
		cfg, ok := r.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"]
		if !ok {
			continue
		}
		per := unpack(t, cfg).(*extauthzv3.ExtAuthzPerRoute)
		if ext := per.GetCheckSettings().GetContextExtensions(); len(ext) > 0 {
			sent = append(sent, ext)
		}
	}
	if len(sent) == 0 {
		t.Fatal("no route sends context_extensions")
	}
	selects := func(rule quickstartRule, ext map[string]string) bool {
		for k, v := range rule.Match.ContextExtensions {
			if ext[k] != v {
				return false
			}
		}
		return true
	}
	for _, ext := range sent {
		var matched []string
		for _, rule := range quickstart.Authorization.Rules {
			if len(rule.Match.ContextExtensions) > 0 && selects(rule, ext) {
				matched = append(matched, rule.Name)
			}
		}
		if len(matched) == 0 {
			t.Errorf("context_extensions %v select no rule of examples/quickstart.yaml", ext)
		}
	}
	for _, rule := range quickstart.Authorization.Rules {
		if len(rule.Match.ContextExtensions) == 0 {
			continue
		}
		used := false
		for _, ext := range sent {
			used = used || selects(rule, ext)
		}
		if !used {
			keys := make([]string, 0, len(rule.Match.ContextExtensions))
			for k, v := range rule.Match.ContextExtensions {
				keys = append(keys, fmt.Sprintf("%s=%s", k, v))
			}
			sort.Strings(keys)
			t.Errorf("quickstart rule %q matches context_extensions %v, which no route of %s sends", rule.Name, keys, envoyExample)
		}
	}
}

// The validation really runs: a broken copy of the example is caught.
func TestValidationCatchesBrokenConfigs(t *testing.T) {
	original := string(readFile(t, envoyExample))
	for name, edit := range map[string][2]string{
		"unknown field":        {"failure_mode_allow: false", "failure_mode_allow: false\n                      no_such_field: 1"},
		"unresolvable Any":     {"filters.http.router.v3.Router", "filters.http.router.v3.NoSuchRouter"},
		"validation rule (PGV)": {"port_value: 8081", "port_value: 70000"},
		"validation inside an Any": {"stat_prefix: ingress", "stat_prefix: \"\""},
	} {
		broken := strings.Replace(original, edit[0], edit[1], 1)
		if broken == original {
			t.Fatalf("%s: edit did not apply", name)
		}
		j, err := yaml.YAMLToJSONStrict([]byte(broken))
		if err != nil {
			t.Fatal(err)
		}
		var b bootstrapv3.Bootstrap
		parseErr := unmarshalOpts.Unmarshal(j, &b)
		if parseErr == nil && len(validateTree(&b, "bootstrap")) == 0 {
			t.Errorf("%s: the broken example was accepted", name)
		}
	}
}
