# The benchmark rule for OPA, as an opa-envoy-plugin policy (scripts/bench_peers.py).
#
# Same rule as bench-peers/portcullis.yaml and bench-peers/heimdall/: GET /orders/<one segment>
# needs a JWT from the quickstart issuer (ES256, key from bench-peers/jwks.json, which the
# server puts at data.jwks as a string), for audience api://quickstart, unexpired, whose
# space-separated `scope` claim holds orders:read. Everything else is denied. An allow
# forwards the subject upstream as x-user-id.
#
# The decision is the object opa-envoy-plugin reads at `envoy/authz/result` (plugin config
# `path: envoy/authz/result`): `allowed`, and `headers` added to the upstream request. The
# input is the plugin's: the CheckRequest as JSON (input.attributes.request.http...), plus
# parsed_path, parsed_query and version.
package envoy.authz

import rego.v1

issuer := "https://quickstart.portcullis.invalid"

audience := "api://quickstart"

http_request := input.attributes.request.http

bearer_token := t if {
	v := http_request.headers.authorization
	startswith(v, "Bearer ")
	t := substring(v, count("Bearer "), -1)
}

# io.jwt.decode_verify checks the signature against the JWKS, `alg`, `iss`, `aud`, and
# `exp`/`nbf` against the current time (it has no leeway).
claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer_token, {
		"cert": data.jwks,
		"alg": "ES256",
		"iss": issuer,
		"aud": audience,
	})
	valid
	is_number(payload.exp)
	is_string(payload.sub)
}

default allow := false

allow if {
	http_request.method == "GET"
	glob.match("/orders/*", ["/"], http_request.path)
	"orders:read" in split(claims.scope, " ")
}

result["allowed"] := allow

result["headers"] := {"x-user-id": claims.sub} if allow
