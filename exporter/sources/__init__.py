"""Sources only read: each returns an immutable snapshot or raises SourceError."""
