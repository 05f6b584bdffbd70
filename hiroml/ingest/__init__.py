"""Ingest: discover the datamart's zips, read them safely, index their DICOM headers, and the
patient identity sources (remap sheet, clinical table)."""
