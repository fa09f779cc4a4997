package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// hdr is one HeaderValueOption as Envoy would read it.
type hdr struct {
	key, value string
	opt        *corev3.HeaderValueOption
}

// headerValue reads HeaderValue.value, falling back to raw_value (Envoy
// accepts either; only one may be set).
func headerValue(h *corev3.HeaderValue) string {
	if h == nil {
		return ""
	}
	if h.GetValue() == "" && len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

func flatten(opts []*corev3.HeaderValueOption) []hdr {
	out := make([]hdr, 0, len(opts))
	for _, o := range opts {
		out = append(out, hdr{key: o.GetHeader().GetKey(), value: headerValue(o.GetHeader()), opt: o})
	}
	return out
}

func find(hs []hdr, name string) []hdr {
	var out []hdr
	for _, h := range hs {
		if strings.EqualFold(h.key, name) {
			out = append(out, h)
		}
	}
	return out
}

// nonOverwriteReason says why Envoy might not overwrite a request header from
// OkHttpResponse.headers. Old Envoy reads only the deprecated `append`
// (unset = overwrite); current Envoy reads `append` when present, else
// `append_action`, whose zero value APPEND_IF_EXISTS_OR_ADD adds a second
// copy. It returns "" when every Envoy version overwrites.
func nonOverwriteReason(o *corev3.HeaderValueOption) string {
	if o.GetAppend() != nil {
		if o.GetAppend().GetValue() {
			return "append=true (client-sent values are kept)"
		}
		return ""
	}
	if o.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		return ""
	}
	return fmt.Sprintf("append unset and append_action=%s (current Envoy then keeps client-sent values; set append_action=OVERWRITE_IF_EXISTS_OR_ADD and/or append=false)",
		o.GetAppendAction().String())
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func valuesOf(hs []hdr) []string {
	v := make([]string, len(hs))
	for i, h := range hs {
		v[i] = h.value
	}
	return v
}

// evaluate returns what differed between the expectation and the response;
// empty means the case passed.
func evaluate(e expect, resp *authv3.CheckResponse) []string {
	var fails []string
	failf := func(format string, a ...any) { fails = append(fails, fmt.Sprintf(format, a...)) }

	code := resp.GetStatus().GetCode() // nil status reads as 0 (OK), as in Envoy
	allow := *e.Allow

	var headers []hdr
	if allow {
		if code != 0 {
			failf("decision: expected allow (status.code 0), got deny (status.code %d, message %q)", code, resp.GetStatus().GetMessage())
			return fails
		}
		ok := resp.GetOkResponse()
		if ok == nil {
			failf("expected ok_response on allow, got %s", httpResponseKind(resp))
			return fails
		}
		headers = flatten(ok.GetHeaders())

		overwrite := e.HeaderOverwrite == nil || *e.HeaderOverwrite
		names := sortedKeys(e.Headers)
		for _, name := range names {
			if m := find(headers, name); len(m) == 1 && overwrite {
				if why := nonOverwriteReason(m[0].opt); why != "" {
					failf("header %q must overwrite: %s", name, why)
				}
			}
		}

		// Envoy applies headers_to_remove after headers: a name in both
		// never reaches the upstream.
		removed := map[string]bool{}
		for _, n := range ok.GetHeadersToRemove() {
			removed[strings.ToLower(n)] = true
		}
		var both []string
		for _, h := range headers {
			if removed[strings.ToLower(h.key)] {
				both = append(both, h.key)
			}
		}
		if len(both) > 0 {
			failf("headers %s are both set and in headers_to_remove (Envoy removes after setting, so the upstream would not get them)", quoteList(both))
		}
		for _, want := range e.HeadersToRemoveInclude {
			if !removed[strings.ToLower(want)] {
				failf("headers_to_remove: expected to include %q, got %s", want, quoteList(ok.GetHeadersToRemove()))
			}
		}
		if ok.GetDynamicMetadata() != nil {
			failf("deprecated OkHttpResponse.dynamic_metadata is set (it overrides CheckResponse.dynamic_metadata in Envoy); use CheckResponse.dynamic_metadata")
		}
	} else {
		if code == 0 {
			failf("decision: expected deny (non-zero status.code), got allow (status.code 0)")
			return fails
		}
		if e.RPCCode != nil && int(code) != *e.RPCCode {
			failf("status.code: expected %d, got %d", *e.RPCCode, code)
		}
		denied := resp.GetDeniedResponse()
		if denied == nil {
			failf("expected denied_response on deny, got %s", httpResponseKind(resp))
			return fails
		}
		headers = flatten(denied.GetHeaders())

		if e.HTTPStatus != nil {
			got := int(denied.GetStatus().GetCode())
			if denied.GetStatus() == nil {
				failf("http_status: expected %d, got unset (Envoy would send 403)", *e.HTTPStatus)
			} else if got != *e.HTTPStatus {
				failf("http_status: expected %d, got %d", *e.HTTPStatus, got)
			}
		}
		if e.WWWAuthenticateContains != nil {
			m := find(headers, "www-authenticate")
			want := *e.WWWAuthenticateContains
			switch {
			case want == "" && len(m) > 0:
				failf("www-authenticate: expected absent, got %s", quoteList(valuesOf(m)))
			case want != "" && len(m) == 0:
				failf("www-authenticate: expected a value containing %q, got none", want)
			case want != "":
				found := false
				for _, h := range m {
					if strings.Contains(h.value, want) {
						found = true
					}
				}
				if !found {
					failf("www-authenticate: expected to contain %q, got %s", want, quoteList(valuesOf(m)))
				}
			}
		}
		if e.ContentTypeContains != nil {
			m := find(headers, "content-type")
			found := false
			for _, h := range m {
				if strings.Contains(h.value, *e.ContentTypeContains) {
					found = true
				}
			}
			if !found {
				failf("content-type: expected to contain %q, got %s", *e.ContentTypeContains, quoteList(valuesOf(m)))
			}
		}
		fails = append(fails, checkDenyBody(denied.GetBody(), e.BodyReason)...)
	}

	// Checks shared by both outcomes.
	for _, name := range sortedKeys(e.Headers) {
		want := e.Headers[name]
		m := find(headers, name)
		switch {
		case len(m) == 0:
			failf("header %q: expected %q, got absent", name, want)
		case len(m) > 1:
			failf("header %q: expected exactly one entry %q, got %d entries %s", name, want, len(m), quoteList(valuesOf(m)))
		case m[0].value != want:
			failf("header %q: expected %q, got %q", name, want, m[0].value)
		}
	}
	for _, name := range e.HeadersAbsent {
		if m := find(headers, name); len(m) > 0 {
			failf("header %q: expected absent, got %s", name, quoteList(valuesOf(m)))
		}
	}

	if len(e.Metadata) > 0 || len(e.MetadataAbsent) > 0 {
		md, err := metadataJSON(resp.GetDynamicMetadata())
		if err != nil {
			failf("dynamic_metadata: %v", err)
		} else {
			for _, path := range sortedKeys(e.Metadata) {
				var want any
				_ = json.Unmarshal(e.Metadata[path], &want) // validated at load time
				got, found := lookup(md, path)
				if !found {
					failf("metadata %q: expected %s, got absent", path, compact(e.Metadata[path]))
				} else if !reflect.DeepEqual(got, want) {
					failf("metadata %q: expected %s, got %s", path, compact(e.Metadata[path]), toJSON(got))
				}
			}
			for _, path := range e.MetadataAbsent {
				if got, found := lookup(md, path); found {
					failf("metadata %q: expected absent, got %s", path, toJSON(got))
				}
			}
		}
	}

	if e.NoCRLF {
		fails = append(fails, checkHeaderSafety(resp)...)
	}
	if len(e.ResponseExcludes) > 0 {
		dump, err := protojson.Marshal(resp)
		if err != nil {
			failf("cannot render response: %v", err)
		}
		// Look in the decoded strings, not the JSON escapes.
		text := collectStrings(resp, dump)
		for _, s := range e.ResponseExcludes {
			if s != "" && strings.Contains(text, s) {
				failf("response contains excluded text %q", abbreviate(s))
			}
		}
	}
	return fails
}

func httpResponseKind(resp *authv3.CheckResponse) string {
	switch resp.GetHttpResponse().(type) {
	case *authv3.CheckResponse_OkResponse:
		return "ok_response"
	case *authv3.CheckResponse_DeniedResponse:
		return "denied_response"
	case *authv3.CheckResponse_ErrorResponse:
		return "error_response (Envoy treats it as an error: failure_mode_allow would let the request through)"
	case nil:
		return "no http_response"
	default:
		return fmt.Sprintf("%T", resp.GetHttpResponse())
	}
}

func checkDenyBody(body string, wantReason *string) []string {
	var obj map[string]any
	if err := json.Unmarshal([]byte(body), &obj); err != nil || obj == nil {
		return []string{fmt.Sprintf("body: expected a JSON object with reason and message, got %q", abbreviate(body))}
	}
	var fails []string
	reason, ok := obj["reason"].(string)
	if !ok {
		fails = append(fails, fmt.Sprintf("body: expected a string \"reason\", got %s", toJSON(obj["reason"])))
	}
	if _, ok := obj["message"].(string); !ok {
		fails = append(fails, fmt.Sprintf("body: expected a string \"message\", got %s", toJSON(obj["message"])))
	}
	if wantReason != nil && ok && reason != *wantReason {
		fails = append(fails, fmt.Sprintf("body reason: expected %q, got %q", *wantReason, reason))
	}
	return fails
}

// checkHeaderSafety: no CR, LF or NUL in any header name or value the
// response asks Envoy to write, and names are tokens.
func checkHeaderSafety(resp *authv3.CheckResponse) []string {
	var fails []string
	check := func(where string, opts []*corev3.HeaderValueOption) {
		for _, h := range flatten(opts) {
			if strings.ContainsAny(h.value, "\r\n\x00") {
				fails = append(fails, fmt.Sprintf("%s header %q: value contains CR/LF/NUL: %q", where, h.key, abbreviate(h.value)))
			}
			if !isToken(h.key) {
				fails = append(fails, fmt.Sprintf("%s header name %q is not a valid token", where, h.key))
			}
		}
	}
	if ok := resp.GetOkResponse(); ok != nil {
		check("ok_response.headers", ok.GetHeaders())
		check("ok_response.response_headers_to_add", ok.GetResponseHeadersToAdd())
		for _, n := range ok.GetHeadersToRemove() {
			if !isToken(n) {
				fails = append(fails, fmt.Sprintf("headers_to_remove name %q is not a valid token", n))
			}
		}
	}
	if d := resp.GetDeniedResponse(); d != nil {
		check("denied_response.headers", d.GetHeaders())
	}
	if d := resp.GetErrorResponse(); d != nil {
		check("error_response.headers", d.GetHeaders())
	}
	return fails
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func metadataJSON(s *structpb.Struct) (any, error) {
	if s == nil {
		return map[string]any{}, nil
	}
	b, err := protojson.Marshal(s)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// splitPath parses a metadata path: a JSON Pointer when it starts with "/",
// else dot-separated keys. Numeric segments index arrays.
func splitPath(p string) ([]string, error) {
	if p == "" {
		return nil, fmt.Errorf("empty path")
	}
	if strings.HasPrefix(p, "/") {
		segs := strings.Split(p[1:], "/")
		for i, s := range segs {
			segs[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
		}
		return segs, nil
	}
	segs := strings.Split(p, ".")
	for _, s := range segs {
		if s == "" {
			return nil, fmt.Errorf("empty segment in dotted path (use a JSON Pointer for keys containing dots)")
		}
	}
	return segs, nil
}

func lookup(root any, path string) (any, bool) {
	segs, err := splitPath(path)
	if err != nil {
		return nil, false
	}
	cur := root
	for _, s := range segs {
		switch n := cur.(type) {
		case map[string]any:
			v, ok := n[s]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(s)
			if err != nil || i < 0 || i >= len(n) {
				return nil, false
			}
			cur = n[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// collectStrings gathers every string the response carries, decoded, for
// the response_excludes check.
func collectStrings(resp *authv3.CheckResponse, dump []byte) string {
	var b strings.Builder
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			b.WriteString(x)
			b.WriteByte('\n')
		case map[string]any:
			for k, vv := range x {
				b.WriteString(k)
				b.WriteByte('\n')
				walk(vv)
			}
		case []any:
			for _, vv := range x {
				walk(vv)
			}
		}
	}
	var v any
	if json.Unmarshal(dump, &v) == nil {
		walk(v)
	}
	// raw_value is bytes (base64 in JSON): add the decoded forms.
	for _, set := range [][]*corev3.HeaderValueOption{
		resp.GetOkResponse().GetHeaders(), resp.GetOkResponse().GetResponseHeadersToAdd(),
		resp.GetDeniedResponse().GetHeaders(), resp.GetErrorResponse().GetHeaders(),
	} {
		for _, o := range set {
			b.Write(o.GetHeader().GetRawValue())
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func toJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

func compact(raw json.RawMessage) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	return toJSON(v)
}

func abbreviate(s string) string {
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}
