"""Stage check_params: every param checked, in seconds, before any stage does real work.

DVC hands a stage only the params that dvc.yaml lists for it, so a key no stage lists
(`trian: {lr: 0.1}`, or `-S +trian.lr=0.1`) would change nothing and say nothing. This
stage lists the whole of params.yaml, and every other stage depends on its output, so a
`dvc repro` or `dvc exp run` with any unknown, misspelt or invalid param stops here with
one line, even when no other stage would have run.

Checked: every key and type (config.load_params), the freeze specs (`freeze` and
`train.unfreeze_to`, whether or not unfreezing is on) against the model's structure, the
arch, the weights name or file (which must lie under models/weights/, and whose keys and
shapes must fit the arch: its structure is read, not its tensors), the image size,
whether the model takes `train.drop_path`, the device (and that it is a GPU for
`train.sync_batchnorm` on several processes), and the data folders (at least 2
class folders with image files, by a scan that reads no image). Settings that cannot take
effect beside the others (unfreezing after the last epoch...) are each a warning line.

Reads:  params.yaml (all of it)
Writes: checks/params.ok    (constant text, so a change of params alone re-runs no later stage)
        checks/params.json  (the values checked; every other stage refuses to run on a
                             params.yaml that holds others: pipeline/checked.py)
"""

import logging
import os
from pathlib import Path

from pipeline.checked import confirm_unchanged, record_checked
from pipeline.cli import UserError, run_stage
from pipeline.config import PRETRAIN_WEIGHTS, Params, Schedule, load_params
from pipeline.data.split import scan_classes
from pipeline.devices import resolve_device
from pipeline.distributed import check_sync_batchnorm
from pipeline.files import atomic_write
from pipeline.models import check_model_params, is_weights_file
from pipeline.paths import PARAMS_OK, WEIGHTS_DIR

log = logging.getLogger("pipeline.check_params")


def check(params: Params) -> None:
    """Everything about `params` that can be known before any data is decoded or model trained."""
    weights = params.model.weights
    folders = {"prepare.data_dir": params.prepare.data_dir, "pretrain.data_dir": params.pretrain.data_dir}
    for key, folder in folders.items():
        if not Path(folder).is_dir():
            raise UserError(f"{key} = {folder!r}: no such folder (run from the project root, or fix the path)")
        if key == "prepare.data_dir" or weights == PRETRAIN_WEIGHTS:  # the folders a stage will read
            try:
                scan_classes(Path(folder))
            except UserError as error:
                raise UserError(f"{key} = {folder!r}: {error}") from None
    device = resolve_device(params.device)
    if params.train.sync_batchnorm and params.train.processes > 1:
        check_sync_batchnorm(device)
    if weights is not None and Path(weights).is_symlink() and not Path(weights).exists():
        # resolve() would follow it out of models/weights/ and blame the folder instead
        raise UserError(f"model.weights = {weights!r} is a broken link (to {os.readlink(weights)!r}): fix or remove it")
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


def ineffective(params: Params) -> list[str]:
    """Settings that cannot take effect beside the others, one line each: legal, but
    probably not what was meant."""
    train, lines = params.train, []
    epochs, after, patience = train.epochs, train.unfreeze_after, train.early_stopping.patience
    if after and after >= epochs:
        lines.append(
            f"train.unfreeze_after = {after} is not smaller than train.epochs = {epochs}: "
            f"train.unfreeze_to ({train.unfreeze_to}) never takes over"
        )
    if after and train.unfreeze_to == params.freeze:
        lines.append(f"train.unfreeze_to = {train.unfreeze_to!r} is freeze itself: unfreezing changes nothing")
    if not after and train.unfreeze_to != "none":
        lines.append(f"train.unfreeze_to = {train.unfreeze_to!r} has no effect while train.unfreeze_after is 0")
    if train.warmup_epochs >= epochs:
        lines.append(
            f"train.warmup_epochs = {train.warmup_epochs} is not smaller than train.epochs = {epochs}: the run "
            f"ends within the warm-up, never reaching train.lr"
        )
    if train.schedule is Schedule.step and train.warmup_epochs + train.step_every >= epochs:
        lines.append(f"train.step_every = {train.step_every}: the step schedule never steps in {epochs} epochs")
    if patience and patience >= epochs - 1:
        lines.append(
            f"train.early_stopping.patience = {patience}: in {epochs} epochs no run can go that long after its "
            "best epoch, so early stopping never stops one"
        )
    if not patience and train.early_stopping.min_delta:
        lines.append("train.early_stopping.min_delta has no effect while train.early_stopping.patience is 0")
    if train.sync_batchnorm and train.processes == 1:
        lines.append("train.sync_batchnorm has no effect with train.processes = 1")
    unfrozen_later = after and after < epochs and train.unfreeze_to != "all_but_head"
    if params.freeze == "all_but_head" and not unfrozen_later:
        for key in ("trunk_lr_scale", "layer_decay"):
            if getattr(train, key) != 1:
                lines.append(f"train.{key} = {getattr(train, key)} has no effect: the trunk stays frozen throughout")
    return lines


def main() -> None:
    params = load_params()
    check(params)
    for line in ineffective(params):
        log.warning("%s", line)
    record_checked(params)
    confirm_unchanged()  # what was recorded is what params.yaml holds now, as DVC will record it
    with atomic_write(PARAMS_OK, "w") as file:
        file.write("params.yaml checked\n")


if __name__ == "__main__":
    run_stage(main)
