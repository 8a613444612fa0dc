"""scikit-learn's 8x8 digits: offline, bundled with scikit-learn, pixel values 0..16."""

from __future__ import annotations

from typing import TYPE_CHECKING

from importlib import resources

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits

from genlab.data.checksums import md5_file
from genlab.data.raw import RawData
from genlab.data.splits import Split

if TYPE_CHECKING:
    from genlab.data.params import Settings

MAX_VALUE = 16
_BUNDLED_FILE = "digits.csv.gz"


def load(cfg: Settings) -> RawData:
    bunch = load_digits()
    # The values are integers stored as float64, so the uint8 cast is exact (no rescaling to 0..255).
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    with resources.as_file(resources.files("sklearn.datasets.data") / _BUNDLED_FILE) as path:
        md5 = md5_file(path)
    return RawData(
        train=Split(images, labels),
        test=None,
        max_value=MAX_VALUE,
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__}, bundled {_BUNDLED_FILE})",
        source_md5={_BUNDLED_FILE: md5},
        classes=[str(d) for d in range(10)],
    )
