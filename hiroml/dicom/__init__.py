"""DICOM: parse a member's bytes, decode its pixels, read raw header values."""
