"""Stage check_params: every param checked, in seconds, before any stage does real work.

DVC hands a stage only the params that dvc.yaml lists for it, so a key no stage lists
(`trian: {lr: 0.1}`, or `-S +trian.lr=0.1`) would change nothing and say nothing. This
stage lists the whole of params.yaml, and every other stage depends on its output, so a
`dvc repro` or `dvc exp run` with any unknown, misspelt or invalid param stops here with
one line, even when no other stage would have run.

Checked: every key and type (config.load_params), the freeze specs (`freeze` and
`train.unfreeze_to`, whether or not unfreezing is on) against the model's structure, the
arch, the weights name or file (which must lie under models/weights/), the image size,
whether the model takes `train.drop_path`, the device, and the data folders.

Reads:  params.yaml (all of it)
Writes: checks/params.ok  (constant text, so a change of params alone re-runs no later stage)
"""

from pathlib import Path

from pipeline.cli import UserError, run_stage
from pipeline.config import PRETRAIN_WEIGHTS, Params, load_params
from pipeline.devices import resolve_device
from pipeline.files import atomic_write
from pipeline.models import check_model_params, is_weights_file
from pipeline.paths import PARAMS_OK, WEIGHTS_DIR


def check(params: Params) -> None:
    """Everything about `params` that can be known before any data is decoded or model trained."""
    for key, folder in (("prepare.data_dir", params.prepare.data_dir), ("pretrain.data_dir", params.pretrain.data_dir)):
        if not Path(folder).is_dir():
            raise UserError(f"{key} = {folder!r}: no such folder (run from the project root, or fix the path)")
    resolve_device(params.device)
    weights = params.model.weights
    if (
        weights is not None
        and is_weights_file(weights)
        and WEIGHTS_DIR.resolve() not in Path(weights).resolve().parents
    ):
        raise UserError(
            f"model.weights = {weights!r}: put weights files in {WEIGHTS_DIR}/, which the weights stage "
            "depends on, so that DVC re-runs what starts from them when they change"
        )
    check_model_params(
        params.model.arch,
        None if weights == PRETRAIN_WEIGHTS else weights,
        params.model.image_size,
        {"freeze": params.freeze, "train.unfreeze_to": params.train.unfreeze_to},
        params.train.drop_path,
    )


def main() -> None:
    check(load_params())
    with atomic_write(PARAMS_OK, "w") as file:
        file.write("params.yaml checked\n")


if __name__ == "__main__":
    run_stage(main)
