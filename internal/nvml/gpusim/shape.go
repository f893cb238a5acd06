package gpusim

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// checkShape walks a decoded state file (JSON-shaped: maps, slices,
// json.Number, strings, bools) against the State type and reports unknown
// fields and wrong types with the full path of the field, which the JSON
// decoder alone cannot do (it names neither list indexes nor, for unknown
// fields, where they are).
func checkShape(v any) []FieldError {
	var w shapeWalker
	w.walk(reflect.TypeFor[State](), v, "")
	return w.probs
}

type shapeWalker struct {
	probs []FieldError
}

func (w *shapeWalker) add(path, format string, args ...any) {
	w.probs = append(w.probs, FieldError{Field: path, Problem: fmt.Sprintf(format, args...)})
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (w *shapeWalker) walk(t reflect.Type, v any, path string) {
	if v == nil {
		return // null leaves the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeFor[Value]():
		switch x := v.(type) {
		case json.Number:
		case map[string]any:
			if p, _ := x["pattern"].(string); p == "" {
				// The other fields mean nothing without one, and would be
				// lost when the state is written back.
				w.add(path, "an object needs a pattern (sine, ramp or square); a constant is a plain number")
				return
			}
			w.walk(reflect.TypeFor[valueFields](), x, path)
		default:
			w.add(path, "want a number or {pattern, min, max, period}, got %s", describe(v))
		}
		return
	case reflect.TypeFor[Duration]():
		s, ok := v.(string)
		if !ok {
			w.add(path, "want a duration such as \"90s\" or \"2m\", got %s", describe(v))
			return
		}
		if _, err := time.ParseDuration(s); err != nil {
			w.add(path, "want a duration such as \"90s\" or \"2m\": %v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			w.add(path, "want an object, got %s", describe(v))
			return
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			f, ok := fields[k]
			if !ok {
				w.add(joinPath(path, k), "unknown field (known: %s)", strings.Join(sortedKeys(fields), ", "))
				continue
			}
			w.walk(f, m[k], joinPath(path, k))
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			w.add(path, "want a list, got %s", describe(v))
			return
		}
		for i, e := range list {
			w.walk(t.Elem(), e, fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			w.add(path, "want a string, got %s (quote it)", describe(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			w.add(path, "want true or false, got %s", describe(v))
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, ok := v.(json.Number)
		if !ok {
			w.add(path, "want a whole number, got %s", describe(v))
			return
		}
		i, err := strconv.ParseInt(n.String(), 10, t.Bits())
		if err != nil {
			w.add(path, "want a whole number, got %s", n)
			return
		}
		if t.Kind() == reflect.Int && (i > math.MaxInt32 || i < math.MinInt32) {
			w.add(path, "%d is out of range", i)
		}
	case reflect.Uint, reflect.Uint64, reflect.Uint32:
		n, ok := v.(json.Number)
		if !ok {
			w.add(path, "want a whole number, got %s", describe(v))
			return
		}
		if _, err := strconv.ParseUint(n.String(), 10, t.Bits()); err != nil {
			w.add(path, "want a whole number from 0 to %d, got %s", uint64(1)<<t.Bits()-1, n)
		}
	case reflect.Float64:
		if _, ok := v.(json.Number); !ok {
			w.add(path, "want a number, got %s", describe(v))
		}
	}
}

// jsonFields maps a struct's JSON field names to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = f.Type
	}
	return fields
}

func sortedKeys(m map[string]reflect.Type) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// describe names the kind of a decoded JSON value for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("%v", x)
	case json.Number:
		return "the number " + x.String()
	}
	return fmt.Sprintf("%T", v)
}
