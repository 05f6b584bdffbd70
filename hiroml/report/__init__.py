"""``report.html``: the one self-contained page a researcher opens first after a build.

It shows the build summary, counts, the split balance (patients, exams, samples per
modality, age and sex per split), every non-kept decision of the audit grouped by action,
the errors in their own section, orphans, patient groups that link several ids,
near-duplicate radiographs across patient groups (both thumbnails side by side), and
thumbnails: a contact sheet of radiographs per split and, for CT volumes, mid-slices in the
three planes under a lung window.

The page has no external reference: CSS is inline and every image is a base64 PNG data URI.
All text that comes from data is HTML-escaped. Thumbnails are drawn with Pillow.
"""
