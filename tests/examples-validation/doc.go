// Package examplesvalidation checks the repository's deployment examples with the
// projects' own API definitions: examples/envoy/envoy.yaml against Envoy's v3 API
// (go-control-plane: strict protojson, every Any resolved, every message's generated
// ValidateAll), and the Istio examples against istio.io/api (MeshConfig for the
// extension provider, security/v1 AuthorizationPolicy). It also checks that the
// examples agree with each other and with examples/quickstart.yaml.
//
// Run from the repository root:
//
//	GOFLAGS=-mod=mod go -C tests/examples-validation test ./...
package examplesvalidation
