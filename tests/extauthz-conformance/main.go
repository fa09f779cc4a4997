// Command extauthz-conformance runs data-driven Envoy ext_authz (v3) Check
// cases against a running server, using the go-control-plane generated client.
//
//	go run ./tests/extauthz-conformance -addr 127.0.0.1:50051 -cases cases.json
//
// One line per case ("ok   NAME" or "FAIL NAME: ..."), then "N passed, M failed".
// Exit 0 when nothing failed, 1 when a case failed, 2 on usage or connection errors.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("extauthz-conformance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "server address host:port (plaintext gRPC)")
	casesPath := fs.String("cases", "", "case file (JSON); - for stdin")
	dialTimeout := fs.Duration("dial-timeout", 5*time.Second, "time to wait for the connection to become ready")
	callTimeout := fs.Duration("timeout", 5*time.Second, "deadline of each Check call")
	runFilter := fs.String("run", "", "only run cases whose name matches this regexp")
	verbose := fs.Bool("v", false, "on failure, print the request and response (protojson) to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || *casesPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: extauthz-conformance -addr HOST:PORT -cases FILE.json [-run REGEXP] [-v] [-timeout 5s] [-dial-timeout 5s]")
		return 2
	}
	var filter *regexp.Regexp
	if *runFilter != "" {
		re, err := regexp.Compile(*runFilter)
		if err != nil {
			fmt.Fprintf(stderr, "bad -run: %v\n", err)
			return 2
		}
		filter = re
	}

	cases, err := loadCases(*casesPath)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 2
	}

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 2
	}
	defer conn.Close()
	if err := waitReady(conn, *dialTimeout); err != nil {
		fmt.Fprintf(stderr, "error: cannot connect to %s: %v\n", *addr, err)
		return 2
	}
	client := authv3.NewAuthorizationClient(conn)

	passed, failed := 0, 0
	for i, tc := range cases {
		if filter != nil && !filter.MatchString(tc.Name) {
			continue
		}
		req := buildCheckRequest(i, tc.Request)
		ctx, cancel := context.WithTimeout(context.Background(), *callTimeout)
		if tc.Request.Traceparent != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", tc.Request.Traceparent)
		}
		resp, err := client.Check(ctx, req)
		cancel()

		var fails []string
		if err != nil {
			fails = []string{fmt.Sprintf("RPC failed (Check must always answer OK): %v", err)}
		} else {
			fails = evaluate(tc.Expect, resp)
		}
		if len(fails) == 0 {
			passed++
			fmt.Fprintf(stdout, "ok   %s\n", tc.Name)
			continue
		}
		failed++
		fmt.Fprintf(stdout, "FAIL %s: %s\n", tc.Name, oneLine(strings.Join(fails, "; ")))
		if *verbose {
			opts := protojson.MarshalOptions{Multiline: true, Indent: "  "}
			fmt.Fprintf(stderr, "--- %s request:\n%s\n", tc.Name, opts.Format(req))
			if resp != nil {
				fmt.Fprintf(stderr, "--- %s response:\n%s\n", tc.Name, opts.Format(resp))
			}
		}
	}
	if passed+failed == 0 {
		fmt.Fprintf(stderr, "error: -run %q matched no case\n", *runFilter)
		return 2
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// waitReady connects and waits until the channel is READY or the timeout
// passes (a server still starting up gets the whole timeout).
func waitReady(conn *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.Shutdown:
			return fmt.Errorf("connection shut down")
		case connectivity.Idle:
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, s) {
			return fmt.Errorf("not ready after %s (last state %s)", timeout, s)
		}
	}
}

// oneLine keeps a FAIL report on one line whatever the server sent.
func oneLine(s string) string {
	r := strings.NewReplacer("\r", `\r`, "\n", `\n`, "\x00", `\x00`)
	return r.Replace(s)
}
