"""The learning platform at both ends: Moodle and Canvas exports in, their import files out."""
