package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func set(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func allowResp(headers []*corev3.HeaderValueOption, remove []string, md map[string]any) *authv3.CheckResponse {
	s, err := structpb.NewStruct(md)
	if err != nil {
		panic(err)
	}
	return &authv3.CheckResponse{
		Status:          &status.Status{Code: 0},
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: headers, HeadersToRemove: remove}},
		DynamicMetadata: s,
	}
}

func denyResp(code int32, http typev3.StatusCode, body string, headers ...*corev3.HeaderValueOption) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &status.Status{Code: code},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: http}, Headers: headers, Body: body,
		}},
	}
}

func mustExpect(t *testing.T, s string) expect {
	t.Helper()
	var e expect
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("bad expect %s: %v", s, err)
	}
	return e
}

func TestEvaluate(t *testing.T) {
	goodAllow := allowResp(
		[]*corev3.HeaderValueOption{set("x-user-id", "alice")},
		[]string{"x-user-email"},
		map[string]any{"principal": map[string]any{"subject": "alice", "scopes": []any{"read", "write"}}, "a.b": 1.0},
	)
	const denyBody = `{"reason":"EXPIRED","message":"token expired"}`
	goodDeny := denyResp(16, typev3.StatusCode_Unauthorized, denyBody,
		set("www-authenticate", `Bearer realm="api", error="invalid_token"`), set("content-type", "application/json"))

	tests := []struct {
		name   string
		expect string
		resp   *authv3.CheckResponse
		want   string // substring of the joined failures; "" = pass
	}{
		{"allow ok", `{"allow":true,"headers":{"x-user-id":"alice"},"headers_absent":["x-user-email"],"headers_to_remove_include":["X-User-Email"],"metadata":{"principal.subject":"alice","principal.scopes.1":"write","/a.b":1},"metadata_absent":["principal.email"],"no_crlf":true,"response_excludes":["eyJ"]}`, goodAllow, ""},
		{"allow but denied", `{"allow":true}`, goodDeny, "expected allow"},
		{"allow wrong value", `{"allow":true,"headers":{"x-user-id":"bob"}}`, goodAllow, `expected "bob", got "alice"`},
		{"allow metadata", `{"allow":true,"metadata":{"principal":{"subject":"bob"}}}`, goodAllow, `metadata "principal"`},
		{"allow missing remove", `{"allow":true,"headers_to_remove_include":["authorization"]}`, goodAllow, "headers_to_remove"},
		{"allow excluded", `{"allow":true,"response_excludes":["alice"]}`, goodAllow, "excluded text"},
		{"allow default append action", `{"allow":true,"headers":{"x-user-id":"alice"}}`,
			allowResp([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-user-id", Value: "alice"}}}, nil, nil), "must overwrite"},
		{"allow append=false ok", `{"allow":true,"headers":{"x-user-id":"alice"}}`,
			allowResp([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-user-id", Value: "alice"}, Append: wrapperspb.Bool(false)}}, nil, nil), ""},
		{"allow overwrite opt-out", `{"allow":true,"header_overwrite":false,"headers":{"x-user-id":"alice"}}`,
			allowResp([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-user-id", Value: "alice"}, Append: wrapperspb.Bool(true)}}, nil, nil), ""},
		{"allow raw_value", `{"allow":true,"headers":{"x-user-id":"alice"}}`,
			allowResp([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-user-id", RawValue: []byte("alice")}, Append: wrapperspb.Bool(false)}}, nil, nil), ""},
		{"set and removed", `{"allow":true}`, allowResp([]*corev3.HeaderValueOption{set("x-user-id", "a")}, []string{"X-User-Id"}, nil), "both set and in headers_to_remove"},
		{"duplicate header", `{"allow":true,"headers":{"x-user-id":"a"}}`, allowResp([]*corev3.HeaderValueOption{set("x-user-id", "a"), set("x-user-id", "b")}, nil, nil), "2 entries"},
		{"crlf", `{"allow":true,"no_crlf":true}`, allowResp([]*corev3.HeaderValueOption{set("x-user-email", "a@b\r\nx-admin: 1")}, nil, nil), "CR/LF/NUL"},
		{"bad name", `{"allow":true,"no_crlf":true}`, allowResp([]*corev3.HeaderValueOption{set("x user", "a")}, nil, nil), "not a valid token"},
		{"deprecated ok metadata", `{"allow":true}`, &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{DynamicMetadata: &structpb.Struct{}}}}, "deprecated"},
		{"no ok_response", `{"allow":true}`, &authv3.CheckResponse{}, "no http_response"},

		{"deny ok", `{"allow":false,"http_status":401,"rpc_code":16,"www_authenticate_contains":"invalid_token","body_reason":"EXPIRED","content_type_contains":"json","headers":{"content-type":"application/json"},"no_crlf":true}`, goodDeny, ""},
		{"deny but allowed", `{"allow":false}`, goodAllow, "expected deny"},
		{"deny status", `{"allow":false,"http_status":403}`, goodDeny, "expected 403, got 401"},
		{"deny rpc code", `{"allow":false,"rpc_code":7}`, goodDeny, "expected 7, got 16"},
		{"deny reason", `{"allow":false,"body_reason":"REVOKED"}`, goodDeny, `expected "REVOKED", got "EXPIRED"`},
		{"deny challenge absent", `{"allow":false,"www_authenticate_contains":""}`, goodDeny, "expected absent"},
		{"deny challenge missing", `{"allow":false,"www_authenticate_contains":"Bearer"}`, denyResp(7, typev3.StatusCode_Forbidden, denyBody), "got none"},
		{"deny challenge absent ok", `{"allow":false,"www_authenticate_contains":""}`, denyResp(7, typev3.StatusCode_Forbidden, denyBody), ""},
		{"deny body not json", `{"allow":false}`, denyResp(7, typev3.StatusCode_Forbidden, "nope"), "JSON object"},
		{"deny body no message", `{"allow":false}`, denyResp(7, typev3.StatusCode_Forbidden, `{"reason":"X"}`), `"message"`},
		{"deny status unset", `{"allow":false,"http_status":401}`, &authv3.CheckResponse{Status: &status.Status{Code: 7},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: denyBody}}}, "unset (Envoy would send 403)"},
		{"deny via error_response", `{"allow":false}`, &authv3.CheckResponse{Status: &status.Status{Code: 7},
			HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{Body: denyBody}}}, "failure_mode_allow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(evaluate(mustExpect(t, tt.expect), tt.resp), "; ")
			if tt.want == "" && got != "" {
				t.Fatalf("expected pass, got: %s", got)
			}
			if tt.want != "" && !strings.Contains(got, tt.want) {
				t.Fatalf("expected failure containing %q, got %q", tt.want, got)
			}
		})
	}
}

func TestEnvoyURLEncode(t *testing.T) {
	in := "-----BEGIN CERTIFICATE-----\nMIIB+/9=\n-----END CERTIFICATE-----\n"
	want := "-----BEGIN%20CERTIFICATE-----%0AMIIB%2B%2F9%3D%0A-----END%20CERTIFICATE-----%0A"
	if got := envoyURLEncode(in); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestBuildCheckRequest(t *testing.T) {
	r := buildCheckRequest(3, request{
		Host: "api.example.com", Path: "/v1/things?x=1",
		Headers:           map[string]string{"authorization": "Bearer t", ":path": "/override"},
		ContextExtensions: map[string]string{"policy": "admin"},
		SourceCertificate: "abc%0A",
		Traceparent:       "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	})
	h := r.GetAttributes().GetRequest().GetHttp()
	if h.GetMethod() != "GET" || h.GetScheme() != "http" || h.GetProtocol() != "HTTP/1.1" || h.GetPath() != "/v1/things?x=1" {
		t.Fatalf("defaults: %v", h)
	}
	if h.GetHeaders()[":authority"] != "api.example.com" || h.GetHeaders()[":path"] != "/override" ||
		h.GetHeaders()["authorization"] != "Bearer t" || h.GetHeaders()["x-request-id"] != "conformance-3" ||
		h.GetHeaders()["traceparent"] == "" {
		t.Fatalf("headers: %v", h.GetHeaders())
	}
	if r.GetAttributes().GetSource().GetCertificate() != "abc%0A" || r.GetAttributes().GetContextExtensions()["policy"] != "admin" {
		t.Fatalf("attributes: %v", r.GetAttributes())
	}
	raw := buildCheckRequest(0, request{Headers: map[string]string{"a": "b"}, EncodeRawHeaders: true}).GetAttributes().GetRequest().GetHttp()
	if len(raw.GetHeaders()) != 0 || len(raw.GetHeaderMap().GetHeaders()) == 0 {
		t.Fatalf("encode_raw_headers: %v", raw)
	}
}

func TestLoadCasesRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown field":      `{"cases":[{"name":"a","request":{},"expect":{"allow":true,"hedaers":{}}}]}`,
		"missing allow":      `{"cases":[{"name":"a","request":{},"expect":{}}]}`,
		"deny-only on allow": `{"cases":[{"name":"a","request":{},"expect":{"allow":true,"http_status":401}}]}`,
		"duplicate":          `{"cases":[{"name":"a","request":{},"expect":{"allow":true}},{"name":"a","request":{},"expect":{"allow":true}}]}`,
		"upper-case header":  `{"cases":[{"name":"a","request":{"headers":{"Authorization":"x"}},"expect":{"allow":true}}]}`,
		"empty":              `{"cases":[]}`,
	} {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadCases(p); err == nil {
			t.Errorf("%s: expected an error", name)
		}
	}
	if _, err := loadCases("example-cases.json"); err != nil {
		t.Fatalf("example-cases.json: %v", err)
	}
}
