"""The self-check of the numeric paths (``hiroml-doctor``) and the environment that decides
stored values.

The same inputs and config give the same ``dataset_hash`` only where the libraries that
decode and cast the pixels give the same values. :func:`run` sends real reference images
that pydicom ships (``pydicom/data/test_files``, never downloaded) through every decode and
cast path a build uses, and compares what they give with the golden values in
:data:`GOLDEN`, computed once in the tested environment:

* the float16 and float32 casts (:mod:`hiroml.store.halfcast`) against numpy's ``astype``, on
  arrays of 1 to 4096 values with signed zeros, subnormals, infinities and the float16 limits;
* per reference radiograph: its decode ((0002,0010) Transfer Syntax UID -> stored values and
  the decoder :mod:`hiroml.dicom.decode` or :mod:`hiroml.dicom.fastdecode` chose), its conversion by
  :func:`hiroml.cxr.convert.convert_instance` (rescale, VOI window or percentiles, resize, float16:
  the ``data_hash`` the build stores, :func:`hiroml.store.shards.array_hash`) and its near-duplicate
  signature (:func:`hiroml.exams.neardup.signature`, BLAKE2b of its 1024 bytes). Uncompressed
  (numpy), RLE Lossless (pylibjpeg-rle), JPEG 2000 lossless and lossy (OpenJPEG), JPEG
  Extended 12-bit (libjpeg-turbo), JPEG-LS Lossless (CharLS), colour JPEG Lossless (pydicom's
  plugins, then BT.601 luma); and two made here from CT_small.dcm's stored values, lossless,
  so their decoded values are the source's whatever the encoder: a grey JPEG Lossless SV1
  (libjpeg-turbo, the usual radiograph path) and an unsigned JPEG 2000 decoded at half
  resolution (Pillow's OpenJPEG, ``cxr.fast_jpeg2000``);
* CT_small.dcm as a CT volume of five slices in HU (:func:`hiroml.ct.volume.build_volume`, int16),
  and the same resampled to other spacing (SimpleITK, float32).

Each check names the library that owns its path; a mismatch or an exception is reported
with that library's version and the range hiroml is tested with (its requirement in the
package metadata). ``hiroml-build`` runs :func:`require` once per process before the build
writes anything (``doctor.enabled=false`` skips it) and stops with exit 2 on any mismatch;
with ``doctor.cache`` (the default) a pass is recorded per environment (cache.py) and the
builds after it in the same environment trust it.

:func:`environment` gives the versions of those libraries (from the package metadata, no
import; the build's skip record compares them too). :func:`environment_record` is the
``environment`` object of every version's ``build.json``: those versions, the path of the
float16 casts, and the decoders of the version's samples with their counts;
:func:`environment_rows` shows it in the report and the card, :func:`environment_changes`
in ``hiroml-versions --diff``. The ``dataset_hash`` holds none of it.

The modules: libraries.py (the environment: versions, record, rows, changes),
checks.py (the checks and their golden values) and cache.py (the recorded passes); the
command is :mod:`hiroml.cli.doctor`.
Their public names are re-exported here.
"""

from __future__ import annotations

from hiroml.doctor.checks import (
    FAILED,
    GOLDEN,
    MISMATCH,
    OK,
    Check,
    Report,
    checked,
    require,
    run,
    values,
)
from hiroml.doctor.libraries import (
    LIBRARIES,
    NOT_INSTALLED,
    environment,
    environment_changes,
    environment_record,
    environment_rows,
    halfcast_backend,
    library_label,
    tested_range,
)

__all__ = [
    "FAILED",
    "GOLDEN",
    "LIBRARIES",
    "MISMATCH",
    "NOT_INSTALLED",
    "OK",
    "Check",
    "Report",
    "checked",
    "environment",
    "environment_changes",
    "environment_record",
    "environment_rows",
    "halfcast_backend",
    "library_label",
    "require",
    "run",
    "tested_range",
    "values",
]
