package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/gpulet/gpulet/internal/atomicfile"
)

// The ledger keeps its durable (DRA) records in two files side by side:
//
//   - the snapshot, at the ledger's path: every record as of a sequence
//     number, written atomically (temporary file, fsync, rename, directory
//     fsync) and checksummed;
//   - the journal, at path + ".journal": the changes since, one line each,
//     appended and synced.
//
// A change costs one append and one sync, and the changes that arrive
// while a sync runs share the next one (group commit), where a rewrite of
// the whole file costs a sync of the file and one of its directory per
// change. The journal is folded into the snapshot when gpulet starts, when
// it stops, and when it grows past compactAfter.

// snapshotVersion is the snapshot format this build writes. Version 1
// (no sequence number) is still read.
const snapshotVersion = 2

// JournalSuffix is appended to the ledger's path to name its journal.
const JournalSuffix = ".journal"

// compactAfter is the journal size that makes the next commit rewrite the
// snapshot instead of appending.
const compactAfter = 256 << 10

// ErrCorrupt means the checkpoint exists but cannot be trusted: it is
// truncated, not JSON, fails its checksum, or has an unknown version.
var ErrCorrupt = errors.New("corrupt checkpoint")

// snapshot is the snapshot file's format. Checksum covers Seq and the
// content of Records, so a truncated or bit-flipped file is caught even
// when it still parses.
type snapshot struct {
	Version  int             `json:"version"`
	Seq      uint64          `json:"seq,omitempty"`
	Checksum string          `json:"checksum"`
	Records  json.RawMessage `json:"records"`
}

// change is one journal entry: a record put or an ID deleted, numbered.
type change struct {
	Seq    uint64  `json:"seq"`
	Put    *Record `json:"put,omitempty"`
	Delete string  `json:"delete,omitempty"`
}

// A journal line is "<crc32c of the JSON, 8 hex digits> <JSON>\n". A line
// without its newline is a write a crash cut short: it was never
// acknowledged, so it is dropped.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeChange(c change) ([]byte, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode journal entry %d: %w", c.Seq, err)
	}
	line := make([]byte, 0, len(data)+10)
	line = fmt.Appendf(line, "%08x ", crc32.Checksum(data, castagnoli))
	line = append(line, data...)
	return append(line, '\n'), nil
}

func decodeChange(line []byte) (change, error) {
	var c change
	sum, data, ok := bytes.Cut(line, []byte{' '})
	if !ok || len(sum) != 8 {
		return c, errors.New("no checksum")
	}
	want, err := strconv.ParseUint(string(sum), 16, 32)
	if err != nil {
		return c, errors.New("no checksum")
	}
	if got := crc32.Checksum(data, castagnoli); got != uint32(want) {
		return c, fmt.Errorf("checksum mismatch (line says %08x, contents hash to %08x)", want, got)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("not valid JSON: %w", err)
	}
	switch {
	case c.Seq == 0:
		return c, errors.New("no sequence number")
	case (c.Put == nil) == (c.Delete == ""):
		return c, errors.New("neither a put nor a delete")
	case c.Put != nil && (c.Put.ID == "" || len(c.Put.Resources) == 0):
		return c, errors.New("put without id or resources")
	}
	return c, nil
}

type store struct {
	path string
	// journal is open for appending once the store has been loaded.
	journal     *os.File
	journalSize int64
	// broken is set when an append fails: the journal's tail is unknown,
	// so the next commit rewrites the snapshot and empties the journal.
	broken bool
	// syncs counts journal appends, for tests.
	syncs int
	// beforeSync, set by tests, runs before each append.
	beforeSync func()
}

func (s *store) journalPath() string { return s.path + JournalSuffix }

// load reads the snapshot and replays the journal over it, and returns
// the records and the last sequence number.
func (s *store) load() (map[string]Record, uint64, error) {
	records, seq, err := s.loadSnapshot()
	if err != nil {
		return nil, 0, err
	}
	m := make(map[string]Record, len(records))
	for _, r := range records {
		m[r.ID] = r
	}
	seq, err = s.replay(m, seq)
	return m, seq, err
}

func (s *store) corrupt(file, format string, args ...any) error {
	return fmt.Errorf("checkpoint %s: %s: %w", file, fmt.Sprintf(format, args...), ErrCorrupt)
}

func (s *store) loadSnapshot() ([]Record, uint64, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read checkpoint %s: %w", s.path, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, 0, s.corrupt(s.path, "file is empty")
	}
	var snap snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		return nil, 0, s.corrupt(s.path, "not valid JSON (truncated?): %v", err)
	}
	var sum string
	switch snap.Version {
	case 1:
		sum = checksum(0, snap.Records, false)
	case snapshotVersion:
		sum = checksum(snap.Seq, snap.Records, true)
	default:
		return nil, 0, s.corrupt(s.path, "version %d, this gpulet reads versions 1 and %d", snap.Version, snapshotVersion)
	}
	if sum != snap.Checksum {
		return nil, 0, s.corrupt(s.path, "checksum mismatch (file says %q, contents hash to %q)", snap.Checksum, sum)
	}
	var records []Record
	if err := json.Unmarshal(snap.Records, &records); err != nil {
		return nil, 0, s.corrupt(s.path, "records: %v", err)
	}
	for i, r := range records {
		if r.ID == "" || len(r.Resources) == 0 {
			return nil, 0, s.corrupt(s.path, "records[%d]: missing id or resources", i)
		}
	}
	return records, snap.Seq, nil
}

// replay applies the journal's changes numbered after seq to records. A
// bad line followed only by bad lines is the tail of an append a crash cut
// short and is dropped; a bad line before a good one is corruption.
func (s *store) replay(records map[string]Record, seq uint64) (uint64, error) {
	data, err := os.ReadFile(s.journalPath())
	if errors.Is(err, os.ErrNotExist) {
		return seq, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint journal %s: %w", s.journalPath(), err)
	}
	var changes []change
	var firstBad error
	badLine := 0
	for n := 1; len(data) > 0; n++ {
		line, rest, complete := bytes.Cut(data, []byte{'\n'})
		data = rest
		c, err := decodeChange(line)
		if !complete && err == nil {
			err = errors.New("line cut short")
		}
		switch {
		case err != nil && firstBad == nil:
			firstBad, badLine = err, n
		case err == nil && firstBad != nil:
			return 0, s.corrupt(s.journalPath(), "line %d: %v, and line %d after it is sound", badLine, firstBad, n)
		case err == nil:
			changes = append(changes, c)
		}
	}
	last := seq
	for _, c := range changes {
		if c.Seq <= last {
			if c.Seq > seq {
				return 0, s.corrupt(s.journalPath(), "entry %d comes after entry %d", c.Seq, last)
			}
			continue // already in the snapshot
		}
		last = c.Seq
		if c.Put != nil {
			records[c.Put.ID] = *c.Put
		} else {
			delete(records, c.Delete)
		}
	}
	return last, nil
}

// append writes journal lines and syncs them.
func (s *store) append(lines []byte) error {
	if s.beforeSync != nil {
		s.beforeSync()
	}
	s.syncs++
	if s.journal == nil {
		return fmt.Errorf("append to checkpoint journal %s: not open", s.journalPath())
	}
	n, err := s.journal.Write(lines)
	s.journalSize += int64(n)
	if err == nil {
		err = s.journal.Sync()
	}
	if err != nil {
		s.broken = true
		return fmt.Errorf("append to checkpoint journal %s: %w", s.journalPath(), err)
	}
	return nil
}

// needsCompaction says whether the next commit should rewrite the
// snapshot rather than append.
func (s *store) needsCompaction() bool {
	return s.broken || s.journal == nil || s.journalSize >= compactAfter
}

// compact writes records as the snapshot at seq and empties the journal,
// opening it for appends.
func (s *store) compact(records map[string]Record, seq uint64) error {
	list := make([]Record, 0, len(records))
	for _, r := range records {
		list = append(list, r)
	}
	sortRecords(list)
	raw, err := json.Marshal(list)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	data, err := json.Marshal(snapshot{Version: snapshotVersion, Seq: seq, Checksum: checksum(seq, raw, true), Records: raw})
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if err := atomicfile.Write(s.path, data, 0o600); err != nil {
		s.broken = true
		return err
	}
	// Entries the snapshot holds are skipped on replay, so emptying the
	// journal needs no sync of its own: a crash before it is harmless.
	if err := s.openJournal(); err != nil {
		s.broken = true
		return err
	}
	s.broken = false
	return nil
}

// openJournal empties the journal and opens it for appends. A journal
// that did not exist is made durable with a sync of its directory.
func (s *store) openJournal() error {
	path := s.journalPath()
	if s.journal != nil {
		_ = s.journal.Close()
		s.journal = nil
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("open checkpoint journal: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = f.Close()
			return fmt.Errorf("open checkpoint journal %s: %w", path, err)
		}
	}
	s.journal, s.journalSize = f, 0
	return nil
}

func (s *store) close() error {
	if s.journal == nil {
		return nil
	}
	err := s.journal.Close()
	s.journal = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// checksum hashes the compact form of the records (so indentation, ours or
// a person's pretty-printing, does not matter but any change of content
// does), and from version 2 on the sequence number with them.
func checksum(seq uint64, records []byte, withSeq bool) string {
	var compact bytes.Buffer
	if withSeq {
		fmt.Fprintf(&compact, "seq=%d\n", seq)
	}
	if err := json.Compact(&compact, records); err != nil {
		return "invalid"
	}
	sum := sha256.Sum256(compact.Bytes())
	return "sha256:" + hex.EncodeToString(sum[:])
}

// SetAside renames a checkpoint that cannot be read to
// "<path>.corrupt-<time>", and its journal beside it, so gpulet can start
// afresh without losing them, and returns the snapshot's new name.
func SetAside(path string, now time.Time) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, aside); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("set corrupt checkpoint %s aside: %w", path, err)
	}
	if err := os.Rename(path+JournalSuffix, aside+JournalSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("set corrupt checkpoint journal %s aside: %w", path+JournalSuffix, err)
	}
	return aside, nil
}
