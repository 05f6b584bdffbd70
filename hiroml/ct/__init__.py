"""CT: series selection, HU decoding, volume geometry, stitching, enhanced multi-frame objects and
the conversion."""
