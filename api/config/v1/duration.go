package v1

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration written in the config file as a Go duration
// string such as "30s", "5m" or "1h30m", and written back the same way.
type Duration struct {
	time.Duration
}

// MarshalJSON writes the duration as a string, for example "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

// UnmarshalJSON reads a duration string. A bare number is refused: "30" could
// mean seconds or nanoseconds, and the file should say which.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("must be a duration string such as \"30s\", got %s", truncate(string(b)))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration string such as \"30s\", got %q", truncate(s))
	}
	d.Duration = v
	return nil
}

// truncate shortens s for an error message, so that a huge input does not
// make a huge error.
func truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
