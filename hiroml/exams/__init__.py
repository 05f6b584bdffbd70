"""Exams: instance records into logical exams (dedupe and merge rules), patient groups and their
links, near duplicates, and the train/val/test splits."""
