"""Chest radiographs: object selection, view, the pixel chain and the conversion."""
