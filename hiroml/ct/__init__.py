"""CT series selection and volume building with true geometry (pure; no zip access).

Conventions (DICOM patient coordinates, LPS, mm):

* (0020,0037) Image Orientation (Patient) gives the row direction ``r`` (first three values:
  the direction in which the column index grows) and the column direction ``c``; the slice
  normal is ``n = r x c``.
* (0028,0030) Pixel Spacing is ``[dy, dx]`` = [row spacing, column spacing]: pixel (row j,
  column i) of a slice lies at ``IPP + i * dx * r + j * dy * c`` with (0020,0032) Image
  Position (Patient) as IPP.
* numpy volumes are (z, y, x) = (slice, row, column); SimpleITK geometry is (x, y, z):
  ``spacing_xyz = (dx, dy, slice step)``, ``origin_xyz`` = IPP of the first slice along ``n``,
  ``direction`` = the 3x3 matrix whose columns are ``r, c, n``, flattened row-major (SimpleITK's
  ``GetDirection`` order).

Slices are ordered by their position projected on ``n``, never by (0020,0013) Instance Number
or file name. Duplicates, gaps, uneven spacing and gantry tilt are detected against explicit
tolerances and either rejected (:class:`~hiroml.errors.GeometryError`) or resampled onto an
orthogonal, evenly spaced grid that covers every original pixel, as configured in
:class:`~hiroml.config.CtConfig`. Every decision is written to ``CtVolume.decisions``.

Before a series is chosen, the parts of one scan that resumed under a new (0020,000E) Series
Instance UID are stitched (:mod:`hiroml.ct.stitch`, ``ct.stitch``), so ``ct.series=best``
chooses among whole scans.
"""
