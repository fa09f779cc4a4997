// Command opa-extauthz serves Envoy's ext_authz Check (envoy.service.auth.v3.Authorization)
// over gRPC and decides each request with a Rego policy through OPA's Go API, doing per
// request what opa-envoy-plugin's gRPC server does (README.md says what is the same and what
// differs). It is the OPA peer of scripts/bench_peers.py; it listens on loopback only.
//
//	opa-extauthz -addr 127.0.0.1:9191 -policy ../opa/policy.rego -jwks ../jwks.json
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/cache"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The input's `version` member, as opa-envoy-plugin sets it for ext_authz v3.
var v3Version = ast.NewObject(
	[2]*ast.Term{ast.StringTerm("ext_authz"), ast.StringTerm("v3")},
	[2]*ast.Term{ast.StringTerm("encoding"), ast.StringTerm("protojson")},
)

type server struct {
	authv3.UnimplementedAuthorizationServer
	store      storage.Store
	query      rego.PreparedEvalQuery
	interQuery cache.InterQueryCache
	valueCache cache.InterQueryValueCache
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9191", "gRPC listen address (loopback only)")
	policyPath := flag.String("policy", "", "the Rego policy file")
	jwksPath := flag.String("jwks", "", "a JWKS file; its text is put at data.jwks")
	decision := flag.String("decision", "envoy/authz/result", "the decision path (opa-envoy-plugin's `path`)")
	jwtCache := flag.Int("jwt-cache-entries", 0,
		"enable OPA's io_jwt inter-query value cache (verified tokens) with this many entries; "+
			"0 keeps OPA's default, where it is off")
	flag.Parse()
	if *policyPath == "" || *jwksPath == "" {
		log.Fatal("opa-extauthz: -policy and -jwks are required")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("opa-extauthz: -addr must be a loopback address, got %q", *addr)
	}

	ctx := context.Background()
	srv, err := newServer(ctx, *policyPath, *jwksPath, *decision, *jwtCache)
	if err != nil {
		log.Fatalf("opa-extauthz: %v", err)
	}

	// opa-envoy-plugin's defaults: 4 MiB received messages, no send limit to speak of.
	grpcServer := grpc.NewServer(grpc.MaxRecvMsgSize(4<<20), grpc.MaxSendMsgSize(math.MaxInt32))
	authv3.RegisterAuthorizationServer(grpcServer, srv)
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("opa-extauthz: %v", err)
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		grpcServer.GracefulStop()
	}()
	log.Printf("opa-extauthz: serving on %s (decision %s, io_jwt cache entries %d)", listener.Addr(), *decision, *jwtCache)
	if err := grpcServer.Serve(listener); err != nil {
		log.Fatalf("opa-extauthz: %v", err)
	}
}

func newServer(ctx context.Context, policyPath, jwksPath, decision string, jwtCacheEntries int) (*server, error) {
	policy, err := os.ReadFile(policyPath)
	if err != nil {
		return nil, err
	}
	jwks, err := os.ReadFile(jwksPath)
	if err != nil {
		return nil, err
	}
	store := inmem.NewFromObject(map[string]any{"jwks": string(jwks)})
	query := "data." + strings.ReplaceAll(strings.Trim(decision, "/"), "/", ".")
	// Prepared once, as the plugin does (CreatePreparedQueryOnce).
	prepared, err := rego.New(
		rego.Query(query),
		rego.Module(policyPath, string(policy)),
		rego.Store(store),
		rego.EnablePrintStatements(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	// OPA's caching config as the runtime builds it from an empty `caching` section (io_jwt
	// off, io_jwt_keys on), optionally with the io_jwt cache turned on.
	var raw []byte
	if jwtCacheEntries > 0 {
		raw = fmt.Appendf(nil, `{"inter_query_builtin_value_cache":{"named":{"io_jwt":{"max_num_entries":%d}}}}`, jwtCacheEntries)
	}
	config, err := cache.ParseCachingConfig(raw)
	if err != nil {
		return nil, err
	}
	return &server{
		store:      store,
		query:      prepared,
		interQuery: cache.NewInterQueryCacheWithContext(ctx, config),
		valueCache: cache.NewInterQueryValueCache(ctx, config),
	}, nil
}

// Check decides one request: the CheckRequest as the plugin's input document, one evaluation
// of the prepared query in a read transaction, and the plugin's answer for its result object.
func (s *server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	m := metrics.New()
	m.Timer(metrics.ServerHandler).Start()
	defer m.Timer(metrics.ServerHandler).Stop()
	_ = decisionID() // the plugin makes one per request (for decision logs, off here)

	txn, err := s.store.NewTransaction(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	defer s.store.Abort(ctx, txn)

	input, err := requestToInput(req)
	if err != nil {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED), Message: err.Error()},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_BadRequest},
				Body:   err.Error(),
			}},
		}, nil
	}
	value, err := ast.InterfaceToValue(input)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	rs, err := s.query.Eval(ctx,
		rego.EvalParsedInput(value),
		rego.EvalTransaction(txn),
		rego.EvalMetrics(m),
		rego.EvalInterQueryBuiltinCache(s.interQuery),
		rego.EvalInterQueryBuiltinValueCache(s.valueCache),
	)
	switch {
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	case len(rs) != 1 || len(rs[0].Expressions) != 1:
		return nil, status.Error(codes.Internal, "undefined decision")
	}
	return response(rs[0].Expressions[0].Value)
}

// response is the plugin's CheckResponse for a decision: a boolean, or an object with
// `allowed`, `headers` (to the upstream on allow, to the client on deny), `http_status` and
// `body` (deny). The decision's other members (headers to remove, dynamic metadata, query
// parameters) are not used by this benchmark's policy and are not read.
func response(decision any) (*authv3.CheckResponse, error) {
	var allowed bool
	var object map[string]any
	switch d := decision.(type) {
	case bool:
		allowed = d
	case map[string]any:
		object = d
		a, ok := d["allowed"].(bool)
		if !ok {
			return nil, status.Error(codes.Internal, "the decision's `allowed` is not a boolean")
		}
		allowed = a
	default:
		return nil, status.Error(codes.Internal, fmt.Sprintf("unsupported decision type %T", decision))
	}
	resp := &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED)}}
	if allowed {
		resp.Status.Code = int32(code.Code_OK)
	}
	if object == nil {
		return resp, nil
	}
	headers, err := headerOptions(object["headers"])
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if allowed {
		resp.HttpResponse = &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: headers}}
		return resp, nil
	}
	denied := &authv3.DeniedHttpResponse{Headers: headers, Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}
	if body, ok := object["body"].(string); ok {
		denied.Body = body
	}
	if s, ok := object["http_status"].(interface{ String() string }); ok {
		var n int32
		if _, err := fmt.Sscan(s.String(), &n); err == nil {
			denied.Status.Code = typev3.StatusCode(n)
		}
	}
	resp.HttpResponse = &authv3.CheckResponse_DeniedResponse{DeniedResponse: denied}
	return resp, nil
}

// headerOptions turns a decision's `headers` object into Envoy header options (sorted by
// name so the answer is deterministic; a list value gives one option per element).
func headerOptions(value any) ([]*corev3.HeaderValueOption, error) {
	if value == nil {
		return nil, nil
	}
	object, ok := value.(map[string]any)
	if !ok {
		return nil, errors.New("the decision's `headers` is not an object")
	}
	names := make([]string, 0, len(object))
	for name := range object {
		names = append(names, name)
	}
	sort.Strings(names)
	var options []*corev3.HeaderValueOption
	for _, name := range names {
		switch v := object[name].(type) {
		case string:
			options = append(options, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, Value: v}})
		case []any:
			for _, item := range v {
				s, ok := item.(string)
				if !ok {
					return nil, fmt.Errorf("header %q: not a string", name)
				}
				options = append(options, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, Value: s}})
			}
		default:
			return nil, fmt.Errorf("header %q: not a string or a list of strings", name)
		}
	}
	return options, nil
}

// requestToInput builds the plugin's input document: every set field of the CheckRequest
// under its JSON name, then version, parsed_path, parsed_query, and (no body parsing for a
// request without a body content type) parsed_body null and truncated_body false.
func requestToInput(req *authv3.CheckRequest) (map[string]any, error) {
	input := messageToMap(req.ProtoReflect())
	input["version"] = v3Version
	rawPath, rawQuery, _ := strings.Cut(req.GetAttributes().GetRequest().GetHttp().GetPath(), "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, err
	}
	input["parsed_path"] = strings.Split(strings.TrimLeft(decoded, "/"), "/")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, err
	}
	parsedQuery := make(map[string]any, len(query))
	for k, v := range query {
		parsedQuery[k] = v
	}
	input["parsed_query"] = parsedQuery
	input["parsed_body"] = nil
	input["truncated_body"] = false
	if principal := req.GetAttributes().GetSource().GetPrincipal(); principal != "" {
		input["source_principal"] = principal
	}
	return input, nil
}

// messageToMap walks a protobuf message by reflection into maps keyed by JSON field names
// (google.protobuf.Struct values become their plain map form).
func messageToMap(msg protoreflect.Message) map[string]any {
	if asMap, ok := msg.Interface().(interface{ AsMap() map[string]any }); ok {
		return asMap.AsMap()
	}
	out := make(map[string]any, msg.Descriptor().Fields().Len())
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			m := v.Map()
			mm := make(map[string]any, m.Len())
			m.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mm[k.String()] = fieldValue(fd.MapValue(), mv)
				return true
			})
			out[fd.JSONName()] = mm
		case fd.IsList():
			l := v.List()
			items := make([]any, l.Len())
			for i := range l.Len() {
				items[i] = fieldValue(fd, l.Get(i))
			}
			out[fd.JSONName()] = items
		default:
			out[fd.JSONName()] = fieldValue(fd, v)
		}
		return true
	})
	return out
}

func fieldValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		return messageToMap(v.Message())
	}
	return v.Interface()
}

// decisionID is a random version 4 UUID, as the plugin gives each decision.
func decisionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
