package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/gpulet/gpulet/internal/atomicfile"
)

// checkpointVersion is the checkpoint format this build writes and reads.
const checkpointVersion = 1

// ErrCorrupt means the checkpoint exists but cannot be trusted: it is
// truncated, not JSON, fails its checksum, or has an unknown version.
var ErrCorrupt = errors.New("corrupt checkpoint")

// checkpoint is the file's format. Checksum covers the content of Records,
// so a truncated or bit-flipped file is caught even when it still parses.
type checkpoint struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Records  json.RawMessage `json:"records"`
}

type store struct {
	path string
}

func (s *store) load() ([]Record, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", s.path, err)
	}
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("checkpoint %s: %s: %w", s.path, fmt.Sprintf(format, args...), ErrCorrupt)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, corrupt("file is empty")
	}
	var cp checkpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, corrupt("not valid JSON (truncated?): %v", err)
	}
	if cp.Version != checkpointVersion {
		return nil, corrupt("version %d, this gpulet reads version %d", cp.Version, checkpointVersion)
	}
	if got := checksum(cp.Records); got != cp.Checksum {
		return nil, corrupt("checksum mismatch (file says %q, contents hash to %q)", cp.Checksum, got)
	}
	var records []Record
	if err := json.Unmarshal(cp.Records, &records); err != nil {
		return nil, corrupt("records: %v", err)
	}
	for i, r := range records {
		if r.ID == "" || len(r.Resources) == 0 {
			return nil, corrupt("records[%d]: missing id or resources", i)
		}
	}
	return records, nil
}

func (s *store) save(records []Record) error {
	if records == nil {
		records = []Record{}
	}
	raw, err := json.Marshal(records)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	data, err := json.Marshal(checkpoint{Version: checkpointVersion, Checksum: checksum(raw), Records: raw})
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	return atomicfile.Write(s.path, data, 0o600)
}

// checksum hashes the compact form of a JSON value, so indentation (ours,
// or a person's pretty-printing) does not matter but any change of content
// does.
func checksum(b []byte) string {
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return "invalid"
	}
	sum := sha256.Sum256(compact.Bytes())
	return "sha256:" + hex.EncodeToString(sum[:])
}

// SetAside renames a checkpoint that cannot be read to
// "<path>.corrupt-<time>", so gpulet can start afresh without losing it,
// and returns the new name.
func SetAside(path string, now time.Time) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("set corrupt checkpoint %s aside: %w", path, err)
	}
	return aside, nil
}
