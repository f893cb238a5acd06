package gpusim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Pattern names a Value may follow over time.
const (
	// PatternSine swings between Min and Max and back once per Period,
	// starting at the midpoint.
	PatternSine = "sine"
	// PatternRamp climbs linearly from Min to Max over each Period, then
	// drops back to Min.
	PatternRamp = "ramp"
	// PatternSquare holds Max for the first half of each Period and Min for
	// the second.
	PatternSquare = "square"
)

// Value is a telemetry reading that is either a constant or a pattern in
// time. In a state file a constant is written as a bare number
// (`powerW: 300`) and a pattern as an object
// (`powerW: {pattern: sine, min: 100, max: 600, period: 2m, offset: 30s}`).
// Patterns are anchored at the Unix epoch (shifted by Offset), so a given
// clock reading always yields the same value.
type Value struct {
	// Constant is the value when Pattern is empty.
	Constant float64
	// Pattern is "", "sine", "ramp" or "square".
	Pattern string
	// Min and Max bound a pattern.
	Min, Max float64
	// Period is the length of one cycle of a pattern.
	Period Duration
	// Offset shifts a pattern later in time, so devices can run out of
	// step.
	Offset Duration
}

// Const returns a constant Value.
func Const(v float64) *Value { return &Value{Constant: v} }

// valueFields is Value's object form in a state file.
type valueFields struct {
	Pattern string   `json:"pattern"`
	Min     float64  `json:"min"`
	Max     float64  `json:"max"`
	Period  Duration `json:"period"`
	Offset  Duration `json:"offset,omitempty"`
}

// MarshalJSON writes a constant as a number and a pattern as an object.
func (v Value) MarshalJSON() ([]byte, error) {
	if v.Pattern == "" {
		return json.Marshal(v.Constant)
	}
	return json.Marshal(valueFields{Pattern: v.Pattern, Min: v.Min, Max: v.Max, Period: v.Period, Offset: v.Offset})
}

// UnmarshalJSON reads a number or an object; unknown object fields are
// errors.
func (v *Value) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] != '{' {
		var c float64
		if err := json.Unmarshal(data, &c); err != nil {
			return fmt.Errorf("want a number or {pattern, min, max, period}: %w", err)
		}
		*v = Value{Constant: c}
		return nil
	}
	var f valueFields
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return err
	}
	*v = Value{Pattern: f.Pattern, Min: f.Min, Max: f.Max, Period: f.Period, Offset: f.Offset}
	return nil
}

// validate checks the value against the inclusive range [lo, hi].
func (v Value) validate(lo, hi float64) []string {
	inRange := func(x float64) bool { return !math.IsNaN(x) && x >= lo && x <= hi }
	var probs []string
	switch v.Pattern {
	case "":
		if !inRange(v.Constant) {
			probs = append(probs, fmt.Sprintf("%v is outside [%v, %v]", v.Constant, lo, hi))
		}
	case PatternSine, PatternRamp, PatternSquare:
		if !inRange(v.Min) || !inRange(v.Max) {
			probs = append(probs, fmt.Sprintf("min %v and max %v must lie in [%v, %v]", v.Min, v.Max, lo, hi))
		}
		if v.Min > v.Max {
			probs = append(probs, fmt.Sprintf("min %v is above max %v", v.Min, v.Max))
		}
		if v.Period.Duration <= 0 {
			probs = append(probs, "a pattern needs a positive period, e.g. 2m")
		}
		if v.Offset.Duration < 0 {
			probs = append(probs, "offset must not be negative")
		}
	default:
		probs = append(probs, fmt.Sprintf("unknown pattern %q (want %s, %s or %s)", v.Pattern, PatternSine, PatternRamp, PatternSquare))
	}
	return probs
}

// phase returns where t falls in the pattern's cycle: the number of whole
// periods since the epoch and the seconds into the current one.
func (v Value) phase(t time.Time) (cycles int64, into float64) {
	p := int64(v.Period.Duration)
	ns := t.UnixNano() - int64(v.Offset.Duration)
	cycles = ns / p
	rem := ns % p
	if rem < 0 {
		rem += p
		cycles--
	}
	return cycles, float64(rem) / 1e9
}

// At returns the value at time t.
func (v Value) At(t time.Time) float64 {
	if v.Pattern == "" || v.Period.Duration <= 0 {
		return v.Constant
	}
	_, x := v.phase(t)
	p := v.Period.Seconds()
	switch v.Pattern {
	case PatternSine:
		mid, amp := (v.Min+v.Max)/2, (v.Max-v.Min)/2
		return mid + amp*math.Sin(2*math.Pi*x/p)
	case PatternRamp:
		return v.Min + (v.Max-v.Min)*x/p
	case PatternSquare:
		if x < p/2 {
			return v.Max
		}
		return v.Min
	}
	return v.Constant
}

// Integral returns the integral of the value over [a, b] in value-seconds
// (for a power in watts: joules). It is exact for every pattern.
func (v Value) Integral(a, b time.Time) float64 {
	if !b.After(a) {
		return 0
	}
	if v.Pattern == "" || v.Period.Duration <= 0 {
		return v.Constant * b.Sub(a).Seconds()
	}
	p := v.Period.Seconds()
	ca, xa := v.phase(a)
	cb, xb := v.phase(b)
	// One full cycle integrates to the mean times the period for sine and
	// ramp, and to (max+min)/2 * period for square as well.
	mean := (v.Min + v.Max) / 2
	whole := float64(cb-ca) * mean * p
	return whole + v.partial(xb, p) - v.partial(xa, p)
}

// partial integrates one cycle from its start to x seconds into it.
func (v Value) partial(x, p float64) float64 {
	switch v.Pattern {
	case PatternSine:
		mid, amp := (v.Min+v.Max)/2, (v.Max-v.Min)/2
		return mid*x + amp*p/(2*math.Pi)*(1-math.Cos(2*math.Pi*x/p))
	case PatternRamp:
		return v.Min*x + (v.Max-v.Min)*x*x/(2*p)
	case PatternSquare:
		half := p / 2
		return v.Max*math.Min(x, half) + v.Min*math.Max(0, x-half)
	}
	return v.Constant * x
}

// Duration is a time.Duration written as a Go duration string ("90s",
// "2m") in a state file.
type Duration struct {
	time.Duration
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string such as "2m30s".
func (d *Duration) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("want a duration such as \"90s\" or \"2m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}
