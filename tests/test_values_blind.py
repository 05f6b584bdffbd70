"""Header values that would silently wreck pixels: refused with an error naming them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hiroml.config import CxrConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.records import Instance
from hiroml.vocab import Action
from tests.test_cxr import _exam, make_ds, make_inst, radiograph, to_bytes


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "Rescale Slope is nan"),
        ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "Rescale Slope is 0.0"),
        ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, "Rescale Slope is inf"),
        ({"RescaleSlope": "1", "RescaleIntercept": "-inf"}, "Rescale Intercept is -inf"),
        ({"RescaleSlope": "1", "RescaleIntercept": "NaN"}, "Rescale Intercept is nan"),
    ],
)
def test_radiograph_with_unusable_rescale_is_an_error_not_a_black_image(
    attrs: dict[str, Any], named: str
) -> None:
    good = make_ds(radiograph(1), ViewPosition="PA")
    bad = make_ds(radiograph(2), ViewPosition="PA", **attrs)
    blobs = {"1/good.dcm": to_bytes(good), "1/bad.dcm": to_bytes(bad)}
    insts = [make_inst(good, member="1/good.dcm"), make_inst(bad, member="1/bad.dcm")]
    cfg = CxrConfig(size=[16, 16], dtype="uint8")

    def read(inst: Instance) -> bytes:
        return blobs[inst.member]

    images, problems = cxr_convert.convert_exam(_exam(insts), read, cfg)
    assert [i.member for i in images] == ["1/good.dcm"]
    assert len(problems) == 1 and problems[0].action == Action.ERROR
    reason = problems[0].reason
    assert insts[1].rel_zip in reason and "1/bad.dcm" in reason and named in reason
    # the path that converts a member ahead of its exam leaves the report to the exam stage
    assert cxr_convert.prepare_instance(blobs["1/bad.dcm"], insts[1], cfg) is None
    assert cxr_convert.prepare_instance(blobs["1/good.dcm"], insts[0], cfg) is not None


def test_radiograph_negative_slope_still_converts() -> None:
    ds = make_ds(radiograph(3), ViewPosition="PA", RescaleSlope="-1", RescaleIntercept="4095")
    inst = make_inst(ds, member="1/neg.dcm")
    img = cxr_convert.convert_instance(
        to_bytes(ds), inst, exam_description="", cfg=CxrConfig(size=[16, 16], dtype="uint8")
    )
    assert img.array.dtype == np.uint8 and int(img.array.max()) > 0
