#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace sink for the load benchmark: accepts and counts exported spans.

Usage: otlp-sink.py PORT   (listens on 127.0.0.1:PORT until SIGTERM; prints the span count)
"""
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port = int(sys.argv[1])
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1)
    print(f"otlp-sink: received {sink.spans} spans", file=sys.stderr)


if __name__ == "__main__":
    main()
