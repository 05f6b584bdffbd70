"""Read each radiograph once (issue 14): the index worker, which already holds a member's bytes,
also converts it (:func:`hiroml.cxr.prepare_instance`) and leaves the result in a scratch store
under the output folder; the conversion stage takes it from there instead of inflating the
member again.

The store is one file per member, ``<output>/.hiroml/scratch/<key>.pkl``, where the key hashes
the zip's path, size and modification time, the member, the ``cxr`` configuration and the
hiroml version: an entry is only ever taken for the very bytes and settings it was made
from. Taking an entry deletes it; what no conversion took (duplicate copies, exams dropped
later, tasks reused from an earlier build) is counted and deleted when the conversion stage
ends (:func:`sweep`). A build that crashed in between leaves entries that the next build
takes when they still match, or sweeps. Memory stays bounded by one member per worker; the
disk the store holds at its peak is about the size of the new radiographs' arrays.

Entries are pickles written by this module under the output folder the build owns (as its
SQLite index is); they are never read from anywhere else.

Only radiographs: a CT series needs all its slices at once, so keeping what the index read
until the conversion would cost disk equal to the source slices (see the closing note of
issue 14).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hiroml._version import __version__
from hiroml.config import CxrConfig
from hiroml.lock import STATE_DIR
from hiroml.records import ExamZip, Instance, Modality

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from hiroml.cxr import Prepared

log = logging.getLogger(__name__)

SCRATCH_DIR = "scratch"
_SUFFIX = ".pkl"


def scratch_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The scratch store of an output folder."""
    return Path(out_dir) / STATE_DIR / SCRATCH_DIR


def _settings_hash(cfg: CxrConfig) -> str:
    """What the converted values depend on besides the bytes: the cxr section and the version."""
    text = json.dumps([__version__, asdict(cfg)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def entry_key(rel_zip: str, size: int, mtime_ns: int, member: str, settings: str) -> str:
    """The file name (without suffix) of one member's entry."""
    text = "\x1f".join((rel_zip, str(size), str(mtime_ns), member, settings))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Preparer:
    """The index's per-member hook (:func:`hiroml.index.index_zip` ``on_member``): converts
    the members of radiograph batches and stores them. Picklable, to travel to a worker."""

    folder: str
    cfg: CxrConfig
    settings: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _settings_hash(self.cfg))  # once, not per member

    def __call__(
        self,
        ezip: ExamZip,
        inst: Instance,
        data: bytes,
        header: Dataset | None = None,
        pixels: memoryview | None = None,
    ) -> None:
        from hiroml import cxr

        if ezip.batch.modality is not Modality.CXR:
            return
        keep = cxr.keep_reason(
            inst,
            drop_derived=self.cfg.drop_derived,
            keep_for_processing=self.cfg.keep_for_processing,
        )
        if keep is not None:
            return  # the conversion drops it without reading it
        try:
            ready = cxr.prepare_instance(data, inst, self.cfg, header=header, pixels=pixels)
        except Exception as e:  # the conversion reads it again and reports what fails
            log.debug("%s: %s not prepared: %s", ezip.rel_path, inst.member, e)
            return
        if ready is None:
            return
        key = entry_key(ezip.rel_path, ezip.size, ezip.mtime_ns, inst.member, self.settings)
        folder = Path(self.folder)
        if not folder.is_dir():  # a stat per member; the folder is made once
            folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(ready, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / f"{key}{_SUFFIX}")


class ScratchReader:
    """The conversion side: :meth:`take` an instance's entry, if the store has one for the zip
    as it is now on disk. Counts what it took."""

    def __init__(self, folder: str | os.PathLike[str], root: str, cfg: CxrConfig) -> None:
        self.folder = Path(folder)
        self.root = root
        self.settings = _settings_hash(cfg)
        self.taken = 0
        self._stat: dict[str, tuple[int, int]] = {}

    def take(self, inst: Instance) -> Prepared | None:
        """The stored :class:`hiroml.cxr.Prepared` of ``inst`` (the entry is deleted), or None."""
        key = self._stat.get(inst.rel_zip)
        if key is None:
            try:
                st = os.stat(os.path.join(self.root, inst.rel_zip))
            except OSError:
                return None
            key = self._stat[inst.rel_zip] = (st.st_size, st.st_mtime_ns)
        path = self.folder / (entry_key(inst.rel_zip, *key, inst.member, self.settings) + _SUFFIX)
        try:
            with open(path, "rb") as f:
                ready: Prepared = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # a damaged entry: the conversion reads the zip instead
            log.warning("%s: scratch entry unreadable (%s), reading the zip", inst.member, e)
            path.unlink(missing_ok=True)
            return None
        path.unlink(missing_ok=True)
        self.taken += 1
        return ready


def count(out_dir: str | os.PathLike[str]) -> int:
    """How many entries the store holds."""
    folder = scratch_dir(out_dir)
    return sum(1 for _ in folder.glob(f"*{_SUFFIX}")) if folder.is_dir() else 0


def sweep(out_dir: str | os.PathLike[str]) -> int:
    """Delete the store (entries no conversion took, temporary files); how many entries."""
    folder = scratch_dir(out_dir)
    if not folder.is_dir():
        return 0
    left = 0
    for path in folder.iterdir():
        left += path.suffix == _SUFFIX
        path.unlink(missing_ok=True)
    folder.rmdir()
    return left
