// Package state keeps the node agent's record of the attachments it made in
// its cache folder, one JSON file per attachment, written atomically, so a
// restarted agent knows what it set up (with the OVS external_ids as the
// second source) and DEL works without the pod or its netns.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/datapath"
)

// Store is a folder of attachment records.
type Store struct {
	dir string
}

// Open creates the folder if needed, and removes the temporary files of
// writes that an agent stopped (a crash, a kill) between creating and
// renaming: one agent writes the folder, and it is starting.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create cache folder %s: %w", dir, err)
	}
	left, err := filepath.Glob(filepath.Join(dir, tmpPattern))
	if err != nil {
		return nil, err
	}
	for _, p := range left {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove an unfinished write: %w", err)
		}
	}
	return &Store{dir: dir}, nil
}

// tmpPattern names a write not yet renamed into place.
const tmpPattern = ".tmp-*"

// path is the record's file (api.RecordName, which the plugin reads too).
func (s *Store) path(a *datapath.Attachment) string {
	return filepath.Join(s.dir, api.RecordName(a.ContainerID, a.IfName))
}

// SetComplete writes the folder's api.RecordsComplete file, or removes it
// (complete false).
func (s *Store) SetComplete(complete bool) error {
	p := filepath.Join(s.dir, api.RecordsComplete)
	if !complete {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		return nil
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Put writes the record (temporary file, rename). There is no fsync: the
// records must survive the agent, not the node (a rebooted node has none of
// the attachments left), and ADD waits for this write.
func (s *Store) Put(a *datapath.Attachment) error {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("encode attachment %s: %w", a.Key(), err)
	}
	f, err := os.CreateTemp(s.dir, tmpPattern)
	if err != nil {
		return fmt.Errorf("write attachment %s: %w", a.Key(), err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write attachment %s: %w", a.Key(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write attachment %s: %w", a.Key(), err)
	}
	if err := os.Rename(f.Name(), s.path(a)); err != nil {
		return fmt.Errorf("write attachment %s: %w", a.Key(), err)
	}
	return nil
}

// Delete removes the record; a missing one is fine.
func (s *Store) Delete(a *datapath.Attachment) error {
	if err := os.Remove(s.path(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove attachment %s: %w", a.Key(), err)
	}
	return nil
}

// List reads every record. Unreadable files are reported, not skipped.
func (s *Store) List() ([]*datapath.Attachment, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read cache folder %s: %w", s.dir, err)
	}
	var out []*datapath.Attachment
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(s.dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", p, err))
			continue
		}
		var a datapath.Attachment
		if err := json.Unmarshal(b, &a); err != nil {
			errs = append(errs, fmt.Errorf("decode %s: %w", p, err))
			continue
		}
		out = append(out, &a)
	}
	return out, errors.Join(errs...)
}
