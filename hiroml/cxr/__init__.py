"""Chest radiographs: from a DICOM instance to a normalised, resized training array.

The pixel pipeline is a chain of pure functions, one step each, in the style of pydicom's
``pixels/processing.py``::

    decode -> to_grayscale -> apply_modality -> apply_voi | normalize_percentile |
    normalize_minmax -> invert_if_monochrome1 -> resize -> to_storage

Arrays are numpy (y, x) = (rows, columns). Intensities after normalisation are float32 in
[0, 1] with dense tissue (bone) bright in every output, whatever the (0028,0004) Photometric
Interpretation. :func:`convert_instance` runs the chain for one instance and records its
provenance; :func:`convert_exam` runs it over an exam, turning every dropped object and every
bad image into a :class:`~hiroml.records.Problem` while the other images go on.

Every frame of a multi-frame radiograph is converted (:func:`convert_frames`), each one a
sample of its own; a frame that cannot be decoded is a problem naming the frame.

Speed (see ``benchmarks/bench_cxr.py``): uncompressed pixels are viewed with
:func:`numpy.frombuffer`; JPEG lossless is decoded by libjpeg-turbo through ``imagecodecs``
(bit-exact, about 4x faster than pydicom's default plugin) and JPEG 2000 by OpenJPEG through
``imagecodecs``; percentiles come from an exact histogram instead of :func:`numpy.percentile`;
the rescale is folded into the window so that one subtract and one multiply (numpy float32,
the same values on every machine) give [0, 1]; and shrinking is an integer box mean then
``cv2.INTER_AREA``. OpenCV may use several threads per call: process-pool workers should
call ``cv2.setNumThreads(1)``.
"""
