"""Radiograph object selection: which instances are images to keep."""

from __future__ import annotations

from pydicom.uid import (
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForProcessing,
)

from hiroml.dicom import uids as dicom_uids
from hiroml.records import Instance

STAGE = "cxr"
_NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "KO", "DOC", "REG", "RTDOSE", "RTPLAN", "RTSTRUCT", "ECG", "AU", "PLAN"}
)
_SECONDARY_MODALITIES = frozenset({"OT", "SC"})
# Raw detector data that no radiologist reads: the "for processing" twin of a "for
# presentation" image of the same exposure (PS3.3 A.26, (0008,0068) Presentation Intent Type).
_FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
    }
)
FOR_PROCESSING = "FOR PROCESSING"
_uid_label = dicom_uids.uid_label


def is_for_processing(sop_class_uid: str, presentation_intent: str) -> bool:
    """Whether an image is raw detector data "for processing": a (0008,0016) SOP Class UID of
    the DX, mammography or intra-oral "For Processing" storage classes, or (0008,0068)
    Presentation Intent Type ``FOR PROCESSING``."""
    intent = presentation_intent.strip().upper()
    return sop_class_uid in _FOR_PROCESSING_SOP_CLASSES or intent == FOR_PROCESSING


def keep_reason(
    inst: Instance, *, drop_derived: bool, keep_for_processing: bool = False
) -> str | None:
    """Why an instance is not a radiograph to keep, from its header alone; ``None`` to keep.

    Dropped always: no (7FE0,0010) Pixel Data, and non-image (0008,0016) SOP Class UIDs
    (structured and dose reports, presentation states, key objects, waveforms, encapsulated
    documents...) or a non-image (0008,0060) Modality (SR, PR, KO, DOC...). Dropped unless
    ``keep_for_processing``: "for processing" images (:func:`is_for_processing`), raw detector
    data kept beside the "for presentation" image of the same exposure. Dropped when
    ``drop_derived``: Secondary Capture SOP classes, Modality OT/SC (screen saves), and
    (0008,0008) Image Type whose value 2 is SECONDARY (DERIVED\\SECONDARY). DERIVED\\PRIMARY is
    kept: many computed radiography units label their processed images so.
    """
    sop = inst.sop_class_uid
    modality = inst.modality.strip().upper()
    kind = dicom_uids.non_image_kind(sop)
    if kind is not None:
        return f"non-image object: {kind} (SOP Class {_uid_label(sop)})"
    if modality in _NON_IMAGE_MODALITIES:
        return f"non-image object: Modality={modality} (SOP Class {_uid_label(sop)})"
    if not inst.has_pixels:
        return f"no pixel data (SOP Class {_uid_label(sop)}, Modality={modality or '?'})"
    if not keep_for_processing and is_for_processing(sop, inst.presentation_intent):
        intent = inst.presentation_intent.strip().upper()
        evidence = f"PresentationIntentType={intent}, " if intent else ""
        return (
            f"for processing: raw detector data, not a radiograph to read ({evidence}"
            f"SOP Class {_uid_label(sop)}); cxr.keep_for_processing=true keeps it"
        )
    if not drop_derived:
        return None
    if dicom_uids.is_secondary_capture(sop):
        return f"secondary capture / screen save (SOP Class {_uid_label(sop)})"
    if modality in _SECONDARY_MODALITIES:
        return f"secondary capture / screen save (Modality={modality})"
    image_type = [v.strip().upper() for v in inst.image_type]
    joined = "\\".join(image_type)
    if len(image_type) > 1 and image_type[1] == "SECONDARY":
        return f"secondary image (ImageType={joined})"
    if any(v in ("SCREEN SAVE", "SCREENSHOT") for v in image_type):
        return f"screen save (ImageType={joined})"
    return None
