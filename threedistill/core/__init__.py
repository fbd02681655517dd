"""Core types and contracts every other package builds on (no imports from them)."""
