package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	goyaml "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// decode turns a YAML or JSON file into a Config without defaults or
// validation. It first walks the document against the schema to apply the
// unknown-field policy (see the package documentation) and to check value
// types with precise field paths, then decodes it.
func decode(data []byte) (*Config, []string, error) {
	if err := singleDocument(data); err != nil {
		return nil, nil, err
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid YAML: %w", err)
	}
	var tree any
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&tree); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("invalid YAML: %w", err)
	}
	if tree == nil {
		return &Config{}, nil, nil
	}
	var w walker
	w.value(tree, reflect.TypeFor[Config](), "", false)
	if len(w.errs) > 0 {
		return nil, nil, errors.Join(w.errs...)
	}
	var c Config
	if err := yaml.Unmarshal(data, &c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, nil, fmt.Errorf("%s: must be %s, got %s", te.Field, te.Type, te.Value)
		}
		return nil, nil, err
	}
	return &c, w.warnings, nil
}

// singleDocument fails when data holds more than one YAML document with
// content: the YAML to JSON conversion would read the first and silently
// drop the rest.
func singleDocument(data []byte) error {
	dec := goyaml.NewDecoder(bytes.NewReader(data))
	for n := 0; ; n++ {
		var doc any
		err := dec.Decode(&doc)
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return fmt.Errorf("invalid YAML: %w", err)
		case n > 0 && doc != nil:
			return fmt.Errorf("invalid YAML: document %d: gpulet reads one YAML document per file", n+1)
		}
	}
}

// walker checks a decoded JSON document against the Go types it will be
// decoded into, collecting errors and warnings with their field paths.
type walker struct {
	errs     []error
	warnings []string
}

var (
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	gpuletType      = reflect.TypeFor[Gpulet]()
)

// value checks v, found at path, against type t. owned is true inside the
// gpulet section, where unknown fields are errors.
func (w *walker) value(v any, t reflect.Type, path string, owned bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil {
		return // null leaves the field unset
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		// Run the type's own decoding now, so that its error gets a path.
		raw, err := json.Marshal(v)
		if err == nil {
			err = reflect.New(t).Interface().(json.Unmarshaler).UnmarshalJSON(raw)
		}
		if err != nil {
			w.fail(path, err.Error())
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok && path == "" {
			w.fail(path, "must be a mapping of settings, got "+describe(v))
			return
		}
		if !ok {
			w.fail(path, "must be a mapping, got "+describe(v))
			return
		}
		w.object(obj, t, path, owned || t == gpuletType)
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			w.fail(path, "must be a list, got "+describe(v))
			return
		}
		for i, e := range list {
			w.value(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), owned)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			w.fail(path, "must be true or false, got "+describe(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); !ok || err != nil {
			w.fail(path, "must be an integer, got "+describe(v))
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(json.Number)
		if _, err := strconv.ParseUint(string(n), 10, t.Bits()); !ok || err != nil {
			w.fail(path, "must be an integer >= 0, got "+describe(v))
		}
	case reflect.Float32, reflect.Float64:
		n, ok := v.(json.Number)
		if _, err := strconv.ParseFloat(string(n), t.Bits()); !ok || err != nil {
			w.fail(path, "must be a number, got "+describe(v))
		}
	case reflect.String:
		// YAML scalars such as 1 or true are decoded into strings as
		// written; only lists and mappings are wrong.
		switch v.(type) {
		case map[string]any, []any:
			w.fail(path, "must be a string, got "+describe(v))
		}
	}
}

// object checks the keys of a mapping decoded into struct type t.
func (w *walker) object(obj map[string]any, t reflect.Type, path string, owned bool) {
	fields := jsonFields(t)
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		p := k
		if path != "" {
			p = path + "." + k
		}
		if ft, ok := fields[k]; ok {
			w.value(obj[k], ft, p, owned)
			continue
		}
		switch near := nearMiss(k, fields); {
		case near != "":
			w.fail(p, fmt.Sprintf("unknown field, did you mean %q?", near))
		case owned:
			w.fail(p, "unknown field")
		default:
			w.warnings = append(w.warnings, p+": unknown field, ignored: not part of NVIDIA's v1 schema as gpulet knows it")
		}
	}
}

// fail records an error at path.
func (w *walker) fail(path, msg string) {
	if path == "" {
		w.errs = append(w.errs, errors.New(msg))
		return
	}
	w.errs = append(w.errs, fmt.Errorf("%s: %s", path, msg))
}

// jsonFields maps the JSON names of struct type t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

// nearMiss returns the known field that key is most likely a typo of: the
// same name in another case, or one edit (insertion, deletion, substitution
// or swap of neighbours) away, ignoring case. It returns "" when there is
// none.
func nearMiss(key string, fields map[string]reflect.Type) string {
	lk := strings.ToLower(key)
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		// EqualFold catches Unicode case folds such as "ſ" for "s", which
		// encoding/json would match to the field.
		if strings.EqualFold(key, name) || editDistance(lk, strings.ToLower(name)) <= 1 {
			return name
		}
	}
	return ""
}

// editDistance is the optimal string alignment distance between a and b
// (Levenshtein plus swaps of neighbours), computed over bytes and cut off
// early when the lengths alone differ by more than one.
func editDistance(a, b string) int {
	if d := len(a) - len(b); d > 1 || d < -1 {
		return 2
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// describe names the kind of a decoded JSON value for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("%q", truncate(v))
	case json.Number:
		return truncate(string(v))
	default:
		return fmt.Sprint(v)
	}
}

// readLimited reads at most MaxFileSize bytes from r, failing when there are
// more.
func readLimited(r io.Reader, source string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", source, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: more than the %d byte limit", source, MaxFileSize)
	}
	return data, nil
}
