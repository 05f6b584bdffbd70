"""Mutation fuzzing of real DICOM headers through indexing and conversion.

Seeds: pydicom's CT_small.dcm and MR_small.dcm, a synthetic radiograph and a synthetic CT
slice. Hypothesis deletes elements, replaces values by random ones (text, bytes, numbers,
NaN, multi-values), sets the attributes the pixel code depends on to odd values, and cuts or
flips bytes of the encoded file; the file is zipped under a valid exam name and goes through
:func:`hiroml.ingest.index.index_zip`, then :func:`hiroml.cxr.convert.convert_exam` and
:func:`hiroml.ct.convert.convert_exam`. The only acceptable outcomes are results and
:class:`~hiroml.records.Problem` rows: never an exception.

CI runs a bounded number of cases; ``scripts/fuzz_headers.py`` runs the same property for as
long as asked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import hostile
import numpy as np
import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from hiroml import synth
from hiroml.config import CtConfig, CxrConfig, ExamsConfig, IndexConfig
from hiroml.ct import convert as ct_convert
from hiroml.cxr import convert as cxr_convert
from hiroml.exams.stage import build_exams
from hiroml.ingest.discover import parse_zip_name
from hiroml.ingest.index import index_zip
from hiroml.ingest.zipio import SafeZip
from hiroml.records import Batch, ExamZip, Instance
from hiroml.vocab import BatchStatus, Modality

#: Attributes the indexing and pixel code read: mutated more often than the others.
KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PixelSpacing", "ImagerPixelSpacing",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "NumberOfFrames", "SOPClassUID",
    "SOPInstanceUID", "SeriesInstanceUID", "Modality", "ViewPosition", "ImageType",
    "PixelData", "ConvolutionKernel", "GantryDetectorTilt", "PatientAge", "StudyDate",
    "StudyTime", "SeriesDescription", "VOILUTSequence", "PresentationLUTShape",
)  # fmt: skip
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.3.4",
    "",
)
BATCH = Batch(
    name="CT-UPDATE-20200613-COMPLETE",
    modality=Modality.CT,
    date=dt.date(2020, 6, 13),
    status=BatchStatus.COMPLETE,
)
ZIP_NAME = "7999_20200601-080000_F001_XR-CHEST-PA.zip"
LIMITS = IndexConfig(max_member_bytes=64 * 1024**2)
CXR_CFG = CxrConfig(size=[32, 32], views=["frontal", "lateral", "unknown"], drop_derived=False)
CT_CFG = CtConfig(min_slices=1, drop_derived=False)


@cache
def seeds() -> tuple[bytes, ...]:
    """The seed files, as DICOM Part 10 bytes."""
    rng = np.random.default_rng(3)
    out = [
        Path(get_testdata_file("CT_small.dcm")).read_bytes(),  # type: ignore[arg-type]
        Path(get_testdata_file("MR_small.dcm")).read_bytes(),  # type: ignore[arg-type]
        synth.dicom_bytes(hostile.make_cxr(901, rng)),
    ]
    study = synth.StudyInfo(
        patient_id="7999", time=dt.datetime(2020, 6, 1, 8), study_uid="2.25.79991"
    )
    (ct_slice,) = synth.make_ct_series(
        study=study,
        series_uid="2.25.79992",
        sop_uids=["2.25.79993"],
        frame_uid="2.25.79994",
        positions=[(-100.0, -100.0, 0.0)],
        rng=rng,
        matrix=16,
    )
    out.append(synth.dicom_bytes(ct_slice))
    return tuple(out)


_values = st.one_of(
    st.none(),
    st.text(max_size=24),
    st.binary(max_size=64),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=7),
    st.lists(st.integers(min_value=-(2**17), max_value=2**17), max_size=7),
    st.sampled_from(["0", "-1", "65535", "1e308", "NaN", "MONOCHROME1", "RGB", "PA", "\\"]),
)
_op = st.one_of(
    st.tuples(st.just("delete"), st.integers(min_value=0, max_value=10**6)),
    st.tuples(st.just("replace"), st.integers(min_value=0, max_value=10**6), _values),
    st.tuples(st.just("set"), st.sampled_from(KEYWORDS), _values),
    st.tuples(st.just("syntax"), st.sampled_from(SYNTAXES)),
)


@st.composite
def mutated_dicom(draw: st.DrawFn) -> bytes:
    """A seed file with 1-5 element mutations, then maybe cut short or bit-flipped."""
    data = draw(st.sampled_from(seeds()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for op in draw(st.lists(_op, min_size=1, max_size=5)):
            _mutate(ds, op)
        data = _encode(ds) or data
    tail = draw(st.sampled_from(["none", "none", "cut", "flip"]))
    if tail == "cut":
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    elif tail == "flip" and data:
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data


def _mutate(ds: Dataset, op: tuple[Any, ...]) -> None:
    """Apply one mutation; one that pydicom refuses is skipped (the harness, not the code
    under test)."""
    tags = list(ds.keys())
    try:
        if op[0] == "delete" and tags:
            del ds[tags[op[1] % len(tags)]]
        elif op[0] == "replace" and tags:
            ds[tags[op[1] % len(tags)]].value = op[2]
        elif op[0] == "set":
            if op[1] in ds:
                ds[op[1]].value = op[2]
            else:
                setattr(ds, op[1], op[2])
        elif op[0] == "syntax":
            ds.file_meta.TransferSyntaxUID = op[1]
    except Exception:
        pass


def _encode(ds: Dataset) -> bytes | None:
    bio = io.BytesIO()
    try:
        ds.save_as(bio, enforce_file_format=False, implicit_vr=False, little_endian=True)
    except Exception:
        return None
    return bio.getvalue()


def check_member(data: bytes, folder: Path) -> str:
    """The property: index and convert one zipped member; return what happened
    ('problem', 'indexed', 'converted'). Any exception escapes and fails the property."""
    path = folder / ZIP_NAME
    path.write_bytes(hostile.zip_bytes([("S1/IM0001.dcm", data)]))
    st_ = path.stat()
    ezip = ExamZip(
        batch=BATCH,
        file_name=ZIP_NAME,
        name=parse_zip_name(ZIP_NAME),
        size=st_.st_size,
        mtime_ns=st_.st_mtime_ns,
    )
    zi = index_zip(path, ezip, LIMITS)
    assert all(p.reason for p in zi.problems)
    if not zi.instances:
        assert zi.problems, "a member neither indexed nor reported"
        return "problem"
    exams = build_exams([ezip], zi.instances, {}, ExamsConfig()).exams

    def read(inst: Instance) -> bytes:
        with SafeZip(path, LIMITS) as z:
            return z.read(inst.member)

    made = 0
    for exam in exams:
        images, probs = cxr_convert.convert_exam(
            dataclasses.replace(exam, modality=Modality.CXR), read, CXR_CFG
        )
        assert all(p.reason for p in probs)
        made += len(images)
        volumes, probs = ct_convert.convert_exam(exam, read, CT_CFG)
        assert all(p.reason for p in probs)
        made += len(volumes)
    return "converted" if made else "indexed"


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@fuzz_settings(max_examples=60)
@given(data=mutated_dicom())
def test_mutated_headers_give_results_or_problems_never_exceptions(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_member(data, Path(tmp))


def test_the_seeds_convert() -> None:
    """The unmutated seeds go all the way (the property is not vacuous)."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = [check_member(s, Path(tmp)) for s in seeds()]
    assert outcomes.count("converted") >= 3, outcomes


def _edited(seed: int, **values: Any) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(seeds()[seed]), force=True)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        data = _encode(ds)
    assert data is not None
    return data


def test_cases_found_by_fuzzing() -> None:
    """Each once raised out of indexing or conversion (or lost a good image)."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a CT slice whose (0028,1052) Rescale Intercept overflows int64 arithmetic
        assert check_member(_edited(3, RescaleIntercept="1e20"), Path(tmp)) == "converted"
        assert check_member(_edited(3, RescaleIntercept="-1e300"), Path(tmp)) == "converted"
        # a radiograph whose (0028,1050) Window Center is empty: the percentile fallback
        empty = _edited(2, WindowCenter=None, WindowWidth="400")
        assert check_member(empty, Path(tmp)) == "converted"
        # a VR turned into "UM" by a bit flip: a problem, not an exception
        data = seeds()[2]
        at = data.index(b"TM")
        assert check_member(data[:at] + b"UM" + data[at + 2 :], Path(tmp)) == "problem"
