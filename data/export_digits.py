"""Export scikit-learn's handwritten digits as PNG files in ImageFolder layout.

Run once to (re)create the demo data that ships in the repo:

    pip install scikit-learn && python data/export_digits.py

Digits 0-4 become the source set (pretrain.data_dir: the `weights` stage pretrains the
backbone on them, with model.weights: pretrain) and digits 5-9 the target set
(prepare.data_dir, for `prepare` -> `train`), the split-class transfer setup of
Yosinski et al. (2014). The pipeline itself never imports scikit-learn.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

OUT_DIR = Path(__file__).resolve().parent / "digits"
SOURCE_CLASSES = range(0, 5)


def main() -> None:
    digits = load_digits()
    # The 8x8 images hold intensities 0..16; stretch them to 8-bit grey.
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        subset = "source" if target in SOURCE_CLASSES else "target"
        class_dir = OUT_DIR / subset / str(target)
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(class_dir / f"{index:04d}.png", optimize=True)
    print(f"wrote {len(pixels)} images under {OUT_DIR}")


if __name__ == "__main__":
    main()
