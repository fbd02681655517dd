"""Editing existing content: single images (DDS) and, later, scenes."""
