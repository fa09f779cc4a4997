package examplesvalidation

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"
)

// The ext_authz timeout every example and docs/deployment.md recommend.
const recommendedTimeout = "0.5s"

// repoPath returns a path relative to the repository root.
func repoPath(t *testing.T, rel string) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate this source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", rel)
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(repoPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// yamlToJSON converts YAML to JSON, refusing duplicate keys.
func yamlToJSON(t *testing.T, what string, data []byte) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return j
}

// unmarshalStrict decodes JSON into msg with protojson: unknown fields are errors and
// every google.protobuf.Any must name a type linked into this test binary.
var unmarshalOpts = protojson.UnmarshalOptions{DiscardUnknown: false}

func unmarshalStrict(t *testing.T, what string, data []byte, msg proto.Message) {
	t.Helper()
	if err := unmarshalOpts.Unmarshal(data, msg); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// subDocument re-encodes one value of a generic YAML/JSON document as JSON.
func subDocument(t *testing.T, what string, value any) []byte {
	t.Helper()
	j, err := yaml.Marshal(value)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return yamlToJSON(t, what, j)
}

type validatorAll interface{ ValidateAll() error }
type validator interface{ Validate() error }

// validateTree runs the generated validation (protoc-gen-validate) of msg and of every
// message below it, unpacking every Any on the way (an unresolvable Any is an error).
// It returns one line per problem, with the field path.
func validateTree(msg proto.Message, path string) []string {
	var problems []string
	switch v := msg.(type) {
	case validatorAll:
		if err := v.ValidateAll(); err != nil {
			problems = append(problems, fmt.Sprintf("%s (%s): %v", path, msg.ProtoReflect().Descriptor().FullName(), err))
		}
	case validator:
		if err := v.Validate(); err != nil {
			problems = append(problems, fmt.Sprintf("%s (%s): %v", path, msg.ProtoReflect().Descriptor().FullName(), err))
		}
	}
	if a, ok := msg.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return append(problems, fmt.Sprintf("%s: Any %s: %v", path, a.GetTypeUrl(), err))
		}
		return append(problems, validateTree(inner, path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">")...)
	}
	msg.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			list := v.List()
			for i := 0; i < list.Len(); i++ {
				problems = append(problems, validateTree(list.Get(i).Message().Interface(), fmt.Sprintf("%s[%d]", name, i))...)
			}
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				problems = append(problems, validateTree(mv.Message().Interface(), fmt.Sprintf("%s[%v]", name, k.Interface()))...)
				return true
			})
		default:
			problems = append(problems, validateTree(v.Message().Interface(), name)...)
		}
		return true
	})
	return problems
}

// unpack unmarshals an Any into a new message of its type.
func unpack(t *testing.T, a *anypb.Any) proto.Message {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("Any %s: %v", a.GetTypeUrl(), err)
	}
	return m
}

func durationString(d *durationpb.Duration) string {
	if d == nil {
		return "<unset>"
	}
	return d.AsDuration().String()
}

// sameDuration compares a protobuf Duration with a protojson duration string like 0.5s.
func sameDuration(t *testing.T, d *durationpb.Duration, want string) bool {
	t.Helper()
	var w durationpb.Duration
	if err := protojson.Unmarshal([]byte(`"`+want+`"`), &w); err != nil {
		t.Fatal(err)
	}
	return d != nil && d.AsDuration() == w.AsDuration()
}

// documents splits a multi-document YAML file.
func documents(data []byte) [][]byte {
	var docs [][]byte
	for _, part := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(part)) > 0 {
			docs = append(docs, part)
		}
	}
	return docs
}
