package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// caseFile is the top level of a -cases file.
type caseFile struct {
	Cases []testCase `json:"cases"`
}

type testCase struct {
	Name    string  `json:"name"`
	Request request `json:"request"`
	Expect  expect  `json:"expect"`
}

// request describes the HTTP request Envoy would be asking about.
type request struct {
	Method   string `json:"method"`   // default GET
	Host     string `json:"host"`     // attributes.request.http.host (and :authority)
	Path     string `json:"path"`     // default "/"; includes the query string, as Envoy sends it
	Scheme   string `json:"scheme"`   // default http
	Protocol string `json:"protocol"` // default HTTP/1.1
	// Request headers, lower-case names (attributes.request.http.headers).
	Headers map[string]string `json:"headers"`
	// attributes.context_extensions
	ContextExtensions map[string]string `json:"context_extensions"`
	// attributes.source.certificate, sent verbatim (already URL-encoded PEM).
	SourceCertificate string `json:"source_certificate"`
	// Extension: a raw PEM; the client URL-encodes it the way Envoy does and
	// sends it as attributes.source.certificate. Mutually exclusive with
	// source_certificate.
	SourceCertificatePEM string `json:"source_certificate_pem"`
	// W3C traceparent: sent as the "traceparent" request header and as
	// "traceparent" gRPC metadata on the Check call (as Envoy does when
	// tracing is on).
	Traceparent string `json:"traceparent"`
	// Extension: attributes.request.http.id and the x-request-id header.
	// Default: "conformance-<case index>".
	RequestID string `json:"request_id"`
	// Extension: add the pseudo-headers Envoy puts in the headers map
	// (:authority, :method, :path, :scheme) unless the case sets them.
	// Default true.
	PseudoHeaders *bool `json:"pseudo_headers"`
	// Extension: send the headers as attributes.request.http.header_map with
	// raw_value (what Envoy does with encode_raw_headers: true) instead of the
	// headers map.
	EncodeRawHeaders bool `json:"encode_raw_headers"`
}

// expect is what the CheckResponse must look like.
type expect struct {
	Allow *bool `json:"allow"` // required

	// Both outcomes. On allow these look at OkHttpResponse.headers, on deny
	// at DeniedHttpResponse.headers.
	Headers       map[string]string `json:"headers"`
	HeadersAbsent []string          `json:"headers_absent"`
	// Dotted path (or JSON Pointer starting with "/") -> expected JSON value,
	// checked against CheckResponse.dynamic_metadata rendered with protojson.
	Metadata map[string]json.RawMessage `json:"metadata"`
	// Paths that must not resolve in dynamic_metadata.
	MetadataAbsent []string `json:"metadata_absent"`
	// No CR, LF or NUL in any header name or value of the response, and
	// header names are RFC 9110 tokens.
	NoCRLF bool `json:"no_crlf"`
	// Substrings (e.g. the presented token) that must not appear anywhere in
	// the response: header names/values, body, dynamic metadata, status message.
	ResponseExcludes []string `json:"response_excludes"`

	// Allow only.
	HeadersToRemoveInclude []string `json:"headers_to_remove_include"`
	// Every header named in `headers` must be written with overwrite
	// semantics (default true); see README.
	HeaderOverwrite *bool `json:"header_overwrite"`

	// Deny only.
	HTTPStatus              *int    `json:"http_status"`
	RPCCode                 *int    `json:"rpc_code"` // exact google.rpc code; default: any non-zero
	WWWAuthenticateContains *string `json:"www_authenticate_contains"`
	BodyReason              *string `json:"body_reason"`
	ContentTypeContains     *string `json:"content_type_contains"`
}

func loadCases(path string) ([]testCase, error) {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cf caseFile
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: trailing data after the top-level object", path)
	}
	if len(cf.Cases) == 0 {
		return nil, fmt.Errorf("%s: no cases", path)
	}
	seen := map[string]bool{}
	var problems []string
	for i, c := range cf.Cases {
		where := fmt.Sprintf("case #%d (%q)", i, c.Name)
		if strings.TrimSpace(c.Name) == "" {
			problems = append(problems, fmt.Sprintf("case #%d: empty name", i))
		} else if strings.ContainsAny(c.Name, "\r\n") {
			problems = append(problems, where+": name contains a line break")
		}
		if seen[c.Name] {
			problems = append(problems, where+": duplicate name")
		}
		seen[c.Name] = true
		for _, p := range validateCase(c) {
			problems = append(problems, where+": "+p)
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s: invalid cases:\n  %s", path, strings.Join(problems, "\n  "))
	}
	return cf.Cases, nil
}

func validateCase(c testCase) []string {
	var p []string
	e := c.Expect
	if e.Allow == nil {
		return append(p, "expect.allow is required")
	}
	if c.Request.SourceCertificate != "" && c.Request.SourceCertificatePEM != "" {
		p = append(p, "request: source_certificate and source_certificate_pem are mutually exclusive")
	}
	for k := range c.Request.Headers {
		if k != strings.ToLower(k) {
			p = append(p, fmt.Sprintf("request.headers: name %q is not lower-case (Envoy always sends lower-case names)", k))
		}
	}
	if *e.Allow {
		if e.HTTPStatus != nil {
			p = append(p, "http_status is only for deny cases")
		}
		if e.RPCCode != nil {
			p = append(p, "rpc_code is only for deny cases (allow always needs code 0)")
		}
		if e.WWWAuthenticateContains != nil {
			p = append(p, "www_authenticate_contains is only for deny cases")
		}
		if e.BodyReason != nil {
			p = append(p, "body_reason is only for deny cases")
		}
		if e.ContentTypeContains != nil {
			p = append(p, "content_type_contains is only for deny cases")
		}
	} else {
		if len(e.HeadersToRemoveInclude) > 0 {
			p = append(p, "headers_to_remove_include is only for allow cases")
		}
		if e.HeaderOverwrite != nil {
			p = append(p, "header_overwrite is only for allow cases")
		}
		if e.RPCCode != nil && *e.RPCCode == 0 {
			p = append(p, "rpc_code 0 means allow; a deny needs a non-zero code")
		}
	}
	for k, v := range e.Metadata {
		var x any
		if err := json.Unmarshal(v, &x); err != nil {
			p = append(p, fmt.Sprintf("metadata[%q]: not JSON: %v", k, err))
		}
		if _, err := splitPath(k); err != nil {
			p = append(p, fmt.Sprintf("metadata[%q]: %v", k, err))
		}
	}
	for _, k := range e.MetadataAbsent {
		if _, err := splitPath(k); err != nil {
			p = append(p, fmt.Sprintf("metadata_absent %q: %v", k, err))
		}
	}
	return p
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// buildCheckRequest turns a case's request into the CheckRequest Envoy would send.
func buildCheckRequest(idx int, r request) *authv3.CheckRequest {
	method := orDefault(r.Method, "GET")
	path := orDefault(r.Path, "/")
	scheme := orDefault(r.Scheme, "http")
	protocol := orDefault(r.Protocol, "HTTP/1.1")
	reqID := orDefault(r.RequestID, fmt.Sprintf("conformance-%d", idx))

	headers := map[string]string{}
	if r.PseudoHeaders == nil || *r.PseudoHeaders {
		if r.Host != "" {
			headers[":authority"] = r.Host
		}
		headers[":method"] = method
		headers[":path"] = path
		headers[":scheme"] = scheme
	}
	headers["x-request-id"] = reqID
	if r.Traceparent != "" {
		headers["traceparent"] = r.Traceparent
	}
	for k, v := range r.Headers { // the case wins over the defaults above
		headers[k] = v
	}

	httpReq := &authv3.AttributeContext_HttpRequest{
		Id:       reqID,
		Method:   method,
		Host:     r.Host,
		Path:     path,
		Scheme:   scheme,
		Protocol: protocol,
	}
	if r.EncodeRawHeaders {
		names := make([]string, 0, len(headers))
		for k := range headers {
			names = append(names, k)
		}
		sort.Strings(names)
		hm := &corev3.HeaderMap{}
		for _, k := range names {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(headers[k])})
		}
		httpReq.HeaderMap = hm
	} else {
		httpReq.Headers = headers
	}

	cert := r.SourceCertificate
	if r.SourceCertificatePEM != "" {
		cert = envoyURLEncode(r.SourceCertificatePEM)
	}
	attrs := &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Now()),
			Http: httpReq,
		},
		ContextExtensions: r.ContextExtensions,
	}
	if cert != "" {
		attrs.Source = &authv3.AttributeContext_Peer{Certificate: cert}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

// envoyURLEncode percent-encodes like Envoy's
// Http::Utility::PercentEncoding::urlEncodeQueryParameter, which produces
// attributes.source.certificate: everything except ALPHA, DIGIT, '*', '-',
// '.', '_' becomes %XX (upper-case hex; space is %20, never '+').
func envoyURLEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '*', c == '-', c == '.', c == '_':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}
