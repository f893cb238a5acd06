package gpusim

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
)

// encodeState writes a state file for people: fields in schema order (a
// generic YAML encoder sorts them), small values in flow style, one device
// per list entry, defaults left out. Parse reads it back to the same state.
func encodeState(st *State) []byte {
	var b strings.Builder
	top := reflect.ValueOf(st).Elem()
	for i := range top.NumField() {
		name, omitEmpty := jsonName(top.Type().Field(i))
		fv := top.Field(i)
		if skip(fv, omitEmpty) {
			continue
		}
		if name != "devices" {
			fmt.Fprintf(&b, "%s: %s\n", name, flow(fv))
			continue
		}
		b.WriteString("devices:\n")
		for j := range fv.Len() {
			writeDevice(&b, fv.Index(j))
		}
	}
	return []byte(b.String())
}

// writeDevice writes one devices entry: scalar and small fields flow, the
// lists (mig, xids, processes) as block lists of flow items.
func writeDevice(b *strings.Builder, d reflect.Value) {
	prefix := "- "
	for i := range d.NumField() {
		name, omitEmpty := jsonName(d.Type().Field(i))
		fv := d.Field(i)
		if skip(fv, omitEmpty) {
			continue
		}
		if fv.Kind() == reflect.Slice {
			fmt.Fprintf(b, "%s%s:\n", prefix, name)
			for j := range fv.Len() {
				fmt.Fprintf(b, "  - %s\n", flow(fv.Index(j)))
			}
		} else {
			fmt.Fprintf(b, "%s%s: %s\n", prefix, name, flow(fv))
		}
		prefix = "  "
	}
}

// shortDuration writes 5m rather than time's 5m0s.
func shortDuration(d Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// skip says whether a field is left out: nil, or empty and omitempty.
func skip(v reflect.Value, omitEmpty bool) bool {
	switch v.Kind() {
	case reflect.Pointer, reflect.Slice:
		if v.IsNil() {
			return true
		}
	}
	return omitEmpty && (v.IsZero() || v.Kind() == reflect.Slice && v.Len() == 0)
}

func jsonName(f reflect.StructField) (string, bool) {
	name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name, opts == "omitempty"
}

// flow renders a value in YAML flow style.
func flow(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "null"
		}
		v = v.Elem()
	}
	switch x := v.Interface().(type) {
	case Value:
		if x.Pattern == "" {
			return strconv.FormatFloat(x.Constant, 'g', -1, 64)
		}
		s := fmt.Sprintf("{pattern: %s, min: %s, max: %s, period: %s", scalar(x.Pattern),
			strconv.FormatFloat(x.Min, 'g', -1, 64), strconv.FormatFloat(x.Max, 'g', -1, 64), shortDuration(x.Period))
		if x.Offset.Duration != 0 {
			s += ", offset: " + shortDuration(x.Offset)
		}
		return s + "}"
	case Duration:
		return shortDuration(x)
	}
	switch v.Kind() {
	case reflect.Struct:
		var parts []string
		for i := range v.NumField() {
			name, omitEmpty := jsonName(v.Type().Field(i))
			if skip(v.Field(i), omitEmpty) {
				continue
			}
			parts = append(parts, name+": "+flow(v.Field(i)))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = flow(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.String:
		return scalar(v.String())
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	}
	return "null"
}

var plainRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+/-]*$`)

// yamlWords are plain scalars YAML 1.1 reads as something other than a
// string.
var yamlWords = map[string]bool{
	"y": true, "yes": true, "n": true, "no": true, "true": true, "false": true,
	"on": true, "off": true, "null": true,
}

// scalar writes a string plain when YAML reads it back as that string,
// double-quoted (JSON quoting, which YAML accepts) otherwise.
func scalar(s string) string {
	_, errF := strconv.ParseFloat(s, 64)
	_, errI := strconv.ParseInt(s, 0, 64)
	if plainRE.MatchString(s) && errF != nil && errI != nil && !yamlWords[strings.ToLower(s)] {
		return s
	}
	q, _ := json.Marshal(s)
	return string(q)
}
