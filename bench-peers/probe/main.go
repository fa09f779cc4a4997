// Command probe sends Envoy ext_authz CheckRequests to a server and prints what each answer
// said, as JSON: scripts/bench_peers.py checks every system's allow/deny answers with it before
// timing anything. The requests are built like openloop's (bench-load/src/main.rs): the same
// HTTP attributes and headers, with `authorization: Bearer TOKEN` unless a case has no token.
//
//	probe -target 127.0.0.1:9191 -wait 20s < cases.json
//
// Input: a JSON array of {"name", "method", "path", "token"} (token null or absent: no
// authorization header). Output: a JSON array of {"name", "rpc_error", "grpc_code",
// "allowed", "http_status", "headers"}; allowed is what Envoy does with the answer (the
// CheckResponse status is OK), headers are the upstream headers of an allow, or the client
// headers of a denial.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type testCase struct {
	Name   string  `json:"name"`
	Method string  `json:"method"`
	Path   string  `json:"path"`
	Token  *string `json:"token"`
}

type answer struct {
	Name       string            `json:"name"`
	RPCError   string            `json:"rpc_error"`
	GRPCCode   int32             `json:"grpc_code"`
	Allowed    bool              `json:"allowed"`
	HTTPStatus int32             `json:"http_status"`
	Headers    map[string]string `json:"headers"`
}

func main() {
	target := flag.String("target", "", "host:port of the ext_authz gRPC server")
	wait := flag.Duration("wait", 0, "retry the first request until it gets an answer, for at most this long")
	flag.Parse()
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		log.Fatalf("probe: reading the cases from stdin: %v", err)
	}
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("probe: %v", err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)

	answers := make([]answer, 0, len(cases))
	deadline := time.Now().Add(*wait)
	for i, c := range cases {
		for {
			a := check(client, c)
			if i == 0 && a.RPCError != "" && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			answers = append(answers, a)
			break
		}
	}
	out, _ := json.MarshalIndent(answers, "", " ")
	fmt.Println(string(out))
}

func check(client authv3.AuthorizationClient, c testCase) answer {
	headers := map[string]string{
		":authority": "bench.example",
		":method":    c.Method,
		":path":      c.Path,
		"accept":     "application/json",
		"user-agent": "openloop",
	}
	if c.Token != nil {
		headers["authorization"] = "Bearer " + *c.Token
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method:  c.Method,
			Path:    c.Path,
			Host:    "bench.example",
			Headers: headers,
		}},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a := answer{Name: c.Name, Headers: map[string]string{}}
	resp, err := client.Check(ctx, req)
	if err != nil {
		a.RPCError = err.Error()
		a.GRPCCode = int32(status.Code(err))
		return a
	}
	a.GRPCCode = resp.GetStatus().GetCode()
	a.Allowed = a.GRPCCode == 0
	if ok := resp.GetOkResponse(); ok != nil {
		for _, h := range ok.GetHeaders() {
			a.Headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	}
	if denied := resp.GetDeniedResponse(); denied != nil {
		a.HTTPStatus = int32(denied.GetStatus().GetCode())
		for _, h := range denied.GetHeaders() {
			a.Headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	}
	return a
}
