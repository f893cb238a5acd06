package ledger

// Group commit: a durable change is applied and queued under Ledger.mu;
// its caller then waits, and whoever holds commitMu writes and syncs
// everything queued at once.

// pending is a durable change waiting for its sync.
type pending struct {
	change change
	line   []byte
	// old is what records held under the ID before a put, to restore if
	// the sync fails; nil when there was nothing.
	old  *Record
	done chan struct{} // closed once committed or failed
	err  error
}

// settleLocked waits, releasing mu meanwhile, until id has no change
// waiting for a sync, so changes to one holder apply in order.
func (l *Ledger) settleLocked(id string) {
	for p := l.pending[id]; p != nil; p = l.pending[id] {
		l.mu.Unlock()
		_ = l.wait(p)
		l.mu.Lock()
	}
}

// queueLocked numbers a durable change and queues it for the next commit.
// Without a store it is committed at once.
func (l *Ledger) queueLocked(c change, old Record, had bool) (*pending, error) {
	if l.store == nil {
		return nil, nil
	}
	l.seq++
	c.Seq = l.seq
	line, err := encodeChange(c)
	if err != nil {
		return nil, err
	}
	p := &pending{change: c, line: line, done: make(chan struct{})}
	if had {
		p.old = &old
	}
	l.queue = append(l.queue, p)
	l.pending[c.id()] = p
	return p, nil
}

// id is the holder a change is about.
func (c change) id() string {
	if c.Put != nil {
		return c.Put.ID
	}
	return c.Delete
}

func (l *Ledger) restoreLocked(id string, old Record, had bool) {
	if had {
		l.records[id] = old
	} else {
		delete(l.records, id)
	}
}

// wait returns once p is committed or has failed, committing what is
// queued itself when no one else is. A nil p is committed.
func (l *Ledger) wait(p *pending) error {
	if p == nil {
		return nil
	}
	for {
		select {
		case <-p.done:
			return p.err
		default:
		}
		l.commitMu.Lock()
		select {
		case <-p.done:
		default:
			l.commitBatch()
		}
		l.commitMu.Unlock()
	}
}

// commitBatch writes and syncs every queued change, then applies the
// outcome: a committed release frees its devices; a failed reservation is
// undone. Callers hold commitMu.
func (l *Ledger) commitBatch() {
	l.mu.Lock()
	batch := l.queue
	l.queue = nil
	l.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	apply := func(m map[string]Record) {
		for _, p := range batch {
			if p.change.Put != nil {
				m[p.change.Put.ID] = *p.change.Put
			} else {
				delete(m, p.change.Delete)
			}
		}
	}
	var err error
	if l.store.needsCompaction() {
		next := make(map[string]Record, len(l.committed)+len(batch))
		for id, r := range l.committed {
			next[id] = r
		}
		apply(next)
		// The snapshot is numbered after the batch's last change, not
		// after changes queued since (they are not in it).
		err = l.store.compact(next, batch[len(batch)-1].change.Seq)
	} else {
		var lines []byte
		for _, p := range batch {
			lines = append(lines, p.line...)
		}
		err = l.store.append(lines)
	}
	if err == nil {
		apply(l.committed)
		l.committedSeq = batch[len(batch)-1].change.Seq
	}

	l.mu.Lock()
	for i := len(batch) - 1; i >= 0; i-- {
		p := batch[i]
		id := p.change.id()
		if l.pending[id] == p {
			delete(l.pending, id)
		}
		switch {
		case err != nil && p.change.Put != nil:
			if p.old != nil {
				l.records[id] = *p.old
			} else {
				delete(l.records, id)
			}
		case err == nil && p.change.Delete != "":
			// A release takes effect once it is on disk. (A reservation
			// that replaced a DRA record with a device-plugin one is
			// already in records.)
			if r, ok := l.records[id]; ok && r.API == DRA {
				delete(l.records, id)
			}
		}
		p.err = err
	}
	l.notifyLocked()
	l.mu.Unlock()
	for _, p := range batch {
		close(p.done)
	}
}
