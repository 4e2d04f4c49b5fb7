"""Every file and folder the stages read and write, relative to the project root.

dvc.yaml names the same paths in its deps, outs, metrics and plots;
tests/test_dvc_yaml.py checks that the two agree. The data folders are params
(prepare.data_dir, pretrain.data_dir), and the caches that outlive a stage's outputs are
under .cache/ (files.project_cache).
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# check_params: constant text, so a change of params alone re-runs no later stage.
PARAMS_OK = Path("checks/params.ok")
# check_params: the values it checked, which every other stage compares params.yaml with
# (pipeline.checked); no stage depends on it in dvc.yaml.
CHECKED_PARAMS = Path("checks/params.json")

# The weights files model.weights may name. The prepare and weights stages depend on this
# folder, so DVC re-runs them when a file in it changes.
WEIGHTS_DIR = Path("models/weights")

# prepare
PREPARED_DIR = Path("data/prepared")
MANIFEST = PREPARED_DIR / "manifest.csv"
CLASSES = PREPARED_DIR / "classes.json"
SKIPPED = PREPARED_DIR / "skipped.csv"
DUPLICATES = PREPARED_DIR / "duplicates.csv"

# weights
START_FILE = Path("models/start.pt")

# train
CHECKPOINT_DIR = Path("checkpoints")
LIVE_DIR = Path("dvclive/train")

# evaluate
SCORES_FILE = Path("eval/scores.csv")
PREDICTIONS_DIR = Path("eval/predictions")

# select_best
BEST_MODEL = Path("models/best.pt")
BEST_EXPORT = Path("models/best.pt2")
BEST_IMAGE_EXPORT = Path("models/best_image.pt2")
BEST_METRICS = Path("best/metrics.json")
BEST_CONFUSION = Path("best/confusion.csv")
BEST_EPOCHS = Path("best/epochs.csv")
# What the chosen checkpoint gets wrong on the test split (pipeline.interpretation)
BEST_CLASSES = Path("best/classes.csv")
BEST_MISTAKES = Path("best/mistakes.csv")
BEST_GALLERY = Path("best/mistakes.png")
