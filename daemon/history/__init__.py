"""The timeline: events (a stretch of frames with one caption) kept on the box, searchable, explained."""
