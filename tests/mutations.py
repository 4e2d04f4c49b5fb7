"""Break the code on purpose and see which tests notice: a check on the tests themselves.

    python tests/mutations.py [--only NAME ...] [--baseline] [--keep]

Not part of the suite (pytest collects test_*.py only, and this defines no tests). For
each mutation below, it copies the repo (tracked files, and new ones not ignored) to a
temporary folder, applies the mutation there, runs the tests that should catch it in
that copy, and prints which of them failed. A mutation that no test catches is a hole in
the suite. The repo itself is never modified.

A mutation is a text replacement. The pipeline's modules are being reshaped, so it names
no file: the old text must occur exactly once in all of pipeline/**/*.py and tools/**/*.py,
wherever it now lives, or the script stops with an error saying so (update the mutation, then).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, from anywhere: make `testing` importable

from testing.project import copy_repo_files  # noqa: E402

SHOWN_FAILURES = 8  # a mutation that breaks a parametrised test fails dozens of ids alike


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    old: str
    new: str
    tests: tuple[str, ...]  # what to run in the mutated copy


MUTATIONS = [
    Mutation(
        "scramble-labels",
        "split_batches shuffles each split's labels: training at chance",
        'targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)',
        'targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)'
        "[torch.randperm(int(in_split.sum()), generator=torch.Generator().manual_seed(0))]",
        ("tests/test_learning.py", "tests/test_engine.py"),
    ),
    Mutation(
        "crop-labels-by-position",
        "random resized crops come with the labels of the batch's positions, not of the rows visited",
        "        list(self._pool.map(lambda job: cut(*job), jobs))\n        return out, self.targets[index]",
        "        list(self._pool.map(lambda job: cut(*job), jobs))\n        return out, self.targets[: len(index)]",
        ("tests/test_crops.py",),
    ),
    Mutation(
        "no-resume",
        "a restarted train stage finds no checkpoints of its killed run and starts over",
        "        paths = self.checkpoints()\n        for index, path in enumerate(paths):",
        "        paths = []\n        for index, path in enumerate(paths):",
        ("tests/test_resume.py",),
    ),
    Mutation(
        "fingerprint-without-inputs",
        "a run's fingerprint leaves out the files it reads: a killed run resumes on other starting weights",
        "for name, file in [*((path, path) for path in inputs), *code]:",
        "for name, file in code:",
        ("tests/test_resume.py::test_other_params_or_weights_never_resume_another_run",),
    ),
    Mutation(
        "prune-held-run",
        "pruning old run folders removes one that a live trainer holds",
        "        if _locked(path):\n            continue",
        "        if False:\n            continue",
        ("tests/test_runs.py", "-k", "live_trainer_holds"),
    ),
    Mutation(
        "no-curve-replay",
        "a resumed train stage does not replay the kept epochs into dvclive's curves",
        "    for record in run.history:\n        log_epoch(live, record)\n",
        "",
        ("tests/test_resume.py", "-k", "uninterrupted_result"),
    ),
    Mutation(
        "select-on-test",
        "select_best keeps the checkpoint the test split prefers, not validation",
        "best = pick_best(scores, params.metric, params.mode)",
        'best = pick_best(scores, params.metric.replace("val_", "test_"), params.mode)',
        ("tests/test_select_best.py",),
    ),
    Mutation(
        "evaluate-stale-weights",
        "evaluate scores every epoch with the first checkpoint's weights",
        "            model.load_state_dict(checkpoint[WEIGHTS[weights]])\n",
        "            model.load_state_dict(checkpoint[WEIGHTS[weights]]) if epoch == 1 else None\n",
        ("tests/test_evaluate.py",),
    ),
    Mutation(
        "decay-vit-tokens",
        "weight decay ignores the model's no_weight_decay(): ViT's class token and position embedding decay",
        " or any(fnmatch.fnmatch(name, p) for p in patterns)",
        "",
        ("tests/test_recipes.py", "tests/test_timm.py", "-k", "parameter_groups or torchvision_vit"),
    ),
    Mutation(
        "ema-without-warmup",
        "the train stage keeps its moving average at ema_decay from the first update, without the warm-up",
        "weights_average(model, config.ema_decay, config.ema_warmup)",
        "weights_average(model, config.ema_decay)",
        ("tests/test_recipes.py", "-k", "warms_up"),
    ),
    Mutation(
        "head-dropout-frozen",
        "all_but_head freezes the classifier's own dropout into eval mode with the backbone",
        "        dropout = head_dropout(model, head)\n",
        "        dropout = []\n",
        ("tests/test_feature_cache.py", "-k", "own_dropout"),
    ),
    Mutation(
        "break-normalize",
        "normalisation forgets to scale the mean to 0-255",
        "torch.tensor(mean, device=device).view(shape) * 255,",
        "torch.tensor(mean, device=device).view(shape),",
        ("tests/test_engine.py", "tests/test_predict.py"),
    ),
    Mutation(
        "unchecked-params",
        "a stage runs on whatever params.yaml holds when it starts, checked or not",
        "    differences = _differences(params)\n",
        '    differences = ""\n',
        ("tests/test_check_params.py", "-k", "refused_exp_run and start"),
    ),
    Mutation(
        "unconfirmed-params",
        "the train stage does not look at params.yaml again at its end",
        "    distributed.stop(run.ranks)\n    confirm_unchanged()\n",
        "    distributed.stop(run.ranks)\n",
        ("tests/test_check_params.py", "-k", "refused_exp_run and finish"),
    ),
    Mutation(
        "no-weights-fit-check",
        "check_params reads a weights file but does not compare its keys and shapes with the arch",
        '            fit_weights(skeleton, arch, head, weights_path, {k: v.to("meta") for k, v in state.items()})\n',
        "            pass\n",
        ("tests/test_check_params.py", "-k", "does_not_fit or before_prepare"),
    ),
    Mutation(
        "frozen-bn-trains",
        "frozen modules are put in training mode: frozen BatchNorm updates its running statistics",
        "        model.get_submodule(name).eval()\n",
        "        model.get_submodule(name).train()\n",
        (
            "tests/test_models.py::test_all_but_head_training_leaves_every_trunk_tensor_bit_identical",
            "tests/test_claims.py",
        ),
    ),
    Mutation(
        "duplicates-split-apart",
        "duplicate images are never grouped, so copies of one picture land in train and test",
        "            j = root(first.setdefault(key, i))\n",
        "            j = root(i)\n",
        ("tests/test_data.py", "tests/test_prepare.py"),
    ),
    Mutation(
        "checksum-unchecked",
        "a checkpoint whose contents no longer match its checksum loads as if whole",
        "    if stored != content_digest(checkpoint):\n",
        "    if False:\n",
        ("tests/test_checkpoints.py",),
    ),
    Mutation(
        "f1-is-recall",
        "macro-F1 is computed as macro recall",
        "    f1 = 2 * true_positive / (support + predicted).clamp(min=1)\n",
        "    f1 = true_positive / support.clamp(min=1)\n",
        ("tests/test_metrics.py", "tests/test_evaluate.py"),
    ),
    Mutation(
        "select-mode-inverted",
        "select.mode: min keeps the checkpoint with the largest value",
        "    best_value = values[usable].min() if mode is Mode.min else values[usable].max()\n",
        "    best_value = values[usable].max() if mode is Mode.min else values[usable].min()\n",
        ("tests/test_select_best.py",),
    ),
    Mutation(
        "predict-train-mode",
        "evaluation and prediction run the model in training mode (BatchNorm uses batch statistics)",
        "    model.eval()\n    place_model(model, data.device)",
        "    model.train()\n    place_model(model, data.device)",
        ("tests/test_evaluate.py", "tests/test_predict.py", "tests/test_engine.py"),
    ),
    Mutation(
        "own-batchnorm-statistics",
        "each training process validates with its own BatchNorm statistics, not those rank 0 saves",
        "    share_buffers(model, loop.ranks)\n",
        "",
        ("tests/test_distributed.py", "-k", "validation_with_batchnorm"),
    ),
    Mutation(
        "orphaned-ranks",
        "training processes are not tied to their launcher: they outlive a kill of its process group",
        "    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)\n",
        "",
        ("tests/test_distributed.py", "-k", "process_group"),
    ),
    Mutation(
        "padding-counts",
        "the padding that evens out an epoch's shards counts in the loss",
        'summed = (criterion(outputs, targets, reduction="none") * real).sum()',
        'summed = criterion(outputs, targets, reduction="none").sum()',
        ("tests/test_distributed.py", "-k", "add_up"),
    ),
    Mutation(
        "crop-whole-pixels",
        "training crops start at the copy's whole pixel, not at the box's own place there",
        "        x0, y0 = left * scale_x, top * scale_y\n",
        "        x0, y0 = math.floor(left * scale_x), math.floor(top * scale_y)\n",
        ("tests/test_crops.py", "-k", "resized_crop"),
    ),
    Mutation(
        "decode-no-margin",
        "evaluation decodes a JPEG at the smallest DCT scale that covers the resize size, as before",
        "DECODE_MARGIN = 5",
        "DECODE_MARGIN = 1",
        ("tests/test_preprocessing.py", "-k", "reduced_scale"),
    ),
    Mutation(
        "export-std-swapped",
        "the image export divides by the std in the reverse channel order",
        "inputs = (inputs.float() - self.mean) / self.std  # batches.normalize",
        "inputs = (inputs.float() - self.mean) / self.std.flip(1)  # batches.normalize",
        ("tests/test_export.py", "-k", "tools_predicts_probabilities"),
    ),
    Mutation(
        "grad-cam-against",
        "Grad-CAM weighs each map by minus its mean gradient: the heat shows what speaks against the class",
        "weights = gradients.float().mean(dim=(2, 3), keepdim=True)",
        "weights = -gradients.float().mean(dim=(2, 3), keepdim=True)",
        ("tests/test_heatmaps.py", "-k", "by_hand or equals_cam"),
    ),
    Mutation(
        "gallery-of-hits",
        "select-best's list and picture of the mistakes hold the test images the model gets right",
        'wrong = predictions[predictions["actual"] != predictions["predicted"]]',
        'wrong = predictions[predictions["actual"] == predictions["predicted"]]',
        ("tests/test_interpretation.py",),
    ),
    Mutation(
        "strongest-class-first",
        "the per-class table puts the best classes first, the weakest last",
        'table.sort_values(["f1", "recall", "class"], kind="stable")',
        'table.sort_values(["f1", "recall", "class"], ascending=False, kind="stable")',
        ("tests/test_interpretation.py",),
    ),
    Mutation(
        "tta-no-flip",
        "test-time flips average each image's logits with its own, not its mirror's",
        "            outputs = (outputs + model(images.flip(-1))) / 2\n",
        "            outputs = (outputs + model(images)) / 2\n",
        ("tests/test_engine.py", "-k", "flip_tta"),
    ),
    Mutation(
        "export-cache-by-arch",
        "select-best reuses a cached export for any checkpoint under the same code and torch, whatever its weights",
        'key = fingerprint({"checkpoint": checksum, "program": make.__name__, "torch": torch.__version__}, [])',
        'key = fingerprint({"program": make.__name__, "torch": torch.__version__}, [])',
        ("tests/test_export.py", "-k", "exported_again"),
    ),
    Mutation(
        "sgd-without-momentum",
        "the optimizer is SGD without the momentum that train.momentum sets",
        "torch.optim.SGD(settings, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)",
        "torch.optim.SGD(settings, lr=params.lr, weight_decay=params.weight_decay)",
        ("tests/test_recipes.py", "-k", "takes_the_steps"),
    ),
    Mutation(
        "adamw-is-adam",
        "train.optimizer adamw builds Adam, whose weight decay is added to the gradient instead of decoupled",
        "torch.optim.AdamW(settings, lr=params.lr, weight_decay=params.weight_decay)",
        "torch.optim.Adam(settings, lr=params.lr, weight_decay=params.weight_decay)",
        ("tests/test_recipes.py", "-k", "norms_and_biases"),
    ),
    Mutation(
        "schedule-one-epoch-late",
        "the train stage's learning-rate schedule runs one epoch behind (epoch 1 at the factor of an epoch 0)",
        "lambda index: schedule(index + 1)",
        "lambda index: schedule(index)",
        ("tests/test_recipes.py", "-k", "takes_the_steps"),
    ),
    Mutation(
        "class-weights-from-val",
        "train.class_weights: balanced counts the classes of the validation split, not the train split",
        'class_weights(config.class_weights, splits["train"].targets',
        'class_weights(config.class_weights, splits["val"].targets',
        ("tests/test_recipes.py", "-k", "takes_the_steps"),
    ),
    Mutation(
        "erasing-probability-ignored",
        "random erasing erases each image with probability 0.5, whatever train.augment.erasing says",
        "v2.RandomErasing(p=params.erasing, value=0)",
        "v2.RandomErasing(p=0.5, value=0)",
        ("tests/test_augment.py", "-k", "erasing"),
    ),
    Mutation(
        "early-stop-on-val-loss",
        "early stopping watches val_loss whatever select.metric names",
        "stop = early_stop(run.history, params.select.metric, params.select.mode, config.early_stopping)",
        'stop = early_stop(run.history, "val_loss", params.select.mode, config.early_stopping)',
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "ema-decay-one-accepted",
        "train.ema_decay = 1 passes the checks: an average that never leaves the starting weights",
        "_require(0 <= train.ema_decay < 1,",
        "_require(0 <= train.ema_decay <= 1,",
        ("tests/test_config.py", "-k", "documented_range"),
    ),
    Mutation(
        "confidence-is-logit",
        "evaluate writes each test image's largest logit as its confidence, not its probability",
        'confidence, predicted = logits["test"].softmax(dim=1).max(dim=1)',
        'confidence, predicted = logits["test"].max(dim=1)',
        ("tests/test_evaluate.py",),
    ),
    Mutation(
        "select-tie-average-first",
        "on a tie select-best keeps the raw weights of a later epoch over an earlier epoch's average",
        '.sort_values(["epoch", "ema"])',
        '.sort_values(["ema", "epoch"])',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "best-pt-raw-weights",
        "when the weights' moving average wins, best.pt holds that epoch's raw weights",
        'checkpoint["model_state_dict"] = checkpoint[WEIGHTS[weights]]',
        'checkpoint["model_state_dict"] = checkpoint[WEIGHTS["raw"]]',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "heat-of-the-true-class",
        "the picture of the mistakes shows each image's heat map for its true class, not the predicted one",
        'heat, where = heat_maps(checkpoint, pixels, shown["predicted"].tolist())',
        'heat, where = heat_maps(checkpoint, pixels, shown["actual"].tolist())',
        ("tests/test_interpretation.py",),
    ),
    Mutation(
        "split-share-floored",
        "prepare rounds each class's val and test shares down, not to the nearest image",
        "room = [max(1, round(fraction * items))",
        "room = [max(1, int(fraction * items))",
        ("tests/test_data.py", "tests/test_prepare.py", "-k", "stratified or reproducible"),
    ),
    Mutation(
        "checksum-ignores-dtype",
        "a checkpoint's checksum covers its tensors' bytes and shapes but not their dtypes",
        'digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())',
        'digest.update(f"T{tuple(tensor.shape)}".encode())',
        ("tests/test_checkpoints.py", "-k", "damaged"),
    ),
    Mutation(
        "prefix-off-some-keys",
        "a weights file's wrapper prefix (module.) is taken off when any key has it, not only when every key does",
        "            if all(key.startswith(prefix) for key in state):",
        "            if any(key.startswith(prefix) for key in state):",
        ("tests/test_models.py", "-k", "do_not_fit or wrapped"),
    ),
    Mutation(
        "state-dict-entries-reordered",
        "a dict holding weights under both 'state_dict' and 'model' gives 'model's, not the documented first",
        'STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")',
        'STATE_DICT_ENTRIES = ("model", "state_dict", "model_state_dict")',
        ("tests/test_models.py", "-k", "documented_order"),
    ),
    Mutation(
        "predict-epoch-without-tta",
        "tools.predict on an epoch's checkpoint ignores the test-time augmentation evaluate used",
        "    tta = args.tta or evaluated_tta(checkpoint, args.model)",
        '    tta = args.tta or checkpoint.get("tta", "none")',
        ("tests/test_recipes.py", "-k", "moving_average_is_kept"),
    ),
    Mutation(
        "launcher-blames-the-exit-code",
        "of two ranks that ended in the same second, the launcher names the one that exited, not the one killed",
        "key=lambda r: (causes[r].timestamp, causes[r].exitcode >= 0, r))",
        "key=lambda r: (causes[r].timestamp, causes[r].exitcode < 0, r))",
        ("tests/test_distributed.py", "-k", "names_the_rank"),
    ),
    Mutation(
        "broken-pipe-exits-zero",
        "`python -m tools.predict ... | head` stops quietly but exits 0, so a pipeline under pipefail sees no stop",
        "        sys.exit(EXIT_BROKEN_PIPE)",
        "        sys.exit(0)",
        ("tests/test_claims.py", "-k", "piped_into_head"),
    ),
    Mutation(
        "blank-heat-for-models-without-a-layer",
        "a model without a layer for Grad-CAM gets blank heat maps drawn beside its mistakes instead of none",
        "        return None, why\n",
        "        return np.zeros((len(pixels), spec.image_size, spec.image_size)), why\n",
        ("tests/test_interpretation.py",),
    ),
    Mutation(
        "channels-last-heat-transposed",
        "Grad-CAM reads a channels-last map (timm's Swin) with its rows and columns swapped",
        "            return activations.permute(0, 3, 1, 2)",
        "            return activations.permute(0, 3, 2, 1)",
        ("tests/test_heatmaps.py",),
    ),
    Mutation(
        "randaugment-magnitude-ignored",
        "RandAugment runs at magnitude 9 whatever train.augment.randaugment_magnitude says",
        "num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude, interpolation=bilinear",
        "num_ops=params.randaugment_ops, magnitude=9, interpolation=bilinear",
        ("tests/test_augment.py",),
    ),
    Mutation(
        "decay-norms-and-biases-ignored",
        "the train stage leaves BatchNorm and biases undecayed whatever train.decay_norms_and_biases says",
        "        decay_norms_and_biases=config.decay_norms_and_biases, layer_decay=config.layer_decay,",
        "        decay_norms_and_biases=False, layer_decay=config.layer_decay,",
        ("tests/test_recipes.py", "-k", "decaying_norms"),
    ),
    Mutation(
        "export-cache-keeps-the-oldest",
        "the export cache prunes its newest programs and keeps the oldest six",
        "    for _, old in sorted(dated, reverse=True)[KEEP_EXPORTS:]:",
        "    for _, old in sorted(dated)[KEEP_EXPORTS:]:",
        ("tests/test_export.py",),
    ),
    Mutation(
        "checkpoint-write-failure-known-one-way",
        "torch's 'file write failed' (a full disk while writing a checkpoint) ends train in a traceback, and an"
        " unrelated RuntimeError is called a full disk",
        'and "file write failed" not in str(error):',
        'and "file write failed" in str(error):',
        ("tests/test_faults.py", "-k", "failed_checkpoint_write"),
    ),
    Mutation(
        "every-runtime-error-taken-for-a-full-disk",
        "any RuntimeError in a stage (a model bug) ends in 'writing a checkpoint failed (is the disk full?)'"
        " instead of its traceback",
        '"file write failed" not in str(error):\n            raise\n',
        '"file write failed" not in str(error):\n            pass\n',
        ("tests/test_faults.py", "-k", "failed_checkpoint_write"),
    ),
    Mutation(
        "full-disk-line-drops-the-error",
        "a full disk's one line says 'no space left on the disk (None)' where the error has no file name, instead"
        " of the error itself",
        "error.filename or error, SAFE_TO_RERUN",
        "error.filename and error, SAFE_TO_RERUN",
        ("tests/test_export.py", "-k", "full_disk"),
    ),
    Mutation(
        "full-disk-is-a-traceback",
        "a full disk while a stage writes a file other than a checkpoint ends in a traceback, not one line",
        "        if error.errno not in (errno.ENOSPC, errno.EDQUOT):\n            raise",
        "        if True:\n            raise",
        ("tests/test_export.py", "-k", "full_disk"),
    ),
    Mutation(
        "confusion-of-nothing",
        "the confusion matrix plot shows every test image as predicted right",
        '    write_csv(predictions[["actual", "predicted"]], BEST_CONFUSION)',
        '    write_csv(predictions.assign(predicted=predictions["actual"])[["actual", "predicted"]], BEST_CONFUSION)',
        ("tests/test_plots.py", "-k", "every_plot"),
    ),
    Mutation(
        "near-copies-of-other-classes-dropped",
        "prepare drops near-duplicates with different labels as if they were the same bytes",
        '    labels_of = found.groupby("sha1")["label"].agg(lambda labels: sorted(set(labels)))\n'
        '    conflicting = found["sha1"].map(',
        '    labels_of = found.groupby("dhash")["label"].agg(lambda labels: sorted(set(labels)))\n'
        '    conflicting = found["dhash"].map(',
        ("tests/test_prepare.py", "-k", "keeps_duplicates"),
    ),
    Mutation(
        "evaluate-shards-unsorted",
        "evaluate on several processes writes eval/scores.csv rank by rank (1, 3, 5, 2, 4), not in epoch order",
        'rows = sorted((row for part, _ in gathered for row in part), key=lambda row: row["epoch"])',
        "rows = [row for part, _ in gathered for row in part]",
        ("tests/test_distributed.py", "-k", "evaluate_on_two_processes"),
    ),
    Mutation(
        "val-scored-without-tta",
        "with evaluate.tta: hflip, only the test split is scored with mirror images; val scores (which choose) are not",
        "logits = {split: predict(model, data, batch_size, flip=flip) for split, data in splits.items()}",
        "logits = {split: predict(model, data, batch_size, flip=flip and split == 'test')"
        " for split, data in splits.items()}",
        ("tests/test_recipes.py", "-k", "moving_average_is_kept"),
    ),
    Mutation(
        "evaluate-without-checkpoints-succeeds",
        "evaluate with no checkpoints writes an empty eval/scores.csv and exits 0 instead of naming the train stage",
        '    if not paths:\n        raise UserError(f"no checkpoints in {CHECKPOINT_DIR}/: run the train stage first")',
        '    if False:\n        raise UserError(f"no checkpoints in {CHECKPOINT_DIR}/: run the train stage first")',
        ("tests/test_errors.py", "-k", "evaluate"),
    ),
    Mutation(
        "select-best-chosen-missing-traceback",
        "select-best only checks that some checkpoint exists, not the chosen one: a KeyError traceback",
        "    if chosen not in paths:\n",
        "    if not paths:\n",
        ("tests/test_errors.py", "-k", "select"),
    ),
    Mutation(
        "gallery-of-twelve",
        "best/mistakes.png shows the 12 most confident mistakes, not the documented 16",
        "GALLERY = 16  # mistakes shown in best/mistakes.png",
        "GALLERY = 12  # mistakes shown in best/mistakes.png",
        ("tests/test_interpretation.py", "-k", "most_confident"),
    ),
    Mutation(
        "jet-anchors-moved",
        "the heat colour map's pure blue and pure red sit at 0.25 and 0.75 instead of jet's 0.125 and 0.875",
        "JET = ((0.0, 0.125, 0.375, 0.625, 0.875, 1.0),",
        "JET = ((0.0, 0.25, 0.375, 0.625, 0.75, 1.0),",
        ("tests/test_interpretation.py", "-k", "jet"),
    ),
    Mutation(
        "reused-export-not-refreshed",
        "a program copied from the export cache keeps its old date: the checkpoint used last is pruned first",
        "            os.utime(cached)  # the newest now, for cache_export's pruning\n",
        "",
        ("tests/test_export.py", "-k", "newest_six"),
    ),
    Mutation(
        "export-metadata-without-arch",
        "the .pt2 files' metadata.json leaves out the arch",
        'METADATA_KEYS = ("arch", "classes", "image_size", "resize_size", "interpolation", "mean", "std")',
        'METADATA_KEYS = ("classes", "image_size", "resize_size", "interpolation", "mean", "std")',
        ("tests/test_export.py", "-k", "tools_predicts_probabilities"),
    ),
    Mutation(
        "image-export-refuses-tiny",
        "models/best_image.pt2 refuses images with a side under 4 px",
        'sides = {0: torch.export.Dim("height", min=2), 1: torch.export.Dim("width", min=2)}',
        'sides = {0: torch.export.Dim("height", min=4), 1: torch.export.Dim("width", min=4)}',
        ("tests/test_export.py", "-k", "tools_predicts_probabilities"),
    ),
    Mutation(
        "predict-paths-not-deduplicated",
        "tools.predict lists an image once per time it is named (or named and found in a folder named)",
        "    return list(dict.fromkeys(entries))",
        "    return entries",
        ("tests/test_predict.py", "-k", "each_path_gets"),
    ),
    Mutation(
        "predict-named-file-needs-extension",
        "a file named on the command line without an image extension gets a 'not a file' row instead of being read",
        '        elif path.is_file():\n            entries.append((path, ""))',
        '        elif path.is_file() and is_image_name(path):\n            entries.append((path, ""))',
        ("tests/test_predict.py", "-k", "each_path_gets"),
    ),
    Mutation(
        "predict-fails-by-files-count",
        "tools.predict compares its failures with the files it tried, not with every path listed",
        "    if failed == len(predictions):",
        "    if failed == len(files):",
        ("tests/test_predict.py", "-k", "each_path_gets"),
    ),
    Mutation(
        "predict-accepts-zero",
        "--top-k 0 and --batch-size 0 pass the option check",
        "    if value < 1:\n        raise argparse.ArgumentTypeError",
        "    if value < 0:\n        raise argparse.ArgumentTypeError",
        ("tests/test_errors.py", "-k", "outside_an_option"),
    ),
    Mutation(
        "evaluate-damage-of-other-ranks-ignored",
        "evaluate on several processes stops only for damaged checkpoints that process 0 loaded",
        "    return rows, sorted(error for _, errors in gathered for error in errors)",
        "    return rows, damaged",
        ("tests/test_distributed.py", "-k", "evaluate_on_two_processes"),
    ),
    Mutation(
        "export-machine-errors-stubbed",
        "an OSError or MemoryError while exporting leaves a 'not a model' stub and the stage succeeds",
        "    except (OSError, MemoryError):  # the machine's trouble, not the model's: fail the stage\n        raise\n",
        "",
        ("tests/test_export.py", "-k", "full_disk"),
    ),
    Mutation(
        "finite-check-drops-the-parent-key",
        "the finite-number check names a key two levels deep without its parent group (augment.mixup_alpha)",
        '_validate_finite(value, f"{prefix}{f.name}.")',
        '_validate_finite(value, f"{f.name}.")',
        ("tests/test_config.py", "-k", "quote_the_value_as_written"),
    ),
    Mutation(
        "data-folders-scanned-only-when-pretraining",
        "check_params scans prepare.data_dir for class folders only when model.weights is pretrain",
        'if key == "prepare.data_dir" or weights == PRETRAIN_WEIGHTS:',
        "if weights == PRETRAIN_WEIGHTS:",
        ("tests/test_check_params.py", "-k", "scanned_only"),
    ),
    Mutation(
        "weights-dir-not-resolved",
        "the models/weights/ check compares paths as written: models/weights/../mine.pt is accepted",
        "WEIGHTS_DIR.resolve() not in Path(weights).resolve().parents",
        "WEIGHTS_DIR not in Path(weights).parents",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "min-delta-warned-with-patience",
        "check_params warns that min_delta has no effect even while early stopping is on",
        "if not patience and train.early_stopping.min_delta:",
        "if train.early_stopping.min_delta:",
        ("tests/test_check_params.py", "-k", "take_effect_are_not_warned"),
    ),
    Mutation(
        "sync-batchnorm-warned-with-several-processes",
        "check_params warns that sync_batchnorm has no effect whatever train.processes is",
        "if train.sync_batchnorm and train.processes == 1:",
        "if train.sync_batchnorm:",
        ("tests/test_check_params.py", "-k", "take_effect_are_not_warned"),
    ),
    Mutation(
        "trunk-unfrozen-to-all-but-head",
        "unfreezing to all_but_head counts as unfreezing the trunk: no warning for trunk_lr_scale/layer_decay",
        ' and train.unfreeze_to != "all_but_head"',
        "",
        ("tests/test_check_params.py", "-k", "cannot_take_effect_are_warned"),
    ),
    Mutation(
        "check-params-unconfirmed",
        "check_params does not look at params.yaml again after recording what it checked",
        "    confirm_unchanged()  # what was recorded is what params.yaml holds now, as DVC will record it\n",
        "",
        ("tests/test_check_params.py", "-k", "changed_while_it_ran"),
    ),
    Mutation(
        "confirm-ignores-unloadable-params",
        "a params.yaml that no longer loads at a stage's end counts as unchanged",
        '    except UserError as error:\n        differences = f"it no longer loads ({error})"',
        "    except UserError:\n        return",
        ("tests/test_check_params.py", "-k", "changed_while_it_ran"),
    ),
    Mutation(
        "unreadable-record-passes",
        "a checks/params.json that cannot be read counts as no difference: the stage runs unchecked",
        '        return f"{CHECKED_PARAMS} cannot be read ({type(error).__name__})"',
        '        return ""',
        ("tests/test_errors.py", "-k", "record"),
    ),
    Mutation(
        "keys-missing-from-the-record-pass",
        "only keys both in params.yaml and in the record are compared",
        "for key in sorted(now.keys() | checked.keys())",
        "for key in sorted(now.keys() & checked.keys())",
        ("tests/test_errors.py", "-k", "record"),
    ),
    Mutation(
        "null-weights-from-train-seed",
        "model.weights: null draws the random weights from train.seed, not pretrain.seed",
        "torch.manual_seed(params.pretrain.seed)  # what `null` draws from",
        "torch.manual_seed(params.train.seed)  # what `null` draws from",
        ("tests/test_recipes.py", "-k", "draw_from_pretrain_seed"),
    ),
    Mutation(
        "pretrain-order-ignores-seed",
        "pretraining's batch order is seeded with 0 whatever pretrain.seed says",
        "loop = LoopOptions(batch_size=config.batch_size, seed=config.seed)",
        "loop = LoopOptions(batch_size=config.batch_size)",
        ("tests/test_recipes.py", "-k", "draw_from_pretrain_seed"),
    ),
    Mutation(
        "weights-stage-unconfirmed",
        "the weights stage does not look at params.yaml again at its end",
        "        sizing.interpolation,\n    )\n    confirm_unchanged()\n",
        "        sizing.interpolation,\n    )\n",
        ("tests/test_check_params.py", "-k", "changed_while_it_ran"),
    ),
    Mutation(
        "quota-exceeded-is-a-traceback",
        "an exceeded disk quota (EDQUOT) while writing ends in a traceback, not one line and exit 1",
        "if error.errno not in (errno.ENOSPC, errno.EDQUOT):",
        "if error.errno not in (errno.ENOSPC,):",
        ("tests/test_export.py", "-k", "full_disk"),
    ),
    Mutation(
        "cuda-index-off-by-one",
        "device: cuda:N with N equal to the device count passes check_params (then a CUDA traceback)",
        "if device.index is not None and device.index >= torch.cuda.device_count():",
        "if device.index is not None and device.index > torch.cuda.device_count():",
        ("tests/test_gpu_path.py", "-k", "cuda_index"),
    ),
    Mutation(
        "epoch-seed-collides-across-seeds",
        "each epoch's generator is seeded with seed + epoch: seed s's epoch e+1 repeats seed s+1's epoch e",
        "return torch.Generator().manual_seed(seed * 100_003 + epoch)",
        "return torch.Generator().manual_seed(seed + epoch)",
        ("tests/test_engine.py", "-k", "epoch_generator"),
    ),
    Mutation(
        "data-order-ignores-train-seed",
        "the train stage's epochs shuffle and augment with seed 0 whatever train.seed says",
        "        seed=config.seed,\n        frozen=tuple(net_frozen),",
        "        frozen=tuple(net_frozen),",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "hflip-param-ignored",
        "the train stage never flips: train.augment.hflip does not reach the training loop",
        "        hflip=config.augment.hflip,\n",
        "",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "crop-aspect-param-ignored",
        "the train stage's random resized crops are always square: train.augment.max_aspect is dropped",
        "        max_aspect=config.augment.max_aspect,\n",
        "",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "train-crops-from-val",
        "with random resized crops on, the train stage cuts its training crops from the val split",
        'splits["train"] = crop_batches(copies, manifest, "train", spec, device)',
        'splits["train"] = crop_batches(copies, manifest, "val", spec, device)',
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "policy-normalisation-swapped",
        "the train stage gives the augmentation its mean and std swapped: policies see clipped, wrong pixels",
        "augment = batch_augmentation(config.augment, len(classes), spec.mean, spec.std, device)",
        "augment = batch_augmentation(config.augment, len(classes), spec.std, spec.mean, device)",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "split-steps-without-class-weights",
        "with accumulate_steps > 1 or several processes, each step's weighted loss is divided by its item count, "
        "not its class weights' total",
        "        class_weights=run.class_weights,\n",
        "",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "curves-one-epoch-early",
        "dvclive's curves put epoch k's values at step k - 1 (the lr plot's epoch axis starts at 0)",
        '    live.step = record["epoch"]\n',
        '    live.step = record["epoch"] - 1\n',
        ("tests/test_plots.py", "-k", "every_plot"),
    ),
    Mutation(
        "transform-input-forgotten",
        "the spec no longer records Inception's/GoogLeNet's transform_input: checkpoints of pretrained ones "
        "rebuild without it",
        '        model_kwargs["transform_input"] = model.transform_input\n',
        "        pass\n",
        ("tests/test_models.py", "-k", "input_transform"),
    ),
    Mutation(
        "checkpoint-kwargs-override-params",
        "a pipeline checkpoint's model kwargs override the params' (its drop path rate wins over train.drop_path)",
        "        model_kwargs = {**source.model_kwargs, **model_kwargs}",
        "        model_kwargs = {**model_kwargs, **source.model_kwargs}",
        ("tests/test_models.py", "-k", "wins_over"),
    ),
    Mutation(
        "drop-path-zero-refused-on-timm",
        "check_params probes the model at the rate itself: train.drop_path 0 is refused for every timm model",
        "family_of(arch).drop_path_kwargs(arch, max(rate, 0.1))",
        "family_of(arch).drop_path_kwargs(arch, rate)",
        ("tests/test_check_params.py", "-k", "rate_of_zero"),
    ),
    Mutation(
        "swin-position-tables-decayed",
        "torchvision's Swin and MaxViT relative position tables get weight decay",
        'TOKEN_NAMES = ("class_token", "position_embedding", "pos_embedding", "relative_position_bias_table")',
        'TOKEN_NAMES = ("class_token", "position_embedding", "pos_embedding")',
        ("tests/test_recipes.py", "-k", "position_tables"),
    ),
    Mutation(
        "resize-ratio-truncated",
        "the resize for another crop size is truncated, not rounded (resnet18's weights at 32 px: 36, not 37)",
        "return Sizing(round(image_size * stated.resize / stated.crop), image_size, stated.interpolation)",
        "return Sizing(int(image_size * stated.resize / stated.crop), image_size, stated.interpolation)",
        ("tests/test_models.py", "-k", "resize_to_crop"),
    ),
    Mutation(
        "squeezenet-head-on-features",
        "the feature cache is used even where the head's output is not the model's (SqueezeNet): training fails",
        '            if output is not captured["output"]:\n                return None\n',
        "            if False:\n                return None\n",
        ("tests/test_feature_cache.py", "-k", "whole_model"),
    ),
    Mutation(
        "fingerprint-without-select",
        "a run's fingerprint leaves out select.*: a run stopped early on another metric is taken as this one",
        '        "select": dataclasses.asdict(params.select),  # early stopping watches select.metric\n',
        "",
        ("tests/test_resume.py", "-k", "never_resume"),
    ),
    Mutation(
        "scan-listing-order",
        "scan_folder keeps os.listdir's order: the manifest's rows and the split for a seed depend on the file system",
        'names = sorted(name for name in os.listdir(directory) if not name.startswith("."))',
        'names = [name for name in os.listdir(directory) if not name.startswith(".")]',
        ("tests/test_data.py", "-k", "listing"),
    ),
    Mutation(
        "root-link-not-a-class",
        "a link in the data folder to a class folder is skipped as a 'link to a folder' instead of being a class",
        "        if entry.is_dir():\n",
        "        if entry.is_dir() and not entry.is_symlink():\n",
        ("tests/test_prepare.py", "-k", "messy"),
    ),
    Mutation(
        "one-usable-class-accepted",
        "prepare accepts a data folder where only one class has decodable images and writes a 1-class manifest",
        "    if len(classes) < 2:\n",
        "    if not classes:\n",
        ("tests/test_prepare.py", "-k", "one_usable"),
    ),
    Mutation(
        "split-counts-groups-as-one",
        "a group of duplicates counts as one image towards its split's share: val/test overshoot by many groups",
        "            room[current] -= len(units[index])\n",
        "            room[current] -= 1\n",
        ("tests/test_data.py", "-k", "less_than_a_group"),
    ),
    Mutation(
        "cache-key-without-filter",
        "the decoded-image cache is keyed by resize and crop only: a bicubic model reads a bilinear model's inputs",
        '        return {"resize_size": self.resize, "image_size": self.crop, "interpolation": self.interpolation}',
        '        return {"resize_size": self.resize, "image_size": self.crop}',
        ("tests/test_data.py", "-k", "another_filter"),
    ),
    Mutation(
        "cache-key-without-code",
        "the decoded-image cache's names leave out the code that decodes: edited decoding reads old pixels",
        "    key = [code_version(), sizing.to_dict(),",
        "    key = [sizing.to_dict(),",
        ("tests/test_prepare.py", "-k", "other_decoding_code"),
    ),
    Mutation(
        "cache-key-without-pillow",
        "the decoded-image cache's names leave out Pillow's version: another Pillow reads old pixels",
        "    digest = hashlib.sha256(PIL.__version__.encode())",
        "    digest = hashlib.sha256()",
        ("tests/test_prepare.py", "-k", "other_decoding_code"),
    ),
    Mutation(
        "start-keeps-the-head",
        "the weights stage saves the whole model, the weights file's own head included, as models/start.pt",
        '        "model_state_dict": backbone_state(built.model, built.spec.head),',
        '        "model_state_dict": built.model.state_dict(),',
        ("tests/test_models.py", "-k", "users_wrapped"),
    ),
    Mutation(
        "sync-batchnorm-refused-only-by-train",
        "check_params lets train.sync_batchnorm on the CPU through: the train stage refuses it after prepare",
        "    if params.train.sync_batchnorm and params.train.processes > 1:\n        check_sync_batchnorm(device)",
        "    if False:\n        check_sync_batchnorm(device)",
        ("tests/test_config.py", "-k", "param_mistakes"),
    ),
    Mutation(
        "tta-flips-upside-down",
        "test-time flips mirror each image top to bottom: evaluate, predict and the image export agree, and are wrong",
        "            outputs = (outputs + model(images.flip(-1))) / 2\n",
        "            outputs = (outputs + model(images.flip(-2))) / 2\n",
        ("tests/test_export.py", "-k", "tools_predicts"),
    ),
    Mutation(
        "features-cached-with-augmentation",
        "head-only training uses features computed once even with flips on: the augmentation is silently lost",
        '    if spec.kind == "all_but_head" and config.cache_features and not augments(config.augment):',
        '    if spec.kind == "all_but_head" and config.cache_features:',
        ("tests/test_feature_cache.py", "-k", "random_augmentation"),
    ),
    Mutation(
        "ema-writes-counters-into-the-model",
        "the moving average copies its BatchNorm counters into the model, not the model's into it",
        "                mine.copy_(theirs)",
        "                theirs.copy_(mine)",
        ("tests/test_recipes.py", "-k", "average_warms_up"),
    ),
    Mutation(
        "first-n-skips-the-stem",
        "first:N freezes the N stages after the stem, and leaves the stem training",
        "        frozen = stages[: spec.count]",
        "        frozen = stages[1 : spec.count + 1]",
        ("tests/test_models.py", "-k", "partial_freeze"),
    ),
    Mutation(
        "shards-in-contiguous-blocks",
        "each process trains on a contiguous block of the epoch's order, not every world-th item as DistributedSampler",
        "    return pad(items, ranks.world)[ranks.rank :: ranks.world]",
        "    return pad(items, ranks.world).view(ranks.world, -1)[ranks.rank]",
        ("tests/test_distributed.py", "-k", "shards_cover"),
    ),
    Mutation(
        "cores-halved-whatever-the-processes",
        "train.threads 0 gives each process half the cores, however many processes share the machine",
        "    return max(1, cores // local_processes)",
        "    return max(1, cores // 2)",
        ("tests/test_distributed.py", "-k", "cores_are_shared"),
    ),
    Mutation(
        "cache-key-by-split",
        "the decoded-image cache is keyed by the split too: each prepare.seed decodes every image again",
        'manifest["sha1"].tolist()]',
        'manifest["sha1"].tolist(), manifest["split"].tolist() if "split" in manifest else None]',
        ("tests/test_resume.py", "-k", "never_resume_another_run"),
    ),
    Mutation(
        "weights-built-at-the-params-size",
        "ViT and MaxViT with torchvision weights are built at model.image_size, not the size the weights fix",
        '    size = weights.meta["min_size"][0] if weights else image_size',
        "    size = image_size",
        ("tests/test_config.py", "-k", "param_mistakes"),
    ),
    Mutation(
        "fingerprint-without-code",
        "a run's fingerprint leaves out the pipeline's code: a killed run resumes under other code",
        "for name, file in [*((path, path) for path in inputs), *code]:",
        "for name, file in ((path, path) for path in inputs):",
        ("tests/test_resume.py::test_other_params_or_weights_never_resume_another_run",),
    ),
    Mutation(
        "cache-rows-shifted",
        "after a damaged or conflicting file is left out, every later image's model input is its neighbour's",
        "                    kept[index] = array[row]\n",
        "                    kept[index] = array[index]\n",
        ("tests/test_prepare.py", "-k", "messy"),
    ),
    Mutation(
        "copy-long-cap-by-short-side",
        "the training copy's long-side cap is divided by the shorter side: panoramas keep up to 3x the bytes",
        "round(COPY_LONG * short_cap) / max(whole), 1.0)",
        "round(COPY_LONG * short_cap) / min(whole), 1.0)",
        ("tests/test_crops.py", "-k", "both_caps"),
    ),
    Mutation(
        "pillow-filter-corner-crop",
        "with a Pillow-only filter (lanczos, nearest...) the model's input is the top-left square, not the centre",
        "        crop = pixels[top : top + sizing.crop, left : left + sizing.crop]\n",
        "        crop = pixels[: sizing.crop, : sizing.crop]\n",
        ("tests/test_data.py", "-k", "pillow_filters"),
    ),
    Mutation(
        "checksum-ignores-keys",
        "a checkpoint's checksum covers values but not dict keys: a renamed entry loads as undamaged",
        "            _feed(digest, key)\n",
        "",
        ("tests/test_checkpoints.py", "-k", "damaged_checkpoint"),
    ),
    Mutation(
        "resume-keeps-partial-writes",
        "a resumed run leaves the half-written temp checkpoint of the killed one in its run folder",
        '            for leftover in self.path.glob(".*.tmp"):  # a write that a kill cut short\n'
        "                leftover.unlink()\n",
        "",
        ("tests/test_resume.py", "-k", "gives_the_uninterrupted_result and not recipe"),
    ),
    Mutation(
        "verify-file-outputs-unlinked",
        "workspace_links ignores outputs that are single files: their damaged objects name no workspace file",
        "        files = [out] if out.is_file() else sorted(",
        "        files = [] if out.is_file() else sorted(",
        ("tests/test_verify.py", "-k", "in_place_damage"),
    ),
    Mutation(
        "verify-repair-keeps-linked-files",
        "--repair deletes the damaged object but leaves the workspace files that are the same (damaged) file",
        "for p in (damage.path, *damage.linked))",
        "for p in (damage.path,))",
        ("tests/test_verify.py", "-k", "in_place_damage"),
    ),
    Mutation(
        "prepare-unconfirmed-params",
        "prepare does not look at params.yaml again at its end",
        "            DUPLICATES,\n        )\n    confirm_unchanged()\n",
        "            DUPLICATES,\n        )\n",
        ("tests/test_check_params.py", "-k", "changed_while_it_ran"),
    ),
    Mutation(
        "duplicates-mixed-group-near",
        "in a group mixing byte copies and near copies, the byte copies are listed as near",
        'exact = rows.groupby(["group", "sha1"])["path"].transform("size") > 1',
        'exact = rows.groupby("group")["sha1"].transform("nunique") == 1',
        ("tests/test_prepare.py", "-k", "keeps_duplicates"),
    ),
    Mutation(
        "head-init-ignores-train-seed",
        "the new head is initialised from seed 0 whatever train.seed says",
        "    torch.manual_seed(config.seed)\n    built = build_model(params.model.arch, str(START_FILE)",
        "    torch.manual_seed(0)\n    built = build_model(params.model.arch, str(START_FILE)",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "verify-repair-stops-at-first-failure",
        "--repair stops deleting at the first file it cannot delete, leaving the rest of the damage",
        "    return all([remove(path, root) for path in paths])",
        "    return all(remove(path, root) for path in paths)",
        ("tests/test_verify.py", "-k", "cannot_be_deleted"),
    ),
    Mutation(
        "foreign-weights-unreported",
        "tools.verify says nothing of weights files in models/ that are no checkpoints of this pipeline",
        "    for path in foreign:\n",
        "    for path in foreign[:0]:\n",
        ("tests/test_verify.py", "-k", "in_place_damage"),
    ),
    Mutation(
        "resume-forgets-threads",
        "a resumed run takes this machine's default CPU threads, not those its epochs so far ran on",
        '    kept = history[-1]["threads"] if history else threads',
        "    kept = threads",
        ("tests/test_resume.py", "-k", "cpu_threads"),
    ),
    Mutation(
        "autocast-float16",
        "CUDA runs under float16 autocast instead of bfloat16 (no gradient scaler: gradients can underflow)",
        'return torch.autocast("cuda", dtype=torch.bfloat16)',
        'return torch.autocast("cuda", dtype=torch.float16)',
        ("tests/test_gpu_path.py", "-k", "bf16"),
    ),
    Mutation(
        "no-cublas-workspace",
        "train.deterministic does not set CUBLAS_WORKSPACE_CONFIG: deterministic cuBLAS raises on a GPU",
        '        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")\n',
        "        pass\n",
        ("tests/test_gpu_path.py", "-k", "cublas"),
    ),
    Mutation(
        "resume-keeps-first-epoch-threads",
        "a resumed run with train.threads 0 takes the CPU threads of its first epoch, not of its last",
        '    kept = history[-1]["threads"] if history else threads',
        '    kept = history[0]["threads"] if history else threads',
        ("tests/test_resume.py", "-k", "cpu_threads"),
    ),
    Mutation(
        "fingerprint-without-manifest",
        "a run's fingerprint leaves out data/prepared/manifest.csv: a killed run resumes on another split",
        "    inputs = [MANIFEST, CLASSES, START_FILE]",
        "    inputs = [CLASSES, START_FILE]",
        ("tests/test_resume.py", "-k", "never_resume"),
    ),
    Mutation(
        "any-rank-variable-means-launched",
        "one of torchrun's variables in the environment (MASTER_ADDR alone) makes a plain run act as a launched rank",
        "return all(name in os.environ for name in RANK_VARIABLES)",
        "return any(name in os.environ for name in RANK_VARIABLES)",
        ("tests/test_distributed.py", "-k", "master_address"),
    ),
    Mutation(
        "warmup-and-step-every-swapped",
        "the train stage hands train.step_every to the schedule as its warm-up and train.warmup_epochs as its step",
        "warmup_epochs=config.warmup_epochs,\n        step_every=config.step_every,",
        "warmup_epochs=config.step_every,\n        step_every=config.warmup_epochs,",
        ("tests/test_recipes.py", "-k", "rate_its_schedule"),
    ),
    Mutation(
        "cosine-shortened-by-warmup-twice",
        "the train stage's cosine schedule runs over epochs - 2 x warmup_epochs: the rate reaches 0 before the end",
        "lr_factor, epochs=config.epochs, schedule=config.schedule,",
        "lr_factor, epochs=config.epochs - config.warmup_epochs, schedule=config.schedule,",
        ("tests/test_recipes.py", "-k", "rate_its_schedule"),
    ),
    Mutation(
        "crop-batches-mean-std-swapped",
        "random resized crops for training are normalised with the weights' std as mean and mean as std",
        "    mean, std = list(spec.mean), list(spec.std)\n    return CropBatches(",
        "    mean, std = list(spec.std), list(spec.mean)\n    return CropBatches(",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "sync-batchnorm-with-one-process",
        "train.sync_batchnorm converts BatchNorm even with one process: a 1-process CPU run stops with 'needs CUDA'",
        "    if config.sync_batchnorm and ranks.active:\n",
        "    if config.sync_batchnorm:\n",
        ("tests/test_recipes.py", "-k", "reaches_the_train_stage_s_loop"),
    ),
    Mutation(
        "dvclive-train-loss-is-val-loss",
        "dvclive's train/loss curve records each epoch's validation loss",
        '    live.log_metric("train/loss", record["loss"])',
        '    live.log_metric("train/loss", record["val_loss"])',
        ("tests/test_plots.py", "-k", "every_plot"),
    ),
    Mutation(
        "split-last-units-not-reserved",
        "a class with few groups of copies can end with no train (or test) image, silently",
        "(room[current] <= 0 or left < len(names) - current):",
        "(room[current] <= 0 or left < len(names) - current - 1):",
        ("tests/test_data.py", "-k", "small_class"),
    ),
    Mutation(
        "split-moves-on-a-unit-early",
        "small classes (or few groups) move on to the next split one unit early: shares off the rounded fractions",
        "(room[current] <= 0 or left < len(names) - current):",
        "(room[current] <= 0 or left <= len(names) - current):",
        ("tests/test_data.py", "-k", "small_class"),
    ),
    Mutation(
        "prepare-sizing-ignores-weights",
        "prepare decodes for the sizing of weights trained here, whatever model.weights: "
        "train decodes everything again",
        "    weights = None if model.weights == PRETRAIN_WEIGHTS else model.weights\n",
        "    weights = None\n",
        ("tests/test_pipeline.py", "-k", "params_only_switch"),
    ),
    Mutation(
        "pretrain-init-from-train-seed",
        "the backbone that pretraining starts from is drawn from train.seed, not pretrain.seed",
        "    torch.manual_seed(config.seed)\n    built = build_model(params.model.arch, None, classes",
        "    torch.manual_seed(params.train.seed)\n    built = build_model(params.model.arch, None, classes",
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "pretrain-split-from-prepare-seed",
        "pretraining's train/val split is drawn from prepare.seed, not pretrain.seed",
        'stratified_split(manifest["label"].tolist(), fractions, config.seed, duplicate_groups(manifest))',
        'stratified_split(manifest["label"].tolist(), fractions, params.prepare.seed, duplicate_groups(manifest))',
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "pretrain-val-fraction-from-prepare",
        "pretraining holds out prepare.val_fraction of its images, not pretrain.val_fraction",
        '    fractions = {"val": config.val_fraction}\n',
        '    fractions = {"val": params.prepare.val_fraction}\n',
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "pretrain-batch-from-train",
        "pretraining runs at train.batch_size, not pretrain.batch_size",
        "loop = LoopOptions(batch_size=config.batch_size, seed=config.seed)",
        "loop = LoopOptions(batch_size=params.train.batch_size, seed=config.seed)",
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "pretrain-optimizer-from-train",
        "pretraining's optimizer takes train.optimizer/lr/momentum/weight_decay instead of pretrain's",
        "    optimizer = make_optimizer(config, model, spec.head)\n",
        "    optimizer = make_optimizer(params.train, model, spec.head)\n",
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "pretrain-on-val-split",
        "pretraining trains on its validation split and validates on its training split",
        'split_batches(images, manifest, split, spec, device) for split in ("train", "val"))',
        'split_batches(images, manifest, split, spec, device) for split in ("val", "train"))',
        ("tests/test_recipes.py", "-k", "own_params_and_random"),
    ),
    Mutation(
        "wrapper-prefixes-one-pass",
        "a weights file saved from a compiled DDP model (_orig_mod.module.*) is refused as not fitting",
        "    for _ in WRAPPER_PREFIXES:  # each may wrap the other: module._orig_mod.conv1.weight",
        "    for _ in WRAPPER_PREFIXES[:1]:  # each may wrap the other: module._orig_mod.conv1.weight",
        ("tests/test_models.py", "-k", "wrapped_state_dicts"),
    ),
    Mutation(
        "orientation-jpeg-only",
        "images Pillow decodes (PNG, WebP, CMYK or damaged JPEGs) ignore their EXIF orientation",
        "        ImageOps.exif_transpose(image, in_place=True)\n",
        "",
        ("tests/test_data.py", "-k", "pngs_and_cmyk"),
    ),
    Mutation(
        "redecode-failure-traceback",
        "train/evaluate on a file damaged since prepare ends in a KeyError traceback, not 'rerun prepare'",
        '                raise UserError(f"{paths[index]} {result.problem}; '
        'it decoded when prepare ran: rerun prepare")',
        "                continue",
        ("tests/test_errors.py", "-k", "since"),
    ),
    Mutation(
        "modules-holding-head-accepted",
        "freeze: modules:classifier (the head's container) is accepted and freezes the head: nothing trains",
        '        if any(head == name or head.startswith(f"{name}.") for name in spec.modules):',
        "        if any(head == name for name in spec.modules):",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "fallback-centre-rounded",
        "the fallback crop's left edge is rounded, not floored: one pixel right of torchvision's centre "
        "for some image widths",
        "    left = torch.where(found, left, ((width - box_width) / 2).floor())",
        "    left = torch.where(found, left, ((width - box_width) / 2).round())",
        ("tests/test_crops.py", "-k", "fallback"),
    ),
    Mutation(
        "predict-special-files-without-extension-hidden",
        "in a folder, a FIFO, socket, broken link or unreadable folder without an image extension gets no row",
        "    others = {Path(s.path) for s in skipped if Path(s.path).is_file() and not is_image_name(Path(s.path))}",
        "    others = {Path(s.path) for s in skipped if not is_image_name(Path(s.path))}",
        ("tests/test_predict.py", "-k", "every_path_named"),
    ),
    Mutation(
        "predict-named-broken-link-missing",
        "a broken link or link loop named on the command line is a 'no such file' error (exit 2), not a row",
        "        elif os.path.lexists(path):  # a FIFO, socket or device; a broken link or link loop",
        "        elif os.path.exists(path):  # a FIFO, socket or device; a broken link or link loop",
        ("tests/test_predict.py", "-k", "every_path_named"),
    ),
    Mutation(
        "select-metric-ignored",
        "select-best always keeps the checkpoint with the lowest val_loss, whatever select.metric and mode say",
        "best = pick_best(scores, params.metric, params.mode)",
        'best = pick_best(scores, "val_loss", Mode.min)',
        ("tests/test_select_best.py", "-k", "validation_prefers"),
    ),
    Mutation(
        "heat-tokens-prefix-one",
        "Grad-CAM always drops exactly one leading token (a class token), whatever the model's prefix is",
        "            patches = activations[:, self.prefix :]",
        "            patches = activations[:, 1:]",
        ("tests/test_heatmaps.py", "-k", "laid_out"),
    ),
    Mutation(
        "predict-decode-errors-narrowed",
        "tools.predict turns only OSErrors into error rows: a decompression bomb ends the run",
        "            except Exception as error:  # Pillow raises many types for damaged or unsupported files",
        "            except OSError as error:  # Pillow raises many types for damaged or unsupported files",
        ("tests/test_predict.py", "-k", "each_path_gets"),
    ),
    Mutation(
        "verify-remotes-never-found",
        "tools.verify reads the remotes from the wrong config section: it never finds one, always says dvc repro",
        'sorted(repo.config.get("remote", {}))',
        'sorted(repo.config.get("remotes", {}))',
        ("tests/test_pipeline.py", "-k", "shared_through_a_remote"),
    ),
    Mutation(
        "checkpoint-resize-not-rescaled",
        "a pipeline checkpoint used as model.weights at another image_size keeps its own resize: "
        "at 32 px a 224-px checkpoint's inputs are resized to 256 and the centre 32 px cut out",
        "    return at_size(source.sizing, image_size), list(source.mean), list(source.std)",
        "    return source.sizing, list(source.mean), list(source.std)",
        ("tests/test_models.py", "-k", "another_image_size_keeps_its"),
    ),
    Mutation(
        "timm-default-is-first-tag",
        "model.weights DEFAULT takes the alphabetically first pretrained tag, not timm's default one",
        "tag = timm.models.get_pretrained_cfg(name).tag if weights == DEFAULT_WEIGHTS else weights",
        "tag = tags[0] if weights == DEFAULT_WEIGHTS else weights",
        ("tests/test_timm.py", "-k", "defaults_to"),
    ),
    Mutation(
        "stages-share-of-whole-model",
        "a stage is opened up when it holds 90% of the whole model (head container included), not of the "
        "stages: MobileNetV3, VGG and AlexNet get a single stage `features` for first:N and layer decay",
        "        if size(largest) <= 0.9 * sum(size(s) for s in stages) or not inner:",
        '        if size(largest) <= 0.9 * size("") or not inner:',
        ("tests/test_models.py", "-k", "opened_into"),
    ),
    Mutation(
        "verify-object-names-prefix-match",
        "tools.verify takes any file whose name starts like an object's (e.g. a leftover temp file) for one",
        "if path.is_file() and OBJECT_NAME.fullmatch(path.name):",
        "if path.is_file() and OBJECT_NAME.match(path.name):",
        ("tests/test_verify.py", "-k", "against_their_names"),
    ),
    Mutation(
        "evaluate-classes-checked-once",
        "evaluate compares the classes of the first checkpoint only with the manifest's",
        "        if spec.classes != classes:\n",
        "        if model is None and spec.classes != classes:\n",
        ("tests/test_evaluate.py", "-k", "other_classes"),
    ),
    Mutation(
        "split-loss-mixed-weights-collapsed",
        "with class weights and MixUp/CutMix, reduction='none' returns the batch's weighted mean, not each "
        "item's loss: accumulated/multi-process steps scale it by the item count and count the padding",
        '    if reduction == "none" or weight is None or not targets.is_floating_point():',
        "    if weight is None or not targets.is_floating_point():",
        ("tests/test_recipes.py", "-k", "mixed_labels_is_divided"),
    ),
    Mutation(
        "ema-warmup-always",
        "the train stage warms its moving average up whatever train.ema_warmup says",
        "weights_average(model, config.ema_decay, config.ema_warmup)",
        "weights_average(model, config.ema_decay, True)",
        ("tests/test_recipes.py", "-k", "warms_up"),
    ),
    Mutation(
        "mixed-loss-over-batch-size",
        "with class weights, the loss of mixed labels divides the weighted sum by the batch size, as "
        "torch's mean over probabilities does, not by the mixed targets' weights",
        "    return total / (targets * weight).sum()",
        "    return total / len(targets)",
        ("tests/test_recipes.py", "-k", "mixed_labels"),
    ),
    Mutation(
        "step-weight-counts-items",
        "split steps (accumulated batches, several processes) divide each step's class-weighted loss "
        "by its item count, not its items' class weights' total",
        "weight = real if loop.class_weights is None else real * loop.class_weights",
        "weight = real if True else real * loop.class_weights",
        ("tests/test_recipes.py", "-k", "mixed_labels_weigh"),
    ),
    Mutation(
        "predict-batches-reversed",
        "predict gathers its batches' logits last batch first: with more than one batch, each image is "
        "scored on another's logits",
        "            outputs.append(batch_logits(model, images, flip))",
        "            outputs.insert(0, batch_logits(model, images, flip))",
        ("tests/test_evaluate.py",),
    ),
    Mutation(
        "erasing-drops-the-policy",
        "with a policy and erasing both on, each image is erased from its input, and the policy's output is lost",
        "                augmented.append(image if erasing is None else erasing(image))",
        "                augmented.append(image if erasing is None else erasing(images[index]))",
        ("tests/test_augment.py",),
    ),
    Mutation(
        "ema-follows-the-step-network",
        "the moving average follows the network the steps run: the head alone on cached features in a head-only run",
        "after_step=None if run.ema is None else partial(run.ema.update_parameters, run.model),",
        "after_step=None if run.ema is None else partial(run.ema.update_parameters, net),",
        ("tests/test_recipes.py", "-k", "warms_up"),
    ),
    Mutation(
        "crops-always-bilinear",
        "random resized crops are resized bilinearly whatever filter the weights state (bicubic for timm's, ...)",
        "image = image.resize((size, size), RESAMPLING[interpolation], box=region)",
        "image = image.resize((size, size), Image.Resampling.BILINEAR, box=region)",
        ("tests/test_crops.py",),
    ),
    Mutation(
        "loop-crops-always-square",
        "the training loop draws its crops without train.augment.max_aspect: every crop square",
        "order = epoch_order(len(data), generator, loop.hflip, loop.min_scale, loop.max_aspect, wholes, keys)",
        "order = epoch_order(len(data), generator, loop.hflip, loop.min_scale, sizes=wholes, keys=keys)",
        ("tests/test_recipes.py", "-k", "every_training_param"),
    ),
    Mutation(
        "metrics-trainable-params-of-last-epoch",
        "best/metrics.json's trainable_params is the last checkpoint's, not the chosen one's",
        '"trainable_params": checkpoint["trainable_params"],',
        '"trainable_params": loaded["trainable_params"],',
        ("tests/test_select_best.py",),
    ),
    Mutation(
        "predictions-from-val-logits",
        "eval/predictions pairs the test rows with the val split's predictions and confidences",
        'logits["test"].softmax(dim=1).max(dim=1)',
        'logits["val"].softmax(dim=1).max(dim=1)',
        ("tests/test_evaluate.py",),
    ),
    Mutation(
        "trunk-warning-for-partial-freeze",
        "check_params warns that trunk_lr_scale/layer_decay have no effect for any freeze but none, first:N too",
        'if params.freeze == "all_but_head" and not unfrozen_later:',
        'if params.freeze != "none" and not unfrozen_later:',
        ("tests/test_check_params.py", "-k", "take_effect"),
    ),
    Mutation(
        "unfreeze-to-default-warned-for-head-only",
        "check_params warns of unfreeze_to's default on every head-only or first:N run without unfreezing",
        'if not after and train.unfreeze_to != "none":',
        "if not after and train.unfreeze_to != params.freeze:",
        ("tests/test_check_params.py", "-k", "take_effect"),
    ),
    Mutation(
        "optimizer-holds-frozen-for-good",
        "without gradual unfreezing the optimizer still holds the trunk that stays frozen for the whole run",
        "later = trainable_names(model, unfreeze_to, spec.head) if config.unfreeze_after else frozenset()",
        "later = trainable_names(model, unfreeze_to, spec.head)",
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "check-params-kwargs-from-checkpoint-win",
        "check_params builds a checkpoint's model at the file's image size, not the params' as the weights stage does",
        'model_kwargs = {**loaded.get("model_kwargs", {}), **model_kwargs}',
        'model_kwargs = {**model_kwargs, **loaded.get("model_kwargs", {})}',
        ("tests/test_check_params.py", "-k", "image_size"),
    ),
    Mutation(
        "pretrain-split-ignores-duplicates",
        "pretraining's split ignores groups of copies: copies of a source image land in both splits",
        'stratified_split(manifest["label"].tolist(), fractions, config.seed, duplicate_groups(manifest))',
        'stratified_split(manifest["label"].tolist(), fractions, config.seed)',
        ("tests/test_recipes.py", "-k", "pretraining_takes"),
    ),
    Mutation(
        "curve-marker-by-row-position",
        "best/epochs.csv marks the raw row at position epoch - 1, not the chosen epoch's (off with average rows)",
        'raw.assign(selected=(raw["epoch"] == epoch).astype(int))',
        "raw.assign(selected=(raw.index == epoch - 1).astype(int))",
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "crop-never-full-side",
        "a crop box spanning the picture's whole width or height counts as not fitting (< for <=)",
        "(tried_width <= width[:, None])",
        "(tried_width < width[:, None])",
        ("tests/test_crops.py", "-k", "few_pixels"),
    ),
    Mutation(
        "recipe-keys-drawn-before-crops",
        "the recipes' per-image seeds are drawn before the crops: turning a policy on changes them",
        (
            "    draws = draw_augmentation(n, hflip, min_scale, generator, max_aspect, visited)\n"
            "    return EpochOrder(order, draws, torch.randint(2**62, (n,), generator=generator) if keys else None)"
        ),
        (
            "    seeds = torch.randint(2**62, (n,), generator=generator) if keys else None\n"
            "    draws = draw_augmentation(n, hflip, min_scale, generator, max_aspect, visited)\n"
            "    return EpochOrder(order, draws, seeds)"
        ),
        ("tests/test_engine.py", "-k", "recipe_on"),
    ),
    Mutation(
        "split-rng-reseeded-per-class",
        "the split reseeds its generator per class: classes of one size take the same positions",
        "for rank, index in enumerate(rng.permutation(len(units))):",
        "for rank, index in enumerate(np.random.default_rng(seed).permutation(len(units))):",
        ("tests/test_data.py", "-k", "on_its_own"),
    ),
    Mutation(
        "rank-without-gpu-off-by-one",
        "a rank whose local index equals the GPU count passes the check and fails later in CUDA",
        "if ranks.local_rank >= torch.cuda.device_count():",
        "if ranks.local_rank > torch.cuda.device_count():",
        ("tests/test_distributed.py", "-k", "beyond_the_machines"),
    ),
    Mutation(
        "predict-columns-for-unavailable-classes",
        "with --top-k above the class count, the CSV and table get columns for classes that do not exist",
        "WRITERS[args.format](predictions, top_k, sys.stdout)",
        "WRITERS[args.format](predictions, args.top_k, sys.stdout)",
        ("tests/test_predict.py", "-k", "csv_matches"),
    ),
    Mutation(
        "prepare-decodes-at-the-hash-scale",
        "prepare keeps its hash decode for the model exactly where it is too small for it (inverted check)",
        "if not decoded.same_for(sizing.resize):",
        "if decoded.same_for(sizing.resize):",
        ("tests/test_preprocessing.py", "-k", "decodes_anew"),
    ),
    Mutation(
        "publish-all-keeps-stale-checkpoints",
        "checkpoints/ keeps files of an earlier, longer run beside this run's own, and evaluate scores them too",
        "        shutil.rmtree(self.output, ignore_errors=True)\n        self.output.mkdir(parents=True)\n",
        "        self.output.mkdir(parents=True, exist_ok=True)\n",
        ("tests/test_runs.py", "-k", "republished"),
    ),
    Mutation(
        "publish-copies-not-links",
        "each checkpoint is copied into checkpoints/ instead of hard-linked, so a run takes twice the disk",
        "        os.link(path, target)\n",
        "        shutil.copy2(path, target)\n",
        ("tests/test_runs.py", "-k", "republished"),
    ),
    Mutation(
        "adopt-oldest-unfinished-run",
        "a killed run goes on from the oldest unfinished folder of its lineage, not the newest, losing epochs",
        "        for other in sorted(self.root.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True):",
        "        for other in sorted(self.root.iterdir(), key=lambda path: path.stat().st_mtime):",
        ("tests/test_resume.py", "-k", "keeps_its_cpu_threads"),
    ),
    Mutation(
        "adopt-held-run",
        "a new trainer moves the checkpoints out of an unfinished run folder that a live trainer still holds",
        "                if lock is None:  # a live trainer holds it\n                    continue\n",
        "",
        ("tests/test_resume.py", "-k", "keeps_its_cpu_threads"),
    ),
    Mutation(
        "prune-before-adopt",
        "old run folders are pruned before adoption: a killed run older than the newest 3 others is lost",
        (
            "            if not self.checkpoints():\n"
            "                self.adopt()\n"
            "            prune_other_runs(self.root, keep=self.fingerprint)\n"
        ),
        (
            "            prune_other_runs(self.root, keep=self.fingerprint)\n"
            "            if not self.checkpoints():\n"
            "                self.adopt()\n"
        ),
        ("tests/test_resume.py", "-k", "keeps_its_cpu_threads"),
    ),
    Mutation(
        "early-stop-counts-from-epoch-one",
        "a run whose watched metric is NaN from epoch 1 on stops one epoch later than its patience says",
        "    best_epoch, best = 0, math.inf\n",
        '    best_epoch, best = history[0]["epoch"], math.inf\n',
        ("tests/test_recipes.py", "-k", "test_early_stop and not keeps"),
    ),
    Mutation(
        "random-weights-bgr-mean",
        "models without torchvision weights are normalised with ImageNet's mean in BGR order, not RGB",
        "IMAGENET_MEAN = [0.485, 0.456, 0.406]",
        "IMAGENET_MEAN = [0.406, 0.456, 0.485]",
        ("tests/test_models.py", "-k", "plain_state_dict_loads"),
    ),
    Mutation(
        "best-pt-unnamed-weights",
        "best.pt no longer says which weights won, so mistakes.png's title calls a winning average 'raw'",
        '    checkpoint |= {"weights": weights, "tta": best["tta"]}',
        '    checkpoint |= {"tta": best["tta"]}',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "best-pt-keeps-ema-count",
        "best.pt keeps the moving average's update count, resume state the model file should not carry",
        '    for key in ("optimizer_state_dict", "scheduler_state_dict", "ema_state_dict", "ema_updates"):',
        '    for key in ("optimizer_state_dict", "scheduler_state_dict", "ema_state_dict"):',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "select-best-log-counts-rows",
        "select-best logs 'best: epoch 2 of 4' for a 2-epoch run with a moving average (rows, not epochs)",
        "        len(raw),\n",
        "        len(scores),\n",
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "screenshot-256-colours-refused",
        "tools.screenshot refuses --colours 256, the README's own example, as out of range",
        "    if args.colours and not 2 <= args.colours <= 256:",
        "    if args.colours and not 2 <= args.colours < 256:",
        ("tests/test_plots.py", "-k", "cut_below"),
    ),
    Mutation(
        "screenshot-scale-swaps-sides",
        "tools.screenshot --scale shrinks to a picture with width and height swapped, the page distorted",
        "        size = (round(picture.width * args.scale), round(picture.height * args.scale))",
        "        size = (round(picture.height * args.scale), round(picture.width * args.scale))",
        ("tests/test_plots.py", "-k", "cut_below"),
    ),
    Mutation(
        "screenshot-cut-at-last-column",
        "tools.screenshot cuts the page at the index of its last drawn column, dropping what lies below it",
        "(pixels != pixels[-1, -1]).any(axis=(1, 2))",
        "(pixels != pixels[-1, -1]).any(axis=(0, 2))",
        ("tests/test_plots.py", "-k", "cut_below"),
    ),
    Mutation(
        "screenshot-out-folder-not-made",
        "tools.screenshot writes --out without making its folder: a new docs/ folder is a traceback",
        "    args.out.parent.mkdir(parents=True, exist_ok=True)\n",
        "",
        ("tests/test_plots.py", "-k", "cut_below"),
    ),
    Mutation(
        "screenshot-scale-zero-accepted",
        "tools.screenshot takes --scale 0, and fails on a picture of no pixels instead of saying why",
        "    if not 0 < args.scale <= 1:",
        "    if not 0 <= args.scale <= 1:",
        ("tests/test_errors.py", "-k", "screenshot"),
    ),
    Mutation(
        "screenshot-colours-bound-off-by-one",
        "tools.screenshot takes --colours 257, more than a PNG palette holds",
        "    if args.colours and not 2 <= args.colours <= 256:",
        "    if args.colours and not 2 <= args.colours <= 257:",
        ("tests/test_errors.py", "-k", "screenshot"),
    ),
    Mutation(
        "timm-url-weights-outside-checkpoints",
        "timm weights kept only at a URL are looked for in $TORCH_HOME/hub, not hub/checkpoints: never found",
        'cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name',
        "cached = Path(torch.hub.get_dir()) / Path(urlparse(url).path).name",
        ("tests/test_timm.py", "-k", "only_at_a_url"),
    ),
    Mutation(
        "yaml-error-column-zero-based",
        "a params.yaml syntax error names a column one to the left of the problem (YAML's 0-based mark)",
        "column {mark.column + 1})",
        "column {mark.column})",
        ("tests/test_config.py", "-k", "broken_yaml"),
    ),
    Mutation(
        "params-differences-more-miscounted",
        "a params.yaml differing from the checked record in 5 keys names 3 of them 'and 5 more'",
        'more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""',
        'more = f" and {len(changed)} more" if len(changed) > 3 else ""',
        ("tests/test_config.py", "-k", "three_params"),
    ),
    Mutation(
        "gallery-heat-touches-next-tile",
        "in best/mistakes.png each heat map butts against the next tile's image: the tile width lacks its gap",
        "    tile_width = PANEL * (2 if with_heat else 1) + (GAP if with_heat else 0)",
        "    tile_width = PANEL * (2 if with_heat else 1)",
        ("tests/test_interpretation.py", "-k", "rows_of_four"),
    ),
    Mutation(
        "gallery-always-four-columns",
        "best/mistakes.png is four tiles wide even for fewer mistakes, leaving blank columns beside them",
        "    columns = min(COLUMNS, max(len(tiles), 1))",
        "    columns = COLUMNS",
        ("tests/test_interpretation.py", "-k", "rows_of_four"),
    ),
    Mutation(
        "mistakes-title-counts-mistakes-as-images",
        "mistakes.png's title gives the number of mistakes as the number of test images ('5 of the 5')",
        'f"{which} mistakes on the {len(predictions)} test images, the most confident first "',
        'f"{which} mistakes on the {len(wrong)} test images, the most confident first "',
        ("tests/test_interpretation.py", "-k", "most_confident_mistakes_each"),
    ),
    Mutation(
        "predict-table-fraction-as-percent",
        "predict's table prints each probability as a fraction followed by %, '0.9%' for 90%",
        '[f"{n:<{name_width}} {q:6.1%}" for n, q in p.top]',
        '[f"{n:<{name_width}} {q:6.1f}%" for n, q in p.top]',
        ("tests/test_predict.py", "-k", "table_prints"),
    ),
    Mutation(
        "verify-summary-counts-swapped",
        "tools.verify's summary line swaps the counts of damaged checkpoints and damaged cache objects",
        'summary += f"{len(damaged_checkpoints)} damaged checkpoints, {len(damaged_objects)} damaged cache objects"',
        'summary += f"{len(damaged_objects)} damaged checkpoints, {len(damaged_checkpoints)} damaged cache objects"',
        ("tests/test_verify.py", "-k", "reported_and_repaired"),
    ),
    Mutation(
        "verify-repair-deletes-twice",
        "--repair names a checkpoint linked to a damaged cache object twice, as deleted or as undeletable",
        "paths = dict.fromkeys(p for damage in damages for p in (damage.path, *damage.linked))",
        "paths = [p for damage in damages for p in (damage.path, *damage.linked)]",
        ("tests/test_verify.py", "-k", "reported_and_repaired"),
    ),
    Mutation(
        "prepare-mixed-groups-miscounted",
        "prepare's log counts every group of copies as one 'with different labels', not only the mixed ones",
        'mixed = duplicates.groupby("group")["label"].nunique().gt(1).sum()',
        'mixed = duplicates.groupby("group")["label"].nunique().ge(1).sum()',
        ("tests/test_prepare.py", "-k", "keeps_duplicates"),
    ),
    Mutation(
        "weights-log-resize-and-crop-swapped",
        "the weights stage logs 'inputs resized to 16, centre 18 crop': the resize and crop sizes swapped",
        "        sizing.resize,\n        sizing.crop,\n",
        "        sizing.crop,\n        sizing.resize,\n",
        ("tests/test_timm.py", "-k", "only_at_a_url"),
    ),
    Mutation(
        "rank-picks-the-gpu",
        "each process takes the GPU of its global rank, so on a second machine it asks for a GPU it lacks",
        '        device = torch.device("cuda", ranks.local_rank)',
        '        device = torch.device("cuda", ranks.rank)',
        ("tests/test_distributed.py", "-k", "beyond_the_machines"),
    ),
    Mutation(
        "local-processes-counts-every-machine",
        "with several machines each process gets the cores divided by every machine's processes, not its own's",
        'return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1',
        'return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1',
        ("tests/test_distributed.py", "-k", "own_not_the_jobs"),
    ),
    Mutation(
        "partial-launch-refuses-a-master-address-shell",
        "a train stage run by hand in a shell that exports MASTER_ADDR alone dies with a KeyError traceback",
        '    if missing and len(missing) < len(RANK_VARIABLES) and os.environ.get("WORLD_SIZE", "1") != "1":',
        "    if missing and len(missing) < len(RANK_VARIABLES):",
        ("tests/test_distributed.py", "-k", "master_address_alone"),
    ),
    Mutation(
        "fingerprint-without-device",
        "a run killed on the CPU resumes on a GPU (or back) from the other device's checkpoints",
        '        "freeze": params.freeze,\n        "device": device.type,\n',
        '        "freeze": params.freeze,\n',
        ("tests/test_runs.py", "-k", "another_device"),
    ),
    Mutation(
        "epoch-log-losses-swapped",
        "the train stage's per-epoch log line shows the validation loss as the loss and the other way round",
        'epoch, config.epochs, record["loss"], record["val_loss"], record["val_accuracy"], record["lr"],',
        'epoch, config.epochs, record["val_loss"], record["loss"], record["val_accuracy"], record["lr"],',
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "phase-log-parameter-counts-swapped",
        "the train stage logs 'X of Y parameters train' with the total first and the trainable count second",
        'run.spec.arch, len(run.spec.classes), spec_text, f"{trainable:,}", f"{total:,}",',
        'run.spec.arch, len(run.spec.classes), spec_text, f"{total:,}", f"{trainable:,}",',
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "evaluate-log-counts-rows",
        "with a moving average evaluate logs 'scored 4 checkpoints' for 2: it counts table rows",
        'log.info("scored %d checkpoints:\\n%s", len(paths), scores.to_string(index=False, float_format="%.4f"))',
        'log.info("scored %d checkpoints:\\n%s", len(scores), scores.to_string(index=False, float_format="%.4f"))',
        ("tests/test_recipes.py", "-k", "moving_average_is_kept"),
    ),
    Mutation(
        "select-best-log-val-accuracy-as-test",
        "select-best's log line gives the chosen row's validation accuracy where it says test accuracy",
        '        best["test_accuracy"],',
        '        best["val_accuracy"],',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "pretrain-epochs-counted-from-zero",
        "pretraining runs epochs 0..E-1: logs 'epoch 0/6' and draws each epoch's order from the wrong seed",
        "    for epoch in range(1, config.epochs + 1):",
        "    for epoch in range(config.epochs):",
        ("tests/test_recipes.py", "-k", "pretraining_takes"),
    ),
    Mutation(
        "timm-hub-bin-weights-ignored",
        "timm tags whose Hugging Face repo holds only pytorch_model.bin are called missing though cached",
        'HUB_FILES = ("model.safetensors", "pytorch_model.bin")',
        'HUB_FILES = ("model.safetensors",)',
        ("tests/test_timm.py", "-k", "pytorch_model_bin"),
    ),
    Mutation(
        "legacy-weights-file-memory-mapped",
        "check_params calls a weights file in torch's legacy (pre-zip) format damaged: it tries to mmap it",
        'torch.load(path, map_location="cpu", weights_only=True, mmap=lazy and zipped)',
        'torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)',
        ("tests/test_check_params.py", "-k", "wrappers_users_bring"),
    ),
    Mutation(
        "weights-only-override-kept",
        "with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the shell every checkpoint load fails ('damaged')",
        'os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)\n',
        "",
        ("tests/test_checkpoints.py", "-k", "opposite_switch"),
    ),
    Mutation(
        "grey-32-bit-white-read-as-16-bit",
        "a 32-bit greyscale image whose brightest pixel is exactly 255 is scaled as 16-bit: nearly black",
        "return 65535.0 if image.getextrema()[1] > 255 else 255.0",
        "return 65535.0 if image.getextrema()[1] >= 255 else 255.0",
        ("tests/test_data.py", "-k", "scaled_by_their_white"),
    ),
    Mutation(
        "big-endian-16-bit-grey-clipped",
        "big-endian 16-bit greyscale images (I;16B TIFFs) are read as 8-bit and clip to white",
        '    if image.mode.startswith("I;16"):',
        '    if image.mode == "I;16":',
        ("tests/test_data.py", "-k", "scaled_by_their_white"),
    ),
    Mutation(
        "grey-peak-taken-after-shrinking",
        "a large 16-bit PGM is shrunk before its white level is read, so its highlights average away: clipped",
        "        return Decoded(np.array(_to_rgb(image, peak)), whole, jpeg, size)",
        "        return Decoded(np.array(_to_rgb(image)), whole, jpeg, size)",
        ("tests/test_data.py", "-k", "scaled_by_their_white"),
    ),
    Mutation(
        "box-shrink-sides-swapped",
        "a large non-square 16-bit image is shrunk to its sides swapped, so its model input is distorted",
        "image = image.resize((-(-image.width // factor), -(-image.height // factor)), Image.Resampling.BOX)",
        "image = image.resize((-(-image.height // factor), -(-image.width // factor)), Image.Resampling.BOX)",
        ("tests/test_data.py", "-k", "scaled_by_their_white"),
    ),
    Mutation(
        "webp-images-skipped",
        "prepare leaves out every .webp image as 'not an image file extension'",
        'IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})',
        'IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff"})',
        ("tests/test_data.py", "-k", "every_format"),
    ),
    Mutation(
        "publish-fails-across-file-systems",
        "when .cache/runs and checkpoints/ are on different file systems publishing a checkpoint crashes",
        "    except OSError:  # file systems without hard links",
        "    except PermissionError:  # file systems without hard links",
        ("tests/test_runs.py", "-k", "hard_link_cannot_go"),
    ),
    Mutation(
        "augmented-batches-lose-channels-last",
        "on CUDA a batch leaves the policy/erasing contiguous, not channels_last like the model",
        "    return images.contiguous(memory_format=layout), targets",
        "    return images, targets",
        ("tests/test_augment.py", "-k", "memory_layout"),
    ),
    Mutation(
        "gallery-label-ignores-the-probability",
        "a long predicted class name is cut to fit without its '  p = 0.93', which then runs past its tile",
        '    while name and face.getlength(before + name + "…" + after) > width:',
        '    while name and face.getlength(before + name + "…") > width:',
        ("tests/test_interpretation.py", "-k", "long_class_name"),
    ),
    Mutation(
        "big-endian-grey-shrunk-as-is",
        "a big-endian 16-bit TIFF is shrunk by Pillow as it is: its pixels averaged as little-endian, noise",
        '        if image.mode == "I;16B":  # Pillow',
        '        if image.mode == "never":  # Pillow',
        ("tests/test_data.py", "-k", "scaled_by_their_white"),
    ),
    Mutation(
        "maxvit-built-at-its-default-size",
        "MaxViT from scratch is built at its default 224 px whatever model.image_size says",
        '    if arch.startswith("maxvit_"):\n        return {"input_size": [size, size]}\n    return {}',
        "    return {}",
        ("tests/test_models.py", "-k", "maxvit_from_scratch"),
    ),
    Mutation(
        "decoded-cache-reused-without-its-copies",
        "a decoded array whose training copies were never finished is reused: the copies are missing",
        "    if path.exists() and _copy_paths(path)[1].exists():",
        "    if path.exists():",
        ("tests/test_data.py", "-k", "without_its_copies_index"),
    ),
    Mutation(
        "early-stop-on-rank-0-alone",
        "early stopping stops process 0 alone: the others train on and wait for it in vain",
        "        if stop:\n",
        "        if stop and run.ranks.main:\n",
        ("tests/test_distributed.py", "-k", "early_stopping_stops_every_rank"),
    ),
    Mutation(
        "rank-seed-without-rank",
        "every process seeds dropout and mixing as process 0: their draws repeat each other's",
        "torch.manual_seed(rank_seed(generator, loop.ranks.rank))",
        "torch.manual_seed(rank_seed(generator, 0))",
        ("tests/test_engine.py", "-k", "per_epoch_and_process"),
    ),
    Mutation(
        "progress-bars-in-logs",
        "rank 0's progress bar is forced on (disable=False), so bars are written into log files and CI output",
        'disable = None if os.environ.get("RANK", "0") == "0" else True',
        'disable = False if os.environ.get("RANK", "0") == "0" else True',
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "stage-logs-at-debug",
        "run_stage configures logging at DEBUG: every library's debug lines flood each stage's output",
        'logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)',
        'logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s", stream=sys.stderr)',
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "enum-choices-read-as-yaml-1-1",
        "choice params (enums) are no longer taken as written: `train.optimizer: off` is refused as 'False'",
        "return kind in (str, str | None) or (isinstance(kind, type) and issubclass(kind, Enum))",
        "return kind in (str, str | None)",
        ("tests/test_config.py", "-k", "quote_the_value_as_written"),
    ),
    Mutation(
        "optional-text-read-as-yaml-1-1",
        "the optional text param model.weights is not taken as written: `007` becomes '7', `no` becomes 'False'",
        "return kind in (str, str | None) or (isinstance(kind, type) and issubclass(kind, Enum))",
        "return kind is str or (isinstance(kind, type) and issubclass(kind, Enum))",
        ("tests/test_config.py", "-k", "taken_as_written"),
    ),
    Mutation(
        "nested-text-params-lose-their-group",
        "text params two groups deep (train.augment.policy) are not taken as written: `no` is refused as 'False'",
        'take_text_as_written(f.type, value, written, f"{key}.")',
        'take_text_as_written(f.type, value, written, f"{f.name}.")',
        ("tests/test_config.py", "-k", "quote_the_value_as_written"),
    ),
    Mutation(
        "yaml-error-names-context-not-problem",
        "a params.yaml syntax error shows YAML's context ('while parsing a block mapping') instead of the problem",
        "problem = error.problem or error.context or type(error).__name__",
        "problem = error.context or error.problem or type(error).__name__",
        ("tests/test_config.py", "-k", "not_its_context"),
    ),
    Mutation(
        "yaml-reader-error-spans-two-lines",
        "a params.yaml with an unprintable character gives a two-line error, not one line",
        'return " ".join(str(error).split())',
        "return str(error)",
        ("tests/test_config.py", "-k", "unprintable"),
    ),
    Mutation(
        "params-differences-and-zero-more",
        "exactly three params differing from the checked record are named with a trailing 'and 0 more'",
        'more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""',
        'more = f" and {len(changed) - 3} more" if len(changed) >= 3 else ""',
        ("tests/test_config.py", "-k", "three_params"),
    ),
    Mutation(
        "checked-record-drops-outer-group",
        "a stage's refusal of changed params names train.augment.hflip as augment.hflip",
        'visit(value, f"{prefix}{f.name}.")',
        'visit(value, f"{f.name}.")',
        ("tests/test_config.py", "-k", "three_params"),
    ),
    Mutation(
        "batch-split-message-names-processes-only",
        "the refusal of a batch that does not split evenly quotes train.processes, not processes x accumulate_steps",
        "train.accumulate_steps ({parts}): it is",
        "train.accumulate_steps ({train.processes}): it is",
        ("tests/test_config.py", "-k", "split_names"),
    ),
    Mutation(
        "tv-arch-any-torchvision-model",
        "check_params accepts any torchvision model as the arch: segmentation, video and detection models too",
        "    known = list_models(module=torchvision.models)",
        "    known = list_models()",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "train-mode-never-restored",
        "after the first validation every epoch trains in inference mode: BatchNorm statistics stop updating",
        "    model.train()\n    for name in frozen:\n",
        "    for name in frozen:\n",
        ("tests/test_pipeline.py", "-k", "quick_start"),
    ),
    Mutation(
        "drop-path-zero-becomes-probe-rate",
        "train.drop_path 0 builds the model with the check's probe rate 0.1: stochastic depth stays on",
        "    kwargs = family_of(arch).drop_path_kwargs(arch, rate)",
        "    kwargs = family_of(arch).drop_path_kwargs(arch, max(rate, 0.1))",
        ("tests/test_models.py", "-k", "drop_path_of_zero"),
    ),
    Mutation(
        "timm-tag-file-of-default-tag",
        "timm weights of a tag other than the default are looked up under the default tag's repo",
        "    cfg = timm.models.get_pretrained_cfg(weights)",
        "    cfg = timm.models.get_pretrained_cfg(timm_name(arch))",
        ("tests/test_timm.py", "-k", "offline_hub_cache"),
    ),
    Mutation(
        "timm-tag-built-as-default-tag",
        "timm weights of another tag are loaded into the model built from the default tag's config",
        "    model = timm.create_model(weights, pretrained=True,",
        "    model = timm.create_model(timm_name(arch), pretrained=True,",
        ("tests/test_timm.py", "-k", "offline_hub_cache"),
    ),
    Mutation(
        "hash-from-the-models-decode",
        "the perceptual hash is taken from the model's decode where it differs: the split depends on the model",
        "        fingerprint = image_hash(decoded.pixels)\n"
        "        if sizing is not None:\n"
        "            if not decoded.same_for(sizing.resize):\n"
        "                decoded = decode(io.BytesIO(content), sizing.resize)\n",
        "        if sizing is not None and not decoded.same_for(sizing.resize):\n"
        "            decoded = decode(io.BytesIO(content), sizing.resize)\n"
        "        fingerprint = image_hash(decoded.pixels)\n"
        "        if sizing is not None:\n",
        ("tests/test_prepare.py", "-k", "do_not_depend_on_the_models"),
    ),
    Mutation(
        "error-lines-carry-exception-type",
        "error_line names the exception's type by default, so one-line user errors read 'ValidationError: ...'",
        "def error_line(error: BaseException, with_type: bool = False) -> str:",
        "def error_line(error: BaseException, with_type: bool = True) -> str:",
        ("tests/test_config.py", "-k", "quote_the_value_as_written"),
    ),
    Mutation(
        "hash-detail-checked-one-way",
        "image_hash checks only for too few 'brighter' bits: smooth gradients all share one hash and are grouped",
        "if min(bits.sum(), (~bits).sum()) < MIN_HASH_BITS:",
        "if bits.sum() < MIN_HASH_BITS:",
        ("tests/test_prepare.py", "-k", "smooth_pictures"),
    ),
    Mutation(
        "copy-capped-by-resize-size",
        "training copies are capped at 2.5 times the resize size, not the model's input: larger than documented",
        "width, height = copy_size(decoded.size, sizing.crop)",
        "width, height = copy_size(decoded.size, sizing.resize)",
        ("tests/test_crops.py", "-k", "both_caps"),
    ),
    Mutation(
        "crop-batches-at-resize-size",
        "random resized crops are cut at the weights' resize size, not the model's input size",
        "return CropBatches(copies, rows, targets, device, mean, std, spec.image_size, spec.interpolation)",
        "return CropBatches(copies, rows, targets, device, mean, std, spec.sizing.resize, spec.interpolation)",
        ("tests/test_crops.py", "-k", "own_pictures_at"),
    ),
    Mutation(
        "crops-cut-from-split-positions",
        "random resized crops are cut from the manifest row at the visit's position in the split, not from its own row",
        "jobs = zip(self.rows[index].tolist(), draws.boxes.tolist(), flips, range(len(index)), strict=True)",
        "jobs = zip(index.tolist(), draws.boxes.tolist(), flips, range(len(index)), strict=True)",
        ("tests/test_crops.py", "-k", "own_pictures_at"),
    ),
    Mutation(
        "opened-stage-drops-the-rest",
        "opening the largest stage drops the stages after it: Swin's final norm is in no stage",
        "        stages[position : position + 1] = inner",
        "        stages[position:] = inner",
        ("tests/test_models.py", "-k", "every_model_has_stages and swin"),
    ),
    Mutation(
        "describe-keeps-aux-heads",
        "`python -m pipeline.models inception_v3` lists the auxiliary classifiers as stages",
        "    _drop_aux_heads(model)\n    head = family.find_head(model)\n    stages = stage_names(model, head)\n",
        "    head = family.find_head(model)\n    stages = stage_names(model, head)\n",
        ("tests/test_models.py", "-k", "models_command"),
    ),
    Mutation(
        "check-params-skeleton-keeps-aux-heads",
        "check_params takes freeze specs that name or count the auxiliary classifiers; train refuses them",
        "    _drop_aux_heads(skeleton)\n",
        "",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "prefix-hint-without-missing-keys",
        "a weights file with one key too many and none missing is told to save a wrapped model's inner state_dict",
        "    if len(prefixes) != 1 or not missing or not set(missing) <=",
        "    if len(prefixes) != 1 or not set(missing) <=",
        ("tests/test_models.py", "-k", "do_not_fit_are_one_line"),
    ),
    Mutation(
        "timm-hub-no-exist-marker-crashes",
        "a Hugging Face cache that marks model.safetensors absent makes the weights lookup crash",
        "        if isinstance(cached, str):",
        "        if cached is not None:",
        ("tests/test_timm.py", "-k", "pytorch_model_bin"),
    ),
    Mutation(
        "unreadable-folder-unreported",
        "a sub-folder that cannot be read is skipped silently: its images vanish and skipped.csv does not list it",
        '            skipped.append(Skipped(directory.as_posix(), f"folder cannot be read:',
        '            (Skipped(directory.as_posix(), f"folder cannot be read:',
        ("tests/test_data.py", "-k", "cannot_read"),
    ),
    Mutation(
        "heat-layer-three-levels-down",
        "Grad-CAM looks for square maps three module levels down: in ResNet-50 at 32 px it weighs a block's inner map",
        'call.name.count(".") < 2',
        'call.name.count(".") < 3',
        ("tests/test_heatmaps.py", "-k", "layer_for_each_kind and resnet50"),
    ),
    Mutation(
        "crop-place-on-the-diagonal",
        "a random resized crop's top and left are drawn from one uniform number: crops only along the diagonal",
        "    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - box_height + 1)).floor()\n"
        "    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - box_width + 1)).floor()\n",
        "    place = torch.rand(n, generator=generator, dtype=torch.float64)\n"
        "    top = (place * (height - box_height + 1)).floor()\n"
        "    left = (place * (width - box_width + 1)).floor()\n",
        ("tests/test_crops.py", "-k", "drawn_as_random_resized"),
    ),
    Mutation(
        "mixing-before-policy-and-erasing",
        "MixUp/CutMix mix the batch before the per-image policy and erasing instead of after them",
        "    if policy is not None or erasing is not None:\n"
        "        mean, std = normalization  # of 8-bit pixel values\n",
        "    if mixing is not None:\n"
        "        images, targets = mixing(images, targets)\n"
        "        mixing = None\n"
        "    if policy is not None or erasing is not None:\n"
        "        mean, std = normalization  # of 8-bit pixel values\n",
        ("tests/test_augment.py", "-k", "mixed_after_each_image"),
    ),
    Mutation(
        "clip-each-accumulated-batch",
        "with accumulate_steps > 1, each accumulated batch's gradient is clipped, not the step's whole gradient",
        "            loss.backward()\n"
        "        if last:\n"
        "            if loop.clip_grad_norm:\n"
        '                params = [param for group in optimizer.param_groups for param in group["params"]]\n'
        "                torch.nn.utils.clip_grad_norm_(params, loop.clip_grad_norm)\n"
        "            optimizer.step()\n",
        "            loss.backward()\n"
        "            if loop.clip_grad_norm:\n"
        '                params = [param for group in optimizer.param_groups for param in group["params"]]\n'
        "                torch.nn.utils.clip_grad_norm_(params, loop.clip_grad_norm)\n"
        "        if last:\n"
        "            optimizer.step()\n",
        ("tests/test_engine.py", "-k", "whole_batch"),
    ),
    Mutation(
        "infinite-loss-trains-on",
        "the finite check looks for NaN only: an infinite training loss passes and its epoch is checkpointed",
        "bad = (~torch.isfinite(losses)).nonzero()",
        "bad = torch.isnan(losses).nonzero()",
        ("tests/test_claims.py", "-k", "infinite_training_loss"),
    ),
    Mutation(
        "predict-table-header-misaligned",
        "tools.predict's table makes its columns a character too narrow for the class cells: they drift apart",
        'cell_width = max(len(f"top {top_k}"), name_width + 7)',
        'cell_width = max(len(f"top {top_k}"), name_width + 6)',
        ("tests/test_predict.py", "-k", "table_prints"),
    ),
    Mutation(
        "predict-table-names-unpadded",
        "tools.predict's table leaves class names unpadded: a probability's place depends on its class name's length",
        'f"{n:<{name_width}} {q:6.1%}"',
        'f"{n} {q:6.1%}"',
        ("tests/test_predict.py", "-k", "table_prints"),
    ),
    Mutation(
        "pretrain-log-losses-swapped",
        "the weights stage's log swaps each pretraining epoch's loss and validation loss",
        '            loss,\n            val["loss"],\n',
        '            val["loss"],\n            loss,\n',
        ("tests/test_recipes.py", "-k", "pretraining_takes_its_own"),
    ),
    Mutation(
        "gallery-title-counted-as-one-line",
        "best/mistakes.png leaves room for one title line: the tiles cover the second",
        "top = GAP + len(title) * line + GAP",
        "top = GAP + line + GAP",
        ("tests/test_interpretation.py", "-k", "most_confident_mistakes_each"),
    ),
    Mutation(
        "mistakes-title-all-only-below-sixteen",
        "with exactly 16 test mistakes the title says 'The 16 most confident of 16'",
        "if len(shown) == len(wrong) else",
        "if len(wrong) < GALLERY else",
        ("tests/test_interpretation.py", "-k", "title_says_all"),
    ),
    Mutation(
        "no-mistakes-title-counts-mistakes",
        "without test mistakes the picture says 'No mistakes on the test split (0 images).'",
        'title = [f"No mistakes on the test split ({len(predictions)} images)."]',
        'title = [f"No mistakes on the test split ({len(wrong)} images)."]',
        ("tests/test_interpretation.py", "-k", "title_says_all"),
    ),
    Mutation(
        "evaluate-launches-torchrun-for-one",
        "evaluate.processes 1 still starts torchrun with one process, instead of scoring in the stage's own",
        "    if processes > 1 and not distributed.launched():",
        "    if processes >= 1 and not distributed.launched():",
        ("tests/test_recipes.py", "-k", "moving_average_is_kept"),
    ),
    Mutation(
        "pillow-path-size-before-turn",
        "a PNG or CMYK JPEG with EXIF orientation 5-8 keeps its sides from before its quarter turn: crops squashed",
        "        ImageOps.exif_transpose(image, in_place=True)\n"
        "        whole = (image.width * scale, image.height * scale)\n",
        "        whole = (image.width * scale, image.height * scale)\n"
        "        ImageOps.exif_transpose(image, in_place=True)\n",
        ("tests/test_data.py", "-k", "pngs_and_cmyk"),
    ),
    Mutation(
        "palette-shrunk-by-nearest",
        "a large palette or 1-bit image is shrunk in its own mode, by nearest pixels: the input aliases",
        '        if _has_alpha(image) or image.mode in ("P", "1"):',
        "        if _has_alpha(image):",
        ("tests/test_data.py", "-k", "averaging_its_colours"),
    ),
    Mutation(
        "alpha-onto-transparent-black",
        "half-transparent pixels keep their full colour instead of being blended onto black",
        'Image.new("RGBA", image.size, (0, 0, 0, 255))',
        'Image.new("RGBA", image.size, (0, 0, 0, 0))',
        ("tests/test_data.py", "-k", "flattens_rgba"),
    ),
    Mutation(
        "scratch-kept-after-success",
        "a prepare that leaves a file out leaves its decoding pass's temporary arrays in .cache/images",
        "    finally:\n        for name in names:\n            name.unlink(missing_ok=True)",
        "    except BaseException:\n"
        "        for name in names:\n"
        "            name.unlink(missing_ok=True)\n"
        "        raise",
        ("tests/test_prepare.py", "-k", "messy"),
    ),
    Mutation(
        "verify-nested-outputs-unlinked",
        "tools.verify traces damaged objects to files directly in a directory output only, not deeper",
        'sorted(p for p in out.rglob("*") if p.is_file())',
        'sorted(p for p in out.glob("*") if p.is_file())',
        ("tests/test_verify.py", "-k", "linked_to_it"),
    ),
    Mutation(
        "weights-subfolder-refused",
        "check_params refuses a weights file in a folder under models/weights/",
        "WEIGHTS_DIR.resolve() not in Path(weights).resolve().parents",
        "WEIGHTS_DIR.resolve() != Path(weights).resolve().parent",
        ("tests/test_check_params.py", "-k", "wrappers_users_bring"),
    ),
    Mutation(
        "scan-counts-empty-class-folders",
        "one class of images and an empty folder pass the two-class check",
        "    if len(with_files) < 2:\n",
        "    if len(classes) < 2:\n",
        ("tests/test_prepare.py", "-k", "single_class_is_refused"),
    ),
    Mutation(
        "mistakes-picture-of-the-last-checkpoint",
        "best/mistakes.png is drawn with the last checkpoint read, not the chosen weights",
        "    write_interpretation(checkpoint, predictions)\n",
        "    write_interpretation(loaded, predictions)\n",
        ("tests/test_select_best.py", "-k", "winning_average_whole"),
    ),
    Mutation(
        "early-stop-checked-after-the-epoch",
        "early stopping is checked after each epoch, not before the next: a rerun of a stopped run trains one more",
        "        stop = early_stop(run.history, params.select.metric, params.select.mode, config.early_stopping)\n"
        "        if stop:\n"
        '            log.info("%s", stop)\n'
        "            break\n"
        "        phase = run.phase(epoch)\n"
        "        try:\n"
        "            record = train_epoch(run, phase, epoch)\n"
        "        except RuntimeError as error:\n"
        "            raise distributed.lost_contact(error, run.ranks) or error from None\n"
        "        if run.ranks.main:\n"
        "            save_epoch(run, phase, record)\n"
        "        run.history.append(record)\n"
        "        log_epoch(live, record)\n"
        "        log.info(\n"
        '            "epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, lr %.2g, %.1fs",\n'
        '            epoch, config.epochs, record["loss"], record["val_loss"], record["val_accuracy"], record["lr"],\n'
        '            record["seconds"],\n'
        "        )  # fmt: skip\n",
        "        phase = run.phase(epoch)\n"
        "        try:\n"
        "            record = train_epoch(run, phase, epoch)\n"
        "        except RuntimeError as error:\n"
        "            raise distributed.lost_contact(error, run.ranks) or error from None\n"
        "        if run.ranks.main:\n"
        "            save_epoch(run, phase, record)\n"
        "        run.history.append(record)\n"
        "        log_epoch(live, record)\n"
        "        log.info(\n"
        '            "epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, lr %.2g, %.1fs",\n'
        '            epoch, config.epochs, record["loss"], record["val_loss"], record["val_accuracy"], record["lr"],\n'
        '            record["seconds"],\n'
        "        )  # fmt: skip\n"
        "        stop = early_stop(run.history, params.select.metric, params.select.mode, config.early_stopping)\n"
        "        if stop:\n"
        '            log.info("%s", stop)\n'
        "            break\n",
        ("tests/test_recipes.py", "-k", "early_stopping_keeps"),
    ),
    Mutation(
        "split-classes-in-hash-order",
        "the split walks the classes in a set's order: each new process splits otherwise for one prepare.seed",
        "for label in sorted(set(labels)):",
        "for label in set(labels):",
        ("tests/test_prepare.py", "-k", "same_in_every_new_process"),
    ),
    Mutation(
        "duplicate-union-without-find",
        "duplicate_groups joins a row, not its group's root, to a match: bridged groups stay apart",
        "a, b = sorted((root(i), j))",
        "a, b = sorted((i, j))",
        ("tests/test_data.py", "-k", "transitively"),
    ),
    Mutation(
        "fingerprint-by-device-index",
        "the run's fingerprint holds the GPU's index: the processes of one run on several GPUs are other runs",
        '"device": device.type,',
        '"device": str(device),',
        ("tests/test_runs.py", "-k", "another_device"),
    ),
    Mutation(
        "adopt-every-unfinished-folder",
        "a run with no epochs takes over every unfinished folder of its lineage in turn, not the newest alone",
        "                changed,\n            )\n            return\n",
        "                changed,\n            )\n",
        ("tests/test_resume.py", "-k", "keeps_its_cpu_threads"),
    ),
    Mutation(
        "step-warning-for-cosine",
        "check_params warns that a step schedule never steps of cosine runs too",
        "if train.schedule is Schedule.step and",
        "if train.schedule is not Schedule.constant and",
        ("tests/test_check_params.py", "-k", "take_effect"),
    ),
    Mutation(
        "trunk-scale-above-one-not-warned",
        "a trunk_lr_scale above 1 on a frozen trunk is not warned of",
        "            if getattr(train, key) != 1:",
        "            if getattr(train, key) < 1:",
        ("tests/test_check_params.py", "-k", "take_effect"),
    ),
    Mutation(
        "misspelt-group-crashes",
        "a misspelt group of params.yaml is a traceback, not 'unknown key ... did you mean'",
        "if dataclasses.is_dataclass(f.type) and f.name in node:",
        "if dataclasses.is_dataclass(f.type):",
        ("tests/test_config.py", "-k", "misspelt_group"),
    ),
    Mutation(
        "patience-typed-float",
        "train.early_stopping.patience takes a fraction of an epoch",
        "    patience: int = MISSING  # epochs without improvement",
        "    patience: float = MISSING  # epochs without improvement",
        ("tests/test_config.py", "-k", "fraction_is_refused"),
    ),
    Mutation(
        "predict-stops-after-an-unreadable-batch",
        "tools.predict stops at a batch with no readable image: the images after it get no answer",
        "        if not pixels:\n            continue",
        "        if not pixels:\n            break",
        ("tests/test_predict.py", "-k", "no_readable_image"),
    ),
    Mutation(
        "start-source-names-prepare-folder",
        "start.pt says it was pretrained on prepare.data_dir, not pretrain.data_dir",
        'f"pretrained on {params.pretrain.data_dir}"',
        'f"pretrained on {params.prepare.data_dir}"',
        ("tests/test_recipes.py", "-k", "pretraining_takes_its_own"),
    ),
    Mutation(
        "ema-warmup-decay-uncapped",
        "the moving average's warm-up decay climbs past train.ema_decay",
        ".clamp(max=decay)",
        "",
        ("tests/test_recipes.py", "-k", "warms_up_as_the_recipe and 0.45"),
    ),
    Mutation(
        "ema-counters-stale",
        "the moving average stops copying the model's BatchNorm batch counters after its first step",
        "            for mine, theirs in zip(averaged, current, strict=True):\n                mine.copy_(theirs)\n",
        "            pass  # counters are not averaged\n",
        ("tests/test_recipes.py", "-k", "warms_up_as_the_recipe and 0.999"),
    ),
    Mutation(
        "head-container-at-head-rate",
        "layers beside a nested head (MobileNetV3's classifier.0) learn at the head's rate, not the trunk's",
        'in_head = name.startswith(f"{head}.")',
        "in_head = name.startswith(f\"{head.split('.')[0]}.\")",
        ("tests/test_recipes.py", "-k", "beside_a_nested_head"),
    ),
    Mutation(
        "freeze-error-example-missing-module",
        "the refusal of an unknown freeze module suggests conv1.0, a module ResNet does not have",
        'example = next((n for n in names if any(n.startswith(f"{stage}.") for stage in stages)), stages[0])',
        'example = f"{stages[0]}.0"',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "best-pt-keeps-the-schedule",
        "best.pt keeps the learning-rate schedule's state, which only resuming the run needs",
        '    for key in ("optimizer_state_dict", "scheduler_state_dict", "ema_state_dict", "ema_updates"):',
        '    for key in ("optimizer_state_dict", "ema_state_dict", "ema_updates"):',
        ("tests/test_select_best.py", "-k", "winning_average_whole"),
    ),
    Mutation(
        "warmup-epochs-typed-float",
        "train.warmup_epochs takes a fraction of an epoch (1.5), which no schedule can follow",
        "    warmup_epochs: int = MISSING",
        "    warmup_epochs: float = MISSING",
        ("tests/test_config.py", "-k", "fraction_is_refused"),
    ),
    Mutation(
        "step-every-typed-float",
        "train.step_every takes a fraction of an epoch (2.5): the step schedule steps at no whole epoch",
        "    step_every: int = MISSING",
        "    step_every: float = MISSING",
        ("tests/test_config.py", "-k", "fraction_is_refused"),
    ),
    Mutation(
        "tv-weights-of-another-models-enum",
        "a torchvision weights name qualified by another model's enum is taken as this model's member",
        '    member = name.split(".", 1)[1] if name.startswith(f"{enum.__name__}.") else name',
        '    member = name.rpartition(".")[2]',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "timm-tags-of-look-alike-models",
        "timm's pretrained tags are listed with the glob NAME* not NAME.*: resnet18 takes resnet18d's tags",
        'timm.list_pretrained(f"{name}.*")',
        'timm.list_pretrained(f"{name}*")',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "timm-tag-hint-for-unknown-model",
        "any timm arch with a dot is told to move the tag to model.weights, even when the model is unknown",
        "    if tag and model in known:",
        "    if tag:",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "bare-weights-file-name-taken-for-a-tag",
        "a weights file is told by its folder alone, not its suffix: a bare mine.pt is a weights name",
        '    return weights.endswith(WEIGHTS_FILE_SUFFIXES) or "/" in weights or os.sep in weights',
        '    return "/" in weights or os.sep in weights',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "pretrain-folder-unchecked-without-pretraining",
        "check_params looks for pretrain.data_dir only when pretraining: DVC, not it, stops on the missing folder",
        "        if not Path(folder).is_dir():\n",
        '        if not Path(folder).is_dir() and (key == "prepare.data_dir" or weights == PRETRAIN_WEIGHTS):\n',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "label-smoothing-message-allows-one",
        "the refusal of train.label_smoothing = 1.0 says it must be 'a number in [0, 1]', which 1.0 is",
        '_require(0 <= smoothing < 1, "train.label_smoothing", smoothing, "a number in [0, 1)")',
        '_require(0 <= smoothing < 1, "train.label_smoothing", smoothing, "a number in [0, 1]")',
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "sync-batchnorm-refused-with-one-process",
        "check_params refuses train.sync_batchnorm with one process on the CPU, where the docs promise a warning",
        "    if params.train.sync_batchnorm and params.train.processes > 1:\n        check_sync_batchnorm(device)",
        "    if params.train.sync_batchnorm:\n        check_sync_batchnorm(device)",
        ("tests/test_check_params.py", "-k", "cannot_take_effect"),
    ),
    Mutation(
        "first-zero-refused",
        "freeze: first:0, which freezes nothing, is refused as out of range ('but this model has N stages')",
        "        if not 0 <= spec.count <= len(stages):\n",
        "        if not 1 <= spec.count <= len(stages):\n",
        ("tests/test_check_params.py", "-k", "take_effect_are_not"),
    ),
    Mutation(
        "early-stop-mode-as-text",
        "early stopping gets select.mode as text, read as max: a run whose val_loss falls stops as 'not improved'",
        "early_stop(run.history, params.select.metric, params.select.mode, config.early_stopping)",
        "early_stop(run.history, params.select.metric, params.select.mode.value, config.early_stopping)",
        ("tests/test_recipes.py", "-k", "default_recipe_trains"),
    ),
    Mutation(
        "class-weights-none-compared-as-text",
        "train.class_weights none is compared with the text 'none', never equal to the enum: every run is balanced",
        "    if kind is ClassWeights.none:\n",
        '    if kind == "none":\n',
        ("tests/test_recipes.py", "-k", "default_recipe_trains"),
    ),
    Mutation(
        "split-too-small-message-undercounts",
        "prepare says a class needs at least 2 images (the fractions' count), not 3: one for train, val and test",
        'each class needs at least {len(names)} "',
        'each class needs at least {len(fractions)} "',
        ("tests/test_prepare.py", "-k", "too_small_for_every_split"),
    ),
    Mutation(
        "fit-weights-compares-sizes-not-shapes",
        "the weights fit check compares element counts, not shapes: transposed tensors pass it",
        "own[k].shape != v.shape]",
        "own[k].numel() != v.numel()]",
        ("tests/test_check_params.py", "-k", "does_not_fit_the_arch"),
    ),
    Mutation(
        "fit-weights-missing-count-capped",
        "the keys a weights file misses are cut to 5 before they are counted: the message says 5",
        "    missing = [k for k in missing if not _is_head_key(k, head)]\n",
        "    missing = [k for k in missing if not _is_head_key(k, head)][:5]\n",
        ("tests/test_check_params.py", "-k", "missing_a_stage"),
    ),
    Mutation(
        "weights-checkpoint-checksum-unchecked",
        "build_model reads a pipeline checkpoint's spec (and weights) without verifying its checksum",
        "    return ModelSpec.from_checkpoint(verify_checkpoint(loaded, path))",
        "    return ModelSpec.from_checkpoint(loaded)",
        ("tests/test_errors.py", "-k", "damaged and start"),
    ),
    Mutation(
        "timm-border-crop-unwarned",
        "only timm tags whose crop_mode is squash are warned of; border tags get the centre crop silently",
        '    if config["crop_mode"] != "center":',
        '    if config["crop_mode"] == "squash":',
        ("tests/test_timm.py", "-k", "not_a_centre_crop"),
    ),
    Mutation(
        "regnet-skeleton-leaves-init-off",
        "_no_weight_init records the originals after installing the no-ops: it 'restores' the no-ops",
        "    originals = {name: getattr(nn.init, name) for name in initializers}\n"
        "    for name in initializers:\n"
        "        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)\n",
        "    for name in initializers:\n"
        "        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)\n"
        "    originals = {name: getattr(nn.init, name) for name in initializers}\n",
        ("tests/test_models.py", "-k", "regnet_of_random"),
    ),
    Mutation(
        "fingerprint-hashes-bytecode",
        "the fingerprint hashes pipeline/__pycache__ too: bytecode written after a kill makes the rerun start over",
        'if path.is_file() and "__pycache__" not in path.parts)',
        "if path.is_file())",
        ("tests/test_runs.py", "-k", "moved_project"),
    ),
    Mutation(
        "predict-top-k-unused",
        "tools.predict ignores --top-k: every image gets all the classes, a 1000-class model 1000 columns",
        "    top_k = min(args.top_k, len(spec.classes))\n",
        "    top_k = len(spec.classes)\n",
        ("tests/test_predict.py", "-k", "json_lists"),
    ),
    Mutation(
        "select-max-tie-to-the-later-epoch",
        "with select.mode max (val_accuracy, val_f1) a tie goes to the later epoch, and to the average over the raw",
        '.sort_values(["epoch", "ema"])',
        '.sort_values(["epoch", "ema"], ascending=mode is Mode.min)',
        ("tests/test_select_best.py", "-k", "pick_best"),
    ),
    Mutation(
        "classes-f1-ties-by-name",
        "best/classes.csv orders classes of equal F1 by name only, not by recall first",
        'table.sort_values(["f1", "recall", "class"], kind="stable")',
        'table.sort_values(["f1", "class"], kind="stable")',
        ("tests/test_interpretation.py", "-k", "ties_in_f1"),
    ),
    Mutation(
        "screenshot-window-too-short",
        "tools.screenshot renders in a 1600 px tall window: a page taller than that is cut off",
        "TALLEST = 16_000",
        "TALLEST = 1_600",
        ("tests/test_plots.py", "-k", "cut_below"),
    ),
    Mutation(
        "duplicates-csv-without-dhash",
        "duplicates.csv leaves out its dhash column: the hash that matched each near copy is not listed",
        'DUPLICATE_COLUMNS = ["group", "path", "label", "split", "match", "sha1", "dhash"]',
        'DUPLICATE_COLUMNS = ["group", "path", "label", "split", "match", "sha1"]',
        ("tests/test_prepare.py", "-k", "keeps_duplicates"),
    ),
    Mutation(
        "duplicate-groups-numbered-by-size",
        "duplicates.csv numbers its groups largest first (value_counts), not in manifest order",
        'number = {group: n for n, group in enumerate(dict.fromkeys(rows["group"]), start=1)}',
        'number = {group: n for n, group in enumerate(rows["group"].value_counts().index, start=1)}',
        ("tests/test_prepare.py", "-k", "keeps_duplicates"),
    ),
    Mutation(
        "hash-vertical-bits-compared-across",
        "image_hash compares the tall thumbnail's pixels with their left neighbours, not those above them",
        "(tall[1:] > tall[:-1]).ravel()",
        "(tall[:, 1:] > tall[:, :-1]).ravel()",
        ("tests/test_prepare.py", "-k", "do_not_depend_on_the_models_sizing"),
    ),
    Mutation(
        "prepare-params-unchecked",
        "prepare loads params.yaml unchecked: it rewrites data/prepared/ on unchecked values, then fails at its end",
        "    all_params = load_checked_params()\n    params, model = all_params.prepare, all_params.model\n",
        "    from pipeline.config import load_params\n"
        "\n"
        "    all_params = load_params()\n"
        "    params, model = all_params.prepare, all_params.model\n",
        ("tests/test_errors.py", "-k", "edited and since"),
    ),
    Mutation(
        "model-input-size-from-shrunk-decode",
        "the model's input is resized from the shrunk decode's shape, not the whole image's: a pixel off, off-centre",
        "resized = resized_size(decoded.size[1], decoded.size[0], sizing.resize)",
        "resized = resized_size(*pixels.shape[:2], sizing.resize)",
        ("tests/test_data.py", "-k", "large_png_shrunk"),
    ),
    Mutation(
        "cache-code-version-decode-only",
        "the decoded cache's names hash decode.py alone: after an edit of copies.py stages read the old copies",
        '    for path in sorted(Path(__file__).parent.glob("*.py")):\n',
        '    for path in [Path(__file__).with_name("decode.py")]:\n',
        ("tests/test_prepare.py", "-k", "never_reads_an_old_cache"),
    ),
    Mutation(
        "timm-matcher-assertion-uncaught",
        "timm's stages no longer fall back when a model's coarse group matcher asserts (RDNet)",
        "    except (AttributeError, AssertionError, NotImplementedError):  # a few models' matchers do not run",
        "    except (AttributeError, NotImplementedError):  # a few models' matchers do not run",
        ("tests/test_check_params.py", "-k", "take_effect_are_not"),
    ),
    Mutation(
        "pretrain-log-epoch-and-total-swapped",
        "the weights stage's pretraining log swaps the epoch and the number of epochs",
        "            epoch,\n            config.epochs,\n",
        "            config.epochs,\n            epoch,\n",
        ("tests/test_recipes.py", "-k", "pretraining_takes_its_own"),
    ),
    Mutation(
        "run-lock-keeps-earlier-pids",
        "a run folder's lock file keeps every trainer's pid: a refusal after a resume names 'pid 101pid 202'",
        '        self._lock.truncate()\n        self._lock.write(f"pid {os.getpid()}")',
        '        self._lock.write(f"pid {os.getpid()}")',
        ("tests/test_runs.py", "-k", "second_trainer"),
    ),
    Mutation(
        "rank-failure-line-loses-resume-hint",
        "a failed training process's line no longer says that rerunning resumes after the last checkpoint",
        'after = {"training": "; every checkpoint written so far is complete',
        'after = {"train": "; every checkpoint written so far is complete',
        ("tests/test_distributed.py", "-k", "rank_killed_mid_epoch"),
    ),
    Mutation(
        "pillow-filter-reducing-gap",
        "Pillow-only filters resize with reducing_gap=3.0: images 6 times the size are box-reduced first",
        "RESAMPLING[sizing.interpolation], reducing_gap=None)",
        "RESAMPLING[sizing.interpolation], reducing_gap=3.0)",
        ("tests/test_data.py", "-k", "pillow_filters_resize"),
    ),
    Mutation(
        "export-stub-logged-as-exported",
        "a model torch.export cannot capture is logged as exported (the stub's path named as the program)",
        "        return False  # the line is not cached: only programs are\n",
        "        return True  # the line is not cached: only programs are\n",
        ("tests/test_export.py", "-k", "failed_export_keeps"),
    ),
    Mutation(
        "verify-one-workspace-link-per-object",
        "tools.verify names (and --repair deletes) only one of several workspace files hard-linked to a damaged object",
        "links.setdefault((stat.st_dev, stat.st_ino), []).append(path)",
        "links[(stat.st_dev, stat.st_ino)] = [path]",
        ("tests/test_verify.py", "-k", "names_the_workspace_files"),
    ),
    Mutation(
        "predict-default-top-five",
        "tools.predict lists 5 classes per image by default, not the documented 3 (its help still says 3)",
        'parser.add_argument("--top-k", type=positive_int, default=3, help="classes per image (default: 3)")',
        'parser.add_argument("--top-k", type=positive_int, default=5, help="classes per image (default: 3)")',
        ("tests/test_predict.py", "-k", "table_prints"),
    ),
    Mutation(
        "predict-log-counts-every-path-as-an-image",
        "tools.predict's first log line counts every path found (FIFOs, broken links) as an image to classify",
        "        args.model, spec.arch, len(spec.classes), spec.image_size, len(files), device,\n",
        "        args.model, spec.arch, len(spec.classes), spec.image_size, len(entries), device,\n",
        ("tests/test_predict.py", "-k", "every_path_named"),
    ),
    Mutation(
        "predict-log-names-the-device-asked-for",
        "tools.predict logs the --device text, not the device it runs on: 'on auto' instead of 'on cpu' or 'on cuda:0'",
        "        args.model, spec.arch, len(spec.classes), spec.image_size, len(files), device,",
        "        args.model, spec.arch, len(spec.classes), spec.image_size, len(files), args.device,",
        ("tests/test_predict.py", "-k", "every_path_named"),
    ),
    Mutation(
        "early-stop-reads-val-loss-whatever-the-metric",
        "early_stop judges improvement on val_loss whatever select.metric names, while its message names the metric",
        "        value = sign * record[metric]\n",
        '        value = sign * record["val_loss"]\n',
        ("tests/test_recipes.py", "-k", "test_early_stop and not stopping"),
    ),
    Mutation(
        "select-best-log-reports-the-best-test-accuracy-of-any-epoch",
        "select-best's log line gives the highest test accuracy of any epoch, not the chosen checkpoint's",
        '        best["test_accuracy"],\n        BEST_MODEL,\n',
        '        raw["test_accuracy"].max(),\n        BEST_MODEL,\n',
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "copy-short-side-cap-dropped",
        "training copies are capped by the longer side's cap alone: a 5:4 photo's copy is 240x192, not 200x160",
        "    factor = min(short_cap / min(whole), round(COPY_LONG * short_cap) / max(whole), 1.0)",
        "    factor = min(round(COPY_LONG * short_cap) / max(whole), 1.0)",
        ("tests/test_crops.py", "-k", "both_caps"),
    ),
    Mutation(
        "fallback-box-taller-than-the-picture",
        "when no random resized crop fits, a picture within the aspect range gets a box taller than the picture",
        "(ratio < 1 / max_aspect), (width * max_aspect).round()",
        "(ratio < max_aspect), (width * max_aspect).round()",
        ("tests/test_crops.py", "-k", "no_box_fits"),
    ),
    Mutation(
        "recipe-keys-are-the-visited-items",
        "each visit's recipe key is the index of the item visited: an image gets the same policy op every epoch",
        "    return EpochOrder(order, draws, torch.randint(2**62, (n,), generator=generator) if keys else None)",
        "    return EpochOrder(order, draws, order.clone() if keys else None)",
        ("tests/test_engine.py", "-k", "recipe_on"),
    ),
    Mutation(
        "cache-key-without-resize",
        "the decoded-image cache is named without the resize size: weights with a margin read the other inputs",
        '        return {"resize_size": self.resize, "image_size": self.crop, "interpolation": self.interpolation}',
        '        return {"resize_size": self.crop, "image_size": self.crop, "interpolation": self.interpolation}',
        ("tests/test_data.py", "-k", "another_filter_or_resize"),
    ),
    Mutation(
        "classes-confused-count-written-as-float",
        "best/classes.csv (and the plots page's per-class table) gives each class's confused count as 2.0, not 2",
        "    counts = confusion_matrix(targets, predicted, len(classes))\n",
        "    counts = confusion_matrix(targets, predicted, len(classes)).double()\n",
        ("tests/test_interpretation.py", "-k", "hand_count_weakest"),
    ),
    Mutation(
        "copy-shrunk-without-antialias",
        "training copies are shrunk without antialiasing: crops cut from them alias fine detail",
        'mode="bicubic", align_corners=False, antialias=True)',
        'mode="bicubic", align_corners=False, antialias=False)',
        ("tests/test_crops.py", "-k", "resized_crop"),
    ),
    Mutation(
        "copy-shrunk-with-corners-aligned",
        "training copies are shrunk with align_corners=True: crops cut at the box's place in the copy are shifted",
        'size=(height, width), mode="bicubic", align_corners=False',
        'size=(height, width), mode="bicubic", align_corners=True',
        ("tests/test_crops.py", "-k", "resized_crop"),
    ),
    Mutation(
        "run-cache-in-the-throwaway-workspace",
        "queued and --temp experiments keep their run folders and decoded images in DVC's throw-away copy",
        '    return Path(os.environ.get("DVC_ROOT", ".")) / ".cache" / name',
        '    return Path(".") / ".cache" / name',
        ("tests/test_runs.py", "-k", "queued"),
    ),
    Mutation(
        "unfrozen-phase-trains-only-the-head",
        "after gradual unfreezing the head alone trains, on cached features (params.freeze, not the phase's spec)",
        'if spec.kind == "all_but_head" and config.cache_features',
        'if run.params.freeze == "all_but_head" and config.cache_features',
        ("tests/test_recipes.py", "-k", "gradual_unfreezing_survives"),
    ),
    Mutation(
        "erasing-declared-as-shaping",
        "train.augment.erasing is declared as shaping the policy: a head-only run with erasing takes the feature cache",
        "    erasing: float = off_at(0.0)  # RandomErasing's probability per image",
        '    erasing: float = shapes("policy")  # RandomErasing\'s probability per image, after the policy',
        ("tests/test_augment.py", "-k", "nothing_on"),
    ),
    Mutation(
        "warmup-warning-numbers-swapped",
        "check_params' warm-up warning puts train.epochs where train.warmup_epochs goes and the other way round",
        "{train.warmup_epochs} is not smaller than train.epochs = {epochs}",
        "{epochs} is not smaller than train.epochs = {train.warmup_epochs}",
        ("tests/test_check_params.py", "-k", "cannot_take_effect"),
    ),
    Mutation(
        "step-warning-numbers-swapped",
        "check_params' step-schedule warning gives train.epochs as step_every and step_every as the epoch count",
        "step_every = {train.step_every}: the step schedule never steps in {epochs} epochs",
        "step_every = {epochs}: the step schedule never steps in {train.step_every} epochs",
        ("tests/test_check_params.py", "-k", "cannot_take_effect"),
    ),
    Mutation(
        "exports-of-the-last-checkpoint-read",
        "select-best exports the last checkpoint it read as best.pt2 and best_image.pt2, not the chosen weights",
        "    write_exports(checkpoint, checksum=checksum)  # copied from the export cache",
        "    write_exports(loaded, checksum=checksum)  # copied from the export cache",
        ("tests/test_select_best.py", "-k", "winning_average"),
    ),
    Mutation(
        "classes-confused-counts-every-mistake",
        "best/classes.csv's confused column counts all of a class's mistakes, not those taken for confused_with",
        '"confused": confused.numpy(),',
        '"confused": (support - hits).long().numpy(),',
        ("tests/test_interpretation.py", "-k", "hand_count_weakest"),
    ),
    Mutation(
        "crop-boxes-drawn-over-the-first-rows-sizes",
        "the train split's crop boxes are drawn over the sizes of the cache's first rows, not of the rows visited",
        "        self.whole_sizes = self.copies.whole_sizes(self.rows)\n",
        "        self.whole_sizes = self.copies.whole_sizes(torch.arange(len(self.copies)))\n",
        ("tests/test_crops.py", "-k", "train_splits_crops"),
    ),
    Mutation(
        "train-crops-bilinear-whatever-the-weights",
        "the train stage's random resized crops are resized bilinearly whatever filter the weights state",
        "spec.image_size, spec.interpolation)",
        'spec.image_size, "bilinear")',
        ("tests/test_crops.py", "-k", "train_splits_crops"),
    ),
    Mutation(
        "hash-horizontal-bits-compared-down",
        "image_hash compares the wide thumbnail's pixels with those above them, not their left neighbours",
        "(wide[:, 1:] > wide[:, :-1]).ravel()",
        "(wide[1:] > wide[:-1]).ravel()",
        ("tests/test_prepare.py", "-k", "do_not_depend_on_the_models_sizing"),
    ),
    Mutation(
        "cache-key-without-crop",
        "the decoded-image cache is named without the crop: another image_size with the same resize reads its inputs",
        '        return {"resize_size": self.resize, "image_size": self.crop, "interpolation": self.interpolation}',
        '        return {"resize_size": self.resize, "interpolation": self.interpolation}',
        ("tests/test_data.py", "-k", "another_filter_or_resize"),
    ),
    Mutation(
        "verify-dvc-file-outs-from-the-root",
        "tools.verify reads a .dvc file's outputs from the project's root, not its own folder: data/raw.dvc's raw",
        'return [path.parent / out["path"] for out in outs(',
        'return [root / out["path"] for out in outs(',
        ("tests/test_verify.py", "-k", "dvc_add"),
    ),
    Mutation(
        "verify-dvc-files-ignored",
        "tools.verify links damaged objects only to dvc.lock's outputs: data tracked with dvc add is never named",
        '            if name.endswith(".dvc"):',
        '            if name == "dvc.lock":',
        ("tests/test_verify.py", "-k", "dvc_add"),
    ),
    Mutation(
        "validation-scored-with-training-flips",
        "with train.augment.hflip the checkpoints' val scores average each image with its mirror: not evaluate's",
        "score(predict(model, val_data, loop.batch_size, loop.ranks), val_data.targets, num_classes)",
        "score(predict(model, val_data, loop.batch_size, loop.ranks, flip=loop.hflip), val_data.targets, num_classes)",
        ("tests/test_distributed.py", "-k", "batchnorm_training"),
    ),
    Mutation(
        "model-redecode-at-the-crops-margin",
        "prepare decodes a file again for the model with the crop's margin, not the resize's",
        "                decoded = decode(io.BytesIO(content), sizing.resize)\n",
        "                decoded = decode(io.BytesIO(content), sizing.crop)\n",
        ("tests/test_preprocessing.py", "-k", "decodes_anew"),
    ),
    Mutation(
        "grey-16-bit-truncated",
        "16- and 32-bit grey images are scaled to 8 bits by truncation, not rounding: every pixel up to a step"
        " darker (32768 of 65535 becomes 127, not 128)",
        "np.clip(pixels / peak * 255.0, 0, 255).round().astype(np.uint8)",
        "np.clip(pixels / peak * 255.0, 0, 255).astype(np.uint8)",
        ("tests/test_data.py", "-k", "scales_16_bit_grey_instead_of_clipping"),
    ),
    Mutation(
        "split-minimum-counts-three-splits",
        "the smallest-class check counts the three SPLITS whatever the fractions: pretraining (val only)"
        " refuses a source class of 2 images that train + val could split",
        "        if len(units) < len(names):\n",
        "        if len(units) < len(SPLITS):\n",
        ("tests/test_data.py", "-k", "with_val_alone_a_class_needs_two_images"),
    ),
    Mutation(
        "copies-index-of-every-written-file",
        "the training copies' index lists every decoded file, the conflicting copies prepare left out too:"
        " after such a file, every random resized crop is cut from another image than its row's",
        "            np.save(file, written.copies.index(rows))",
        "            np.save(file, written.copies.index(list(written.copies.rows)))",
        ("tests/test_prepare.py", "-k", "keeps_duplicates_in_one_split_and_drops_conflicting_copies"),
    ),
    Mutation(
        "load-image-at-the-crops-margin",
        "load_image (tools.predict, the mistakes' heat maps) decodes with the crop's margin, not the resize's:"
        " on large photos predict's inputs and probabilities differ from evaluate's",
        "    return model_input(decode(path, sizing.resize), sizing)",
        "    return model_input(decode(path, sizing.crop), sizing)",
        ("tests/test_preprocessing.py", "-k", "decoded_at_reduced_scale and 128-1"),
    ),
    Mutation(
        "hash-decode-reused-for-non-jpegs",
        "prepare decodes again for the model only for JPEGs: large PNGs/TIFFs/WebPs keep the hash's decode,"
        " so the cached inputs (evaluate, train) differ from load_image's (predict)",
        "            if not decoded.same_for(sizing.resize):\n",
        "            if decoded.jpeg and not decoded.same_for(sizing.resize):\n",
        ("tests/test_preprocessing.py", "-k", "decodes_anew and tiff"),
    ),
    Mutation(
        "grey-32-bit-unclipped",
        "32-bit grey pixels beyond the white level (over 65535, or negative) wrap around in uint8 instead of"
        " saturating: such images turn to noise",
        "np.clip(pixels / peak * 255.0, 0, 255).round()",
        "(pixels / peak * 255.0).round()",
        ("tests/test_data.py", "-k", "scaled_by_their_white and beyond_white"),
    ),
    Mutation(
        "grey-32-bit-white-past-256",
        "a 32-bit grey picture whose brightest value is 256 is read as 8-bit, where docs/design.md takes any value"
        " above 255 for 16-bit: it comes out 257 (65535 / 255) times too bright",
        "image.getextrema()[1] > 255",
        "image.getextrema()[1] > 256",
        ("tests/test_data.py", "-k", "scaled_by_their_white and just_past"),
    ),
    Mutation(
        "pretrain-folder-scanned-for-any-weights",
        "check_params scans pretrain.data_dir whenever model.weights is not null: a run from torchvision weights "
        "is refused over a pretrain folder that no stage reads",
        "or weights == PRETRAIN_WEIGHTS:  # the folders a stage will read",
        "or weights is not None:  # the folders a stage will read",
        ("tests/test_check_params.py", "-k", "scanned_only_when_pretraining"),
    ),
    Mutation(
        "ema-decay-message-allows-one",
        "the refusal of train.ema_decay = 1.0 says it must be 'a number in [0, 1]', which 1.0 is",
        '"a number in [0, 1); 0 = off"',
        '"a number in [0, 1]; 0 = off"',
        ("tests/test_config.py", "-k", "documented_range"),
    ),
    Mutation(
        "magnitude-message-on-timm-scale",
        "a refused train.augment.randaugment_magnitude is told to be in [0, 10] (timm's scale), "
        "though the check and docs allow 0-30",
        '"an integer in [0, 30]"',
        '"an integer in [0, 10]"',
        ("tests/test_config.py", "-k", "documented_range"),
    ),
    Mutation(
        "accumulate-steps-refusal-quotes-processes",
        "train.accumulate_steps = 0 is refused as '0 (read as 1)': the message quotes train.processes' value",
        '_require(train.accumulate_steps >= 1, "train.accumulate_steps", train.accumulate_steps,',
        '_require(train.accumulate_steps >= 1, "train.accumulate_steps", train.processes,',
        ("tests/test_config.py", "-k", "documented_range"),
    ),
    Mutation(
        "patience-warning-counts-one-epoch-short",
        "check_params' early-stopping warning for an 8-epoch run says 'in 7 epochs no run can go that long'",
        "patience = {patience}: in {epochs} epochs no run",
        "patience = {patience}: in {epochs - 1} epochs no run",
        ("tests/test_check_params.py", "-k", "cannot_take_effect_are_warned"),
    ),
    Mutation(
        "unfreeze-warning-names-freeze",
        "the 'unfreeze_after is not smaller than epochs' warning names freeze's spec "
        "as the unfreeze_to that never takes over",
        'f"train.unfreeze_to ({train.unfreeze_to}) never takes over"',
        'f"train.unfreeze_to ({params.freeze}) never takes over"',
        ("tests/test_check_params.py", "-k", "cannot_take_effect_are_warned"),
    ),
    Mutation(
        "unfreeze-to-ignored-warning-names-freeze",
        "the 'unfreeze_to has no effect while unfreeze_after is 0' warning quotes freeze's value, not unfreeze_to's",
        'lines.append(f"train.unfreeze_to = {train.unfreeze_to!r} has no effect while',
        'lines.append(f"train.unfreeze_to = {params.freeze!r} has no effect while',
        ("tests/test_check_params.py", "-k", "cannot_take_effect_are_warned"),
    ),
    Mutation(
        "no-decay-wildcards-unmatched",
        "fnmatch's arguments swapped: no_weight_decay() wildcards (timm XCiT's 'pos_embed.*') no longer match, "
        "so those weights get decay that timm's param_groups_weight_decay leaves off",
        "any(fnmatch.fnmatch(name, p) for p in patterns)",
        "any(fnmatch.fnmatch(p, name) for p in patterns)",
        ("tests/test_timm.py", "-k", "parameter_groups_are_timms and xcit"),
    ),
    Mutation(
        "font-fallback-catches-only-missing-files",
        "without DejaVu Sans (slim images, macOS) select-best dies with OSError 'cannot open resource', no picture",
        "    except OSError:\n        return ImageFont.load_default(size)",
        "    except FileNotFoundError:\n        return ImageFont.load_default(size)",
        ("tests/test_interpretation.py", "-k", "no_mistakes_without_dejavu_sans"),
    ),
    Mutation(
        "font-fallback-at-default-size",
        "without DejaVu Sans the picture's labels and title fall back to Pillow's 10 px font, not TEXT (14 px)",
        "        return ImageFont.load_default(size)",
        "        return ImageFont.load_default()",
        ("tests/test_interpretation.py", "-k", "no_mistakes_without_dejavu_sans"),
    ),
    Mutation(
        "gallery-true-label-cut-to-one-panel",
        "in mistakes.png a true class name over ~11 characters is cut with an ellipsis though its tile has room",
        'true_line = label("true: ", tile.actual, "", tile_width, face)',
        'true_line = label("true: ", tile.actual, "", PANEL, face)',
        ("tests/test_interpretation.py", "-k", "long_class_name"),
    ),
    Mutation(
        "gallery-label-fit-check-ignores-the-probability",
        "a predicted class name that fits without '  p = 0.93' is not cut: the line runs into the next tile",
        "    if face.getlength(before + name + after) <= width:",
        "    if face.getlength(before + name) <= width:",
        ("tests/test_interpretation.py", "-k", "long_class_name"),
    ),
    Mutation(
        "gallery-heat-enlarged-nearest",
        "mistakes.png's heat maps are enlarged nearest-neighbour: blocky squares (4x4 at the demo's 32 px), not smooth",
        "resize(image.size, Image.Resampling.BILINEAR)",
        "resize(image.size, Image.Resampling.NEAREST)",
        ("tests/test_interpretation.py", "-k", "heat_is_jet_coloured"),
    ),
    Mutation(
        "gallery-large-inputs-shrunk-nearest",
        "inputs above 128 px (224 for most weights) are shrunk nearest-neighbour in mistakes.png: aliased, not Lanczos",
        "    enlarge = image.width <= PANEL\n"
        "    return image.resize((PANEL, PANEL), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)",
        "    return image.resize((PANEL, PANEL), Image.Resampling.NEAREST)",
        ("tests/test_interpretation.py", "-k", "without_a_layer"),
    ),
    Mutation(
        "cached-export-copied-in-place",
        "a rerun that reuses a cached export writes it into models/best*.pt2 in place, not via temp file + rename:"
        " a kill or full disk leaves a truncated program, and a hard-linked (DVC cache) output is overwritten",
        "            with atomic_path(path) as tmp:\n                shutil.copyfile(cached, tmp)\n",
        "            shutil.copyfile(cached, path)\n",
        ("tests/test_export.py", "-k", "rerun_reuses_it"),
    ),
    Mutation(
        "export-stub-written-in-place",
        "the 'not a model' line for an export that fails is written straight into best*.pt2, not atomically",
        '        with atomic_write(path, "w") as file:\n            file.write(f"not a model:',
        '        with open(path, "w") as file:\n            file.write(f"not a model:',
        ("tests/test_export.py", "-k", "failed_export_keeps"),
    ),
    Mutation(
        "predict-csv-crlf",
        "predict --format csv ends every row with \\r\\n (csv's default), so `> predictions.csv` gets CRLF lines",
        'writer = csv.writer(out, lineterminator="\\n")',
        "writer = csv.writer(out)",
        ("tests/test_predict.py", "-k", "csv_matches"),
    ),
    Mutation(
        "predict-table-two-decimals",
        "predict's table prints each probability with two decimals (40.32%) instead of the one it promises (40.3%)",
        ' {q:6.1%}"',
        ' {q:6.2%}"',
        ("tests/test_predict.py", "-k", "table_prints"),
    ),
    Mutation(
        "verify-intact-without-damaged-objects",
        "tools.verify says 'all intact' and exits 0 when damaged checkpoints have no damaged cache object "
        "(cache.type copy, a file replaced rather than damaged in place, a run not yet committed)",
        '    if not damages:\n        print(f"checked {n_checkpoints} checkpoints',
        '    if not damaged_objects:\n        print(f"checked {n_checkpoints} checkpoints',
        ("tests/test_verify.py", "-k", "whose_cache_object_is_intact"),
    ),
    Mutation(
        "verify-repair-objects-only",
        "tools.verify --repair deletes only damaged cache objects and their linked files: a damaged checkpoint "
        "whose cache object is intact (or absent) stays, though the tool then says to run dvc repro",
        "    if not repair(damages, root):",
        "    if not repair(damaged_objects, root):",
        ("tests/test_verify.py", "-k", "whose_cache_object_is_intact"),
    ),
    Mutation(
        "one-thread-taken-as-default",
        "train.threads: 1 is read as 0: one process trains on torch's own thread count (every core), and records it",
        "    if requested > 0:\n        return requested",
        "    if requested > 1:\n        return requested",
        ("tests/test_distributed.py", "-k", "cores_are_shared"),
    ),
    Mutation(
        "resume-keeps-threads-only-when-more",
        "a resumed run with train.threads 0 keeps its epochs' thread count only when it exceeds this machine's "
        "default: resumed where torch picks more threads, it rounds differently from the uninterrupted run",
        "    if requested == 0 and kept != threads:",
        "    if requested == 0 and kept > threads:",
        ("tests/test_resume.py", "-k", "keeps_its_cpu_threads"),
    ),
    Mutation(
        "val-curves-plot-val-loss",
        "dvclive's val/accuracy.tsv and val/f1.tsv curves hold each epoch's validation loss, not its accuracy and F1",
        'live.log_metric(f"val/{name}", record[column])',
        'live.log_metric(f"val/{name}", record["val_loss"])',
        ("tests/test_plots.py", "-k", "own_numbers"),
    ),
    Mutation(
        "epoch-lr-from-second-group",
        "each epoch records (and plots) the rate of optimizer group 1, not the head's group 0: with weight_decay 0 or "
        "decay_norms_and_biases a head-only run dies with IndexError, else the trunk's scaled rate is recorded",
        '"lr": run.optimizer.param_groups[0]["lr"],',
        '"lr": run.optimizer.param_groups[1]["lr"],',
        ("tests/test_recipes.py", "-k", "decaying_norms"),
    ),
    Mutation(
        "pretraining-clips-gradients",
        "LoopOptions defaults to clip_grad_norm 1.0: the weights stage (which passes no clip) silently clips "
        "every pretraining step, so models/start.pt is not the documented unclipped pretraining",
        "    clip_grad_norm: float = 0.0  # > 0: the gradients' total norm is clipped to this before each step",
        "    clip_grad_norm: float = 1.0  # > 0: the gradients' total norm is clipped to this before each step",
        ("tests/test_recipes.py", "-k", "pretraining_takes_its_own_params"),
    ),
    Mutation(
        "pretrain-epochs-repeat-one-draw",
        "the weights stage seeds every pretraining epoch as its last one: each epoch repeats the same "
        "shuffle and dropout draws (logs still count 1..N)",
        "loss, val = train_and_score(model, train_data, val_data, optimizer, loop, epoch, len(classes))",
        "loss, val = train_and_score(model, train_data, val_data, optimizer, loop, config.epochs, len(classes))",
        ("tests/test_recipes.py", "-k", "pretraining_takes_its_own_params"),
    ),
    Mutation(
        "recipe-keys-are-the-items-visited-in-the-loop",
        "the loop hands each batch's recipe the visited items' indices as keys, not the epoch's drawn seeds: "
        "with a policy or erasing, every image gets the same op and erased box in every epoch",
        '    keys = per_batch(plan.keys, torch.device("cpu"))',
        '    keys = per_batch(plan.order, torch.device("cpu"))',
        ("tests/test_engine.py", "-k", "new_recipe_keys_each_epoch"),
    ),
    Mutation(
        "stage-opening-picks-the-smallest",
        "stage_names measures the smallest stage, not the largest, against the 90% rule: Swin keeps "
        "[features, norm], RegNet [stem, trunk_output], MaxViT [stem, blocks], so first:1 freezes the whole trunk",
        "        largest = max(stages, key=size)",
        "        largest = min(stages, key=size)",
        ("tests/test_models.py", "-k", "opened_beside_a_small_stem_or_norm"),
    ),
    Mutation(
        "epoch-seconds-negative",
        "each epoch's duration is recorded as start minus end: checkpoints' `seconds`, the epoch log line and "
        "dvclive's epoch_seconds curve all show negative times",
        '"seconds": time.perf_counter() - started,',
        '"seconds": started - time.perf_counter(),',
        ("tests/test_models.py", "-k", "train_stage_freezes_the_modules"),
    ),
    Mutation(
        "manifest-csv-every-column",
        "manifest.csv is written with every in-memory column: path, label, sha1, dhash, split instead of the "
        "documented path, label, split, sha1",
        "    write_csv(manifest[MANIFEST_COLUMNS], MANIFEST)\n",
        "    write_csv(manifest, MANIFEST)\n",
        ("tests/test_prepare.py", "-k", "messy_folder"),
    ),
    Mutation(
        "run-checkpoints-unsorted",
        "a run folder's checkpoints are listed in directory order: on ext4 (hash order: epoch_001, 004, 002,"
        " 003 here) a run killed after epoch 4+ deletes them as 'does not continue this run' and retrains",
        'return sorted(self.path.glob("epoch_*.pt"))',
        'return list(self.path.glob("epoch_*.pt"))',
        ("tests/test_resume.py", "-k", "whatever_order"),
    ),
    Mutation(
        "crop-held-region-unclamped",
        "a crop box reaching the copy's right or bottom edge is cut past it where float scaling overshoots"
        " (about 7% of photo sizes): Pillow pads a black row/column that darkens the crop's last one",
        "        held = (math.floor(x0), math.floor(y0), min(math.ceil(x1), copy_width),"
        " min(math.ceil(y1), copy_height))",
        "        held = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))",
        ("tests/test_crops.py", "-k", "torchvisions_resized_crop_of_the_whole_image"),
    ),
    Mutation(
        "copy-size-truncated",
        "training copies' sides are truncated, not rounded: a 4032x3024 photo's copy is 746x560, not 747x560"
        " (aspect not kept to the nearest pixel; every crop of it shifts slightly)",
        "return max(round(whole[0] * factor), 1), max(round(whole[1] * factor), 1)",
        "return max(int(whole[0] * factor), 1), max(int(whole[1] * factor), 1)",
        ("tests/test_crops.py", "-k", "aspect"),
    ),
    Mutation(
        "second-trainer-shares-the-lock",
        "the trainer takes its run folder's lock shared: a second trainer of the same run (two dvc exp run"
        " --temp, or python -m pipeline.train twice) is not refused and trains into the same folder",
        "fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "fcntl.flock(self._lock, fcntl.LOCK_SH | fcntl.LOCK_NB)",
        ("tests/test_runs.py", "-k", "second_trainer"),
    ),
    Mutation(
        "code-files-in-listing-order",
        "the fingerprint hashes pipeline/'s files in directory-listing order: a project copied to another"
        " file system (other hash seed, btrfs, tmpfs) gets another fingerprint and never resumes its runs",
        "return sorted(path.relative_to(root) for path in files)",
        "return [path.relative_to(root) for path in files]",
        ("tests/test_runs.py", "-k", "another_file_system"),
    ),
    Mutation(
        "hash-luma-bgr",
        "image_hash weighs blue as red and red as blue: dhash values (duplicates.csv) and near-duplicate groups change",
        "LUMA = torch.tensor([0.299, 0.587, 0.114])",
        "LUMA = torch.tensor([0.114, 0.587, 0.299])",
        ("tests/test_data.py", "-k", "documented_dhash"),
    ),
    Mutation(
        "hash-wide-thumbnail-shape",
        "image_hash's wide thumbnail is 9x8, not 8x9: 63 left-right bits, another hash for every picture",
        "wide = TF.resize(grey, [8, 9], antialias=True)",
        "wide = TF.resize(grey, [9, 8], antialias=True)",
        ("tests/test_data.py", "-k", "documented_dhash"),
    ),
    Mutation(
        "hash-min-bits-4",
        "images with only 4-7 bits of one kind get a hash: nearly flat pictures group as near-duplicates",
        "MIN_HASH_BITS = 8",
        "MIN_HASH_BITS = 4",
        ("tests/test_data.py", "-k", "documented_dhash"),
    ),
    Mutation(
        "decoding-scratch-in-system-tmp",
        "the decoding pass's scratch arrays go to the system temp dir, not the cache folder: where /tmp is"
        " another file system (tmpfs) moving them into .cache/images fails (EXDEV) and a full array fills RAM",
        '        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".decoding.", suffix=suffix)\n',
        '        fd, name = tempfile.mkstemp(prefix=".decoding.", suffix=suffix)\n',
        ("tests/test_prepare.py", "-k", "scratch_files_in_the_cache_folder"),
    ),
    Mutation(
        "patience-off-warned-in-one-epoch-runs",
        "check_params warns 'train.early_stopping.patience = 0: in 1 epochs no run can go that long' on every "
        "one-epoch run, where early stopping is off and nothing is wrong",
        "    if patience and patience >= epochs - 1:\n",
        "    if patience >= epochs - 1:\n",
        ("tests/test_check_params.py", "-k", "take_effect_are_not_warned"),
    ),
    Mutation(
        "autoaugment-choice-misspelt",
        "params.yaml's documented `train.augment.policy: autoaugment` is refused as an invalid choice "
        "(the schema's value is spelt auto_augment)",
        '    autoaugment = "autoaugment"  # the ImageNet policy',
        '    autoaugment = "auto_augment"  # the ImageNet policy',
        ("tests/test_config.py", "-k", "documented_choice"),
    ),
    Mutation(
        "devices-torch-knows-accepted",
        "device: mps, meta or cpu:1 passes check_params, and a stage fails later with a traceback",
        'device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):',
        "False:",
        ("tests/test_check_params.py", "-k", "bad_params_are_named"),
    ),
    Mutation(
        "params-of-one-value-traceback",
        "a params.yaml holding a single value ends check_params in omegaconf's OSError traceback",
        "        if isinstance(root, yaml.ScalarNode) and root.value:  # omegaconf fails on it with an OSError",
        "        if False:",
        ("tests/test_errors.py", "-k", "one and value"),
    ),
    Mutation(
        "train-flips-upside-down",
        "train.augment.hflip without crops mirrors the training images upside down",
        "pixels = torch.where(draws.flips.view(-1, 1, 1, 1), pixels.flip(-1), pixels)",
        "pixels = torch.where(draws.flips.view(-1, 1, 1, 1), pixels.flip(-2), pixels)",
        ("tests/test_engine.py", "-k", "hflip_without_crops_mirrors_half_the_images"),
    ),
    Mutation(
        "flips-drawn-once-per-epoch",
        "train.augment.hflip flips every image of an epoch alike: one draw for all visits",
        "torch.rand(n, generator=generator) < 0.5 if hflip else None",
        "(torch.rand(1, generator=generator) < 0.5).expand(n) if hflip else None",
        ("tests/test_engine.py", "-k", "hflip_without_crops_mirrors_half_the_images"),
    ),
    Mutation(
        "flips-one-in-four",
        "train.augment.hflip mirrors a quarter of the visits, not half as RandomHorizontalFlip does",
        "torch.rand(n, generator=generator) < 0.5 if hflip else None",
        "torch.rand(n, generator=generator) < 0.25 if hflip else None",
        ("tests/test_engine.py", "-k", "hflip_without_crops_mirrors_half_the_images"),
    ),
    Mutation(
        "start-lists-pretrain-classes",
        "models/start.pt of pretraining keeps the source digits' classes though it holds no head for them",
        '        "classes": [],  # no head: train gives the backbone one for its classes\n',
        "",
        ("tests/test_models.py", "-k", "the_train_stage_freezes_the_modules"),
    ),
    Mutation(
        "mistakes-probability-two-decimals",
        "best/mistakes.csv's probability is rounded to the picture's 2 decimals, not evaluate's value; "
        "mistakes that then tie are listed by path, not by confidence",
        'table = wrong[["path", "actual", "predicted"]].assign(probability=wrong["confidence"].astype(float))',
        'table = wrong[["path", "actual", "predicted"]].assign(probability=wrong["confidence"].astype(float).round(2))',
        ("tests/test_interpretation.py", "-k", "mistakes_most_confident_first"),
    ),
    Mutation(
        "mistakes-columns-predicted-first",
        "best/mistakes.csv's columns come as path, predicted, actual, probability, not the documented order",
        'table = wrong[["path", "actual", "predicted"]].assign(',
        'table = wrong[["path", "predicted", "actual"]].assign(',
        ("tests/test_interpretation.py", "-k", "mistakes_most_confident_first"),
    ),
    Mutation(
        "heat-layer-traced-at-224",
        "the heat maps' layer is read off a 224 px trace, not the model's input size: at the demo's 32 px "
        "resnet18 gets layer4 (1 x 1), so every heat map is one flat colour",
        "    layer = feature_layer(model, spec.image_size)\n    if layer is None:\n        why",
        "    layer = feature_layer(model, 224)\n    if layer is None:\n        why",
        ("tests/test_interpretation.py", "-k", "title_says_all"),
    ),
    Mutation(
        "heat-blocks-sequential-only",
        "a stack of blocks held in a ModuleList (timm's EVA, BEiT) is not seen as one: their heat maps come "
        "from the patch embedding's convolution, not the tokens into the last block",
        "isinstance(module, nn.Sequential | nn.ModuleList)",
        "isinstance(module, nn.Sequential)",
        ("tests/test_heatmaps.py", "-k", "patch_tokens and EVA"),
    ),
    Mutation(
        "restore-skips-the-epoch-check",
        "a run folder missing a middle checkpoint resumes from a later one: history skips an epoch and the"
        " missing epoch never comes back to checkpoints/",
        'if checkpoint["epoch"] != index + 1 or checkpoint.get("lineage") != self.lineage:',
        'if checkpoint.get("lineage") != self.lineage:',
        ("tests/test_resume.py", "-k", "missing_a_middle_checkpoint"),
    ),
    Mutation(
        "check-params-warns-per-batchnorm",
        "a weights file without num_batches_tracked (torchvision's older files) makes check_params print a torch"
        " warning for each BatchNorm layer",
        '            warnings.filterwarnings("ignore", "for .*: copying from a non-meta parameter", UserWarning)\n',
        "            pass\n",
        ("tests/test_check_params.py", "-k", "without_batchnorm_counters"),
    ),
    Mutation(
        "atomic-temporary-file-in-tmpdir",
        "an atomic write's temporary file is made in TMPDIR, not beside its target: where TMPDIR is a tmpfs and"
        " the project on a disk, every rename onto the target fails (EXDEV)",
        'tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")',
        'tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp")',
        ("tests/test_checkpoints.py", "-k", "beside_the_target"),
    ),
    Mutation(
        "decode-workers-take-ctrl-c",
        "prepare's decode workers keep Python's Ctrl-C: each prints a KeyboardInterrupt traceback beside the"
        " stage's one line",
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage itself handles Ctrl-C\n",
        "",
        ("tests/test_faults.py", "-k", "decode_workers"),
    ),
    Mutation(
        "mixed-group-owned-by-the-first-class",
        "a group of near copies under two classes counts for the class that sorts first, not the one most of its"
        " files have: the smaller class's share of the splits is counted with the other's files",
        "key=lambda item: (-item[1], item[0]))[0]",
        "key=lambda item: item[0])[0]",
        ("tests/test_data.py", "-k", "mixed_group_counts"),
    ),
    Mutation(
        "prune-by-name-not-age",
        "train keeps the other run folders whose names (hashes) sort last, not the newest three: a run killed"
        " minutes ago can be removed while older ones stay",
        "        key=lambda path: path.stat().st_mtime,\n        reverse=True,\n",
        "        reverse=True,\n",
        ("tests/test_runs.py", "-k", "only_the_newest_kept"),
    ),
    Mutation(
        "restore-skips-the-lineage-check",
        "a checkpoint of another run copied into the run folder, numbered as the next epoch, is resumed from:"
        " the run goes on from another run's weights",
        ' or checkpoint.get("lineage") != self.lineage:',
        ":",
        ("tests/test_resume.py", "-k", "another_run_in_the_folder"),
    ),
    Mutation(
        "image-export-refuses-two-pixel-width",
        "models/best_image.pt2 refuses an image 2 pixels wide, which docs/export.md promises (any size from 2 x 2)",
        'torch.export.Dim("width", min=2)',
        'torch.export.Dim("width", min=3)',
        ("tests/test_export.py", "-k", "image_export_gives"),
    ),
    Mutation(
        "verify-skips-epochs-from-ten",
        "tools.verify checks checkpoints/epoch_001..009 only: a damaged epoch_010.pt or later is called intact",
        '"checkpoints/epoch_*.pt", "models/*.pt"',
        '"checkpoints/epoch_00*.pt", "models/*.pt"',
        ("tests/test_verify.py", "-k", "every_damaged_checkpoint"),
    ),
    Mutation(
        "resume-restarts-the-schedule",
        "a resumed run does not restore its learning-rate schedule: under train.schedule cosine or step the"
        " epochs after the resumed one take the rates of the run's first epochs, and the result moves",
        '            scheduler.load_state_dict(last["scheduler_state_dict"])\n',
        "",
        ("tests/test_resume.py", "-k", "every-recipe"),
    ),
    Mutation(
        "hash-thumbnail-shrunk-without-antialias",
        "image_hash shrinks a picture over 64 px without antialiasing: grainy photos get other hashes, "
        "and resized copies of them are no longer matched as near copies",
        "image = TF.resize(image, [HASH_SOURCE_SIZE], antialias=True)",
        "image = TF.resize(image, [HASH_SOURCE_SIZE], antialias=False)",
        ("tests/test_data.py", "-k", "antialiased_to_64"),
    ),
    Mutation(
        "dct-scale-divides-the-width-only",
        "a JPEG whose height the chosen DCT scale does not divide is decoded with part-blocks: its whole size "
        "comes out a few rows too tall, and crop boxes are drawn over a picture that is not there",
        "width % s == 0 == height % s]",
        "width % s == 0]",
        ("tests/test_data.py", "-k", "shrunk_as_documented"),
    ),
    Mutation(
        "pillow-jpeg-decode-skips-the-dct-scale",
        "a CMYK (or damaged) JPEG that Pillow decodes is read whole where a DCT scale was picked, and its size "
        "reported as that scale times the whole: training copies record a picture 2 to 8 times too large",
        "image.draft(image.mode, (image.width // scale, image.height // scale))  # Pillow picks this scale\n",
        "pass  # Pillow picks this scale\n",
        ("tests/test_data.py", "-k", "shrunk_as_documented"),
    ),
    Mutation(
        "non-utf8-names-kept",
        "an image whose path is not valid UTF-8 (a Latin-1 class folder from a Windows zip) reaches the manifest: "
        "prepare crashes with UnicodeEncodeError",
        "                if is_utf8(path.as_posix()):",
        "                if True:",
        ("tests/test_text_labels.py", "-k", "not_utf8"),
    ),
    Mutation(
        "skipped-path-not-escaped",
        "skipped.csv gets a non-UTF-8 path as Python holds it: prepare crashes with UnicodeEncodeError",
        "[(readable(s.path), readable(s.reason))",
        "[(s.path, readable(s.reason))",
        ("tests/test_text_labels.py", "-k", "not_utf8"),
    ),
    Mutation(
        "skipped-reason-not-escaped",
        "a broken link whose target is not valid UTF-8: writing its reason to skipped.csv crashes prepare",
        "readable(s.reason)",
        "s.reason",
        ("tests/test_text_labels.py", "-k", "not_utf8"),
    ),
    Mutation(
        "conflicting-copies-and-zero-more",
        "a file whose bytes lie under another class three more times is reported as the same bytes as three"
        " files 'and 0 more'",
        'if len(others) > 3 else "")',
        'if len(others) >= 3 else "")',
        ("tests/test_data.py", "-k", "lists_three_others"),
    ),
    Mutation(
        "misnamed-images-not-counted",
        "check_params says '0 class folder(s) with image files' for a data folder of Latin-1 class folders full of "
        "images, without saying why they do not count",
        "misnamed = sum(s.reason == NOT_UTF8 for s in skipped)",
        "misnamed = 0",
        ("tests/test_errors.py", "-k", "folders and named"),
    ),
    Mutation(
        "predict-takes-the-headless-start-weights-for-a-model",
        "predict --model models/start.pt says the backbone does not fit, not that it is start.pt and what to give",
        "    if not spec.classes:  # the weights stage saves its backbone so: train gives it a head",
        "    if False:  # the weights stage saves its backbone so: train gives it a head",
        ("tests/test_errors.py", "-k", "backbone"),
    ),
    Mutation(
        "checkpoint-that-does-not-fit-its-model-is-a-traceback",
        "predict on a checkpoint whose state_dict misses a key ends in load_state_dict's traceback",
        "    except RuntimeError as error:  # torch lists every missing, unexpected or reshaped key, a line each",
        "    except ValueError as error:  # torch lists every missing, unexpected or reshaped key, a line each",
        ("tests/test_predict.py", "-k", "user_errors"),
    ),
    Mutation(
        "unreadable-scores-table-is-a-traceback-in-predict",
        "predict on an epoch's checkpoint with an empty or non-UTF-8 eval/scores.csv ends in pandas' traceback",
        "    except ValueError as error:  # pandas' EmptyDataError and ParserError, and UnicodeDecodeError, are",
        "    except KeyError as error:  # pandas' EmptyDataError and ParserError, and UnicodeDecodeError, are",
        ("tests/test_predict.py", "-k", "damaged_scores"),
    ),
    Mutation(
        "scores-table-without-tta-is-a-keyerror",
        "predict with a garbage eval/scores.csv (no tta column) ends in KeyError: 'tta'",
        '    if "tta" not in scores.columns:',
        "    if False:",
        ("tests/test_predict.py", "-k", "damaged_scores"),
    ),
    Mutation(
        "unknown-tta-in-scores-taken-for-none",
        "predict silently predicts without flips when eval/scores.csv gives tta = bogus",
        "    wrong = sorted(used - set(allowed))",
        "    wrong: list[str] = []",
        ("tests/test_predict.py", "-k", "damaged_scores"),
    ),
    Mutation(
        "verify-on-a-merge-conflicted-dvc-lock-is-a-traceback",
        "tools.verify with conflict markers in dvc.lock ends in yaml's ScannerError traceback",
        '    except yaml.YAMLError as error:\n        raise UserError(f"{shown(path, root)} is not valid YAML:',
        '    except ImportError as error:\n        raise UserError(f"{shown(path, root)} is not valid YAML:',
        ("tests/test_errors.py", "-k", "merge"),
    ),
    Mutation(
        "verify-on-a-dvc-file-of-another-layout-is-a-traceback",
        "tools.verify with dvc.lock a list, or a .dvc file's outs: [data], ends in AttributeError or TypeError",
        "    except (AttributeError, TypeError, KeyError):  # a list, or a string, where DVC writes a mapping",
        "    except KeyError:  # a list, or a string, where DVC writes a mapping",
        ("tests/test_errors.py", "-k", "list or bare"),
    ),
    Mutation(
        "verify-on-a-non-utf8-dvc-file-is-a-traceback",
        "tools.verify with a .dvc file of Latin-1 bytes ends in UnicodeDecodeError",
        '    except UnicodeDecodeError as error:\n        raise UserError(f"{shown(path, root)} is not UTF-8 text:',
        '    except ImportError as error:\n        raise UserError(f"{shown(path, root)} is not UTF-8 text:',
        ("tests/test_errors.py", "-k", "UTF"),
    ),
    Mutation(
        "verify-on-a-bad-dvc-config-is-a-traceback",
        "tools.verify with a bad line in .dvc/config ends in dvc.config.ConfigError's traceback",
        '    except ConfigError as error:  # "config file error: Invalid line ... at line 2."',
        '    except ImportError as error:  # "config file error: Invalid line ... at line 2."',
        ("tests/test_errors.py", "-k", "config"),
    ),
    Mutation(
        "weights-file-with-an-int-key-is-a-traceback",
        "check_params on a weights file saved as {1: tensor} ends in AttributeError: 'int' ... 'startswith'",
        "        if not isinstance(key, str):",
        "        if False:",
        ("tests/test_checkpoints.py", "-k", "no_model_can_load"),
    ),
    Mutation(
        "complex-weights-load-silently",
        "a weights file of complex tensors passes check_params and loads its real parts only",
        "        if tensor.is_complex():",
        "        if False:",
        ("tests/test_checkpoints.py", "-k", "no_model_can_load"),
    ),
    Mutation(
        "meta-tensor-weights-pass-check-params",
        "a weights file of meta tensors passes check_params; the weights stage then fails with a traceback",
        '        if tensor.is_meta and path.suffix != ".safetensors":',
        "        if False:",
        ("tests/test_checkpoints.py", "-k", "no_model_can_load"),
    ),
    Mutation(
        "freeze-first-takes-unicode-digits",
        "freeze: first:² (or unfreeze_to: first:①) ends check_params in a ValueError traceback from int()",
        'if kind == "first" and arg.isascii() and arg.isdigit():',
        'if kind == "first" and arg.isdigit():',
        ("tests/test_check_params.py", "-k", "test_bad_params_are_named and first"),
    ),
    Mutation(
        "null-key-left-to-omegaconf",
        "a key `null:` in params.yaml ends check_params in omegaconf's KeyValidationError traceback, naming no key",
        "if key.tag == NULL_TAG:",
        'if key.tag == NULL_TAG + "!":',
        ("tests/test_errors.py", "-k", "null and key"),
    ),
    Mutation(
        "tagged-values-left-to-omegaconf",
        "a value tagged !!timestamp or !!set ends check_params in omegaconf's UnsupportedValueType traceback",
        "except OmegaConfBaseException as error:  # a value tagged !!set or !!timestamp, which YAML reads",
        "except ImportError as error:  # a value tagged !!set or !!timestamp, which YAML reads",
        ("tests/test_errors.py", "-k", "tagged"),
    ),
    Mutation(
        "negative-seeds-pass-check-params",
        "prepare.seed: -1 passes check_params, then prepare fails in numpy (pretrain.seed: -1 in the weights stage)",
        '_require(seed >= 0, key, seed, "an integer >= 0")',
        '_require(seed >= -(2**63), key, seed, "an integer >= 0")',
        ("tests/test_check_params.py", "-k", "test_bad_params_are_named and seed"),
    ),
    Mutation(
        "whole-numbers-without-upper-bound",
        "train.threads: 4294967296, batch_size 1e19, epochs 1e20 or seed 1e15 pass check_params, overflow in training",
        "_require(value <= LARGEST_WHOLE,",
        "_require(value <= 2**80,",
        ("tests/test_check_params.py", "-k", "test_bad_params_are_named and (threads or batch_size or epochs)"),
    ),
    Mutation(
        "numbers-yaml-versions-read-apart-pass",
        "train.epochs: 010 trains 8 epochs while DVC shows and records 10 (0o10, 1:30 alike)",
        "if (here is None and dvc is None) or repr(here) == repr(dvc):",
        "if True:",
        ("tests/test_config.py", "-k", "quote_the_value_as_written"),
    ),
    Mutation(
        "unquoted-numeric-data-dir-passes",
        "prepare.data_dir: 007 passes check_params, then every dvc command fails: 'int' object has no attribute",
        "not isinstance(read_by_dvc := DVC_YAML.load(node.value), str)",
        "not isinstance(read_by_dvc := node.value, str)",
        ("tests/test_errors.py", "-k", "folder and YAML"),
    ),
    Mutation(
        "broken-weights-link-blamed-on-the-folder",
        "a broken link in models/weights/ is refused as a file outside models/weights/, not as a broken link",
        "    if weights is not None and Path(weights).is_symlink() and not Path(weights).exists():",
        "    if False:",
        ("tests/test_check_params.py", "-k", "broken_link_for_weights"),
    ),
    Mutation(
        "gallery-label-with-a-line-break-crashes",
        "a class folder named with a line break ends select-best in Pillow's raqm_layout() failed traceback",
        '    name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)\n',
        "",
        ("tests/test_interpretation.py", "-k", "line_breaks"),
    ),
    Mutation(
        "image-export-made-before-best-pt-records-tta",
        "select-best exports best_image.pt2 before the chosen row's tta is set: no mirror-image average under hflip",
        '    checkpoint |= {"weights": weights, "tta": best["tta"]}  # tools.predict averages as evaluate did\n'
        "    checksum = save_checkpoint(checkpoint, BEST_MODEL)\n"
        "    write_exports(checkpoint, checksum=checksum)",
        '    checksum = save_checkpoint(checkpoint | {"weights": weights, "tta": best["tta"]}, BEST_MODEL)\n'
        "    write_exports(checkpoint, checksum=checksum)\n"
        '    checkpoint |= {"weights": weights, "tta": best["tta"]}',
        ("tests/test_export.py", "-k", "test_select_best_writes_a_file_that_plain_torch_runs_and_a_rerun_reuses_it"),
    ),
    Mutation(
        "no-heat-picture-does-not-say-why",
        "best/mistakes.png of a model without a Grad-CAM layer no longer says why it has no heat maps",
        '        log.info("%s %s", BEST_GALLERY, why)\n        return None, why\n',
        '        log.info("%s %s", BEST_GALLERY, why)\n        return None, ""\n',
        ("tests/test_interpretation.py", "-k", "model_without_a_layer_for_grad_cam"),
    ),
    Mutation(
        "adopt-takes-a-finished-run",
        "a rerun under another thread or process count takes over a finished run folder of its lineage: the"
        " finished run's epochs are moved away and published as the new run's",
        "if other == self.path or not (other / SETTINGS).is_file() or (other / FINISHED).exists():",
        "if other == self.path or not (other / SETTINGS).is_file():",
        ("tests/test_runs.py", "-k", "takes_over_the_killed_run_not_a_finished_or_empty_one"),
    ),
    Mutation(
        "adopt-takes-an-empty-folder",
        "a newer folder of the lineage with no checkpoints (killed before its first epoch) is taken over instead"
        " of the killed run that has epochs: the run trains again from epoch 1",
        'if recorded["lineage"] != self.lineage or not checkpoints:',
        'if recorded["lineage"] != self.lineage:',
        ("tests/test_runs.py", "-k", "takes_over_the_killed_run_not_a_finished_or_empty_one"),
    ),
    Mutation(
        "checksum-skips-list-items",
        "a checkpoint's checksum covers each list's length only: a damaged class name (or mean, std) loads"
        " without complaint, and predict names images with the wrong class",
        '        digest.update(f"L{len(obj)}".encode())\n        for item in obj:\n            _feed(digest, item)\n',
        '        digest.update(f"L{len(obj)}".encode())\n',
        ("tests/test_checkpoints.py", "-k", "damaged_checkpoint_is_detected"),
    ),
    Mutation(
        "epoch-seconds-timed-after-training",
        "each checkpoint's `seconds` (and dvclive's epoch_seconds) times the record's building, not the epoch",
        '    )\n    record = {\n        "epoch": epoch,\n        "loss": loss,\n',
        '    )\n    started = time.perf_counter()\n    record = {\n        "epoch": epoch,\n        "loss": loss,\n',
        ("tests/test_models.py", "-k", "freezes_the_modules_the_freeze_spec_names"),
    ),
    Mutation(
        "duplicate-groups-join-a-non-root",
        "a chain of copies joined through a row already moved to another group is split in two groups",
        "            j = root(first.setdefault(key, i))\n",
        "            j = first.setdefault(key, i)\n",
        ("tests/test_data.py", "-k", "duplicate_groups_join_exact_and_near_copies_transitively"),
    ),
    Mutation(
        "confidence-five-decimals",
        "eval/predictions/*.csv (and best/mistakes.csv) keep each probability to 5 decimals, not 6",
        '"confidence": confidence.numpy().round(6),',
        '"confidence": confidence.numpy().round(5),',
        ("tests/test_evaluate.py", "-k", "test_each_image_is_scored_on_its_own_logits"),
    ),
    Mutation(
        "metrics-json-test-before-val",
        "best/metrics.json (dvc metrics show) lists the test scores before the validation ones",
        'REPORTED = (*columns("val"), *columns("test"))',
        'REPORTED = (*columns("test"), *columns("val"))',
        ("tests/test_select_best.py", "-k", "validation_prefers_when_test_disagrees and val_loss"),
    ),
    Mutation(
        "scores-columns-test-first",
        "eval/scores.csv puts test's columns before val's",
        'for split in ("val", "test")}',
        'for split in ("test", "val")}',
        ("tests/test_evaluate.py", "-k", "test_each_checkpoints_scores_are_what_torchvision_computes_from_its_weights"),
    ),
    Mutation(
        "epochs-selected-as-bool",
        "best/epochs.csv marks the chosen epoch True/False, not 1/0: the plots' red rule (selected == 1) is lost",
        'raw.assign(selected=(raw["epoch"] == epoch).astype(int))',
        'raw.assign(selected=(raw["epoch"] == epoch))',
        ("tests/test_select_best.py", "-k", "validation_prefers_when_test_disagrees and val_loss"),
    ),
    Mutation(
        "macro-f1-leaves-out-predicted-only-classes",
        "macro-F1 (val_f1, test_f1, select on val_f1) leaves out a class predicted but absent from the split",
        "    present = (support + predicted) > 0\n",
        "    present = support > 0\n",
        ("tests/test_metrics.py", "-k", "macro_f1_averages_the_classes"),
    ),
    Mutation(
        "macro-f1-counts-absent-classes",
        "macro-F1 counts a class absent from the split and never predicted as F1 0, lowering val_f1/test_f1",
        '        "f1": f1[present].mean().item(),\n',
        '        "f1": f1.mean().item(),\n',
        ("tests/test_metrics.py", "-k", "macro_f1_averages_the_classes"),
    ),
    Mutation(
        "mixup-alone-at-switch-one-crashes",
        "MixUp alone with train.augment.mix_switch 1 (valid; it only acts with both mixings on) ends train in"
        " a ZeroDivisionError traceback",
        "weights.append(1 - params.mix_switch if params.cutmix_alpha > 0 else 1.0)",
        "weights.append(1 - params.mix_switch)",
        ("tests/test_augment.py", "-k", "one_mixing_on"),
    ),
    Mutation(
        "cutmix-alone-at-switch-zero-crashes",
        "CutMix alone with train.augment.mix_switch 0 (valid; it only acts with both mixings on) ends train in"
        " a ZeroDivisionError traceback",
        "weights.append(params.mix_switch if params.mixup_alpha > 0 else 1.0)",
        "weights.append(params.mix_switch)",
        ("tests/test_augment.py", "-k", "one_mixing_on"),
    ),
    Mutation(
        "grads-zeroed-once-per-epoch",
        "gradients are zeroed before the epoch's first step only: each later step adds up every earlier one's",
        "            if first:\n                optimizer.zero_grad(set_to_none=True)\n",
        "            if step == 0:\n                optimizer.zero_grad(set_to_none=True)\n",
        ("tests/test_engine.py", "-k", "own_batches"),
    ),
    Mutation(
        "quoted-data-dir-refused",
        "a data folder quoted as the refusal says to ('007') is refused all the same: quoted values are read as plain",
        "    elif isinstance(node, yaml.ScalarNode) and node.style is None:\n",
        "    elif isinstance(node, yaml.ScalarNode):\n",
        ("tests/test_config.py", "-k", "taken_as_written"),
    ),
    Mutation(
        "frozen-modules-of-the-head-network",
        "with freeze all_but_head and cached features, each checkpoint (and best.pt) records no frozen module",
        "    return Phase(spec_text, frozen, trainable, total, net, data, loop)",
        "    return Phase(spec_text, net_frozen, trainable, total, net, data, loop)",
        ("tests/test_pipeline.py", "-k", "test_quick_start_then_results_shared_through_a_remote"),
    ),
    Mutation(
        "skipped-csv-sorted-by-reason",
        "data/prepared/skipped.csv lists its rows by reason, not in path order",
        "sorted(skipped, key=lambda s: s.path)",
        "sorted(skipped, key=lambda s: s.reason)",
        ("tests/test_prepare.py", "-k", "messy_folder"),
    ),
    Mutation(
        "tensor-export-at-resize-size",
        "models/best.pt2 is exported for inputs of the resize size, not the crop: a checkpoint with a resize "
        "margin (pretrained weights) gets a program that refuses the documented (N, 3, S, S) inputs",
        "    size = ModelSpec.from_checkpoint(checkpoint).image_size\n",
        "    size = ModelSpec.from_checkpoint(checkpoint).sizing.resize\n",
        ("tests/test_export.py", "-k", "tools_predicts_probabilities"),
    ),
    Mutation(
        "mistakes-title-calls-ema-weights-raw",
        "the picture of the mistakes calls a winning moving average's weights raw in its title (a misspelt key)",
        "{checkpoint.get('weights', 'raw')} weights",
        "{checkpoint.get('weight', 'raw')} weights",
        ("tests/test_interpretation.py", "-k", "most_confident_mistakes_each"),
    ),
    Mutation(
        "screenshot-default-width-800",
        "tools.screenshot without --width draws the page 800 px wide, not the documented 1200",
        'parser.add_argument("--width", type=int, default=1200,',
        'parser.add_argument("--width", type=int, default=800,',
        ("tests/test_plots.py", "-k", "renders_offline_in_headless_chromium"),
    ),
    Mutation(
        "screenshot-scale-above-one-accepted",
        "tools.screenshot --scale 2 is taken and writes the unshrunk page, not refused (it only shrinks)",
        "    if not 0 < args.scale <= 1:",
        "    if not 0 < args.scale:",
        ("tests/test_errors.py", "-k", "screenshot_refuses_a_size"),
    ),
    Mutation(
        "duplicate-pairs-unreported",
        "duplicates.csv leaves out groups of two copies: only groups of three or more are listed",
        '    rows = rows[rows.groupby("group")["path"].transform("size") > 1]',
        '    rows = rows[rows.groupby("group")["path"].transform("size") > 2]',
        ("tests/test_prepare.py", "-k", "keeps_duplicates_in_one_split"),
    ),
    Mutation(
        "checked-record-other-keys-crash",
        "a checked record holding other keys than params.yaml (another version's) ends the stage in a KeyError, "
        "not a refusal naming them",
        '        f"{key} = {now[key]!r} (checked: {checked[key]!r})" if key in now and key in checked else key',
        '        f"{key} = {now[key]!r} (checked: {checked[key]!r})" if key in now or key in checked else key',
        ("tests/test_config.py", "-k", "other_keys"),
    ),
    Mutation(
        "cutmix-alpha-not-passed",
        "CutMix is built without train.augment.cutmix_alpha: torchvision's default (1.0) whatever params.yaml says",
        "        choices.append(v2.CutMix(alpha=params.cutmix_alpha, num_classes=num_classes))",
        "        choices.append(v2.CutMix(num_classes=num_classes))",
        ("tests/test_augment.py", "-k", "mixing"),
    ),
    Mutation(
        "predict-any-tta-accepted",
        "tools.predict takes any --tta: a misspelt one predicts without flips, and says nothing",
        "        choices=tta,\n",
        "",
        ("tests/test_errors.py", "-k", "outside_an_option"),
    ),
    Mutation(
        "prefix-hint-needs-a-head",
        "an encoder saved without its head inside a wrapper gets no hint to save the inner model's state_dict",
        'not set(missing) <= {key.partition(".")[2]',
        'not set(missing) < {key.partition(".")[2]',
        ("tests/test_models.py", "-k", "do_not_fit_are_one_line"),
    ),
    Mutation(
        "classes-precision-of-one-call-halved",
        "best/classes.csv gives a class predicted once, rightly, precision 0.5",
        '"precision": (hits / called.clamp(min=1)).numpy(),',
        '"precision": (hits / called.clamp(min=2)).numpy(),',
        ("tests/test_interpretation.py", "-k", "ties_in_f1"),
    ),
    Mutation(
        "early-stop-min-delta-halved-for-max",
        "early stopping with select.mode max counts rises of half train.early_stopping.min_delta as improvements",
        "sign = 1 if mode is Mode.min else -1",
        "sign = 1 if mode is Mode.min else -2",
        ("tests/test_recipes.py", "-k", "test_early_stop and not keeps"),
    ),
    Mutation(
        "early-stop-patience-one-off",
        "train.early_stopping.patience 1 turns early stopping off, as 0 does",
        "    if config.patience <= 0 or not history:",
        "    if config.patience <= 1 or not history:",
        ("tests/test_recipes.py", "-k", "test_early_stop and not keeps"),
    ),
    Mutation(
        "models-listing-error-is-a-traceback",
        "python -m pipeline.models with a misspelt model ends in a traceback, not one line and exit 2",
        '        print(describe(name))\n\n\nif __name__ == "__main__":\n    run_stage(main)\n',
        '        print(describe(name))\n\n\nif __name__ == "__main__":\n    main()\n',
        ("tests/test_errors.py", "-k", "misspelt_model"),
    ),
    Mutation(
        "models-listing-arch-unchecked",
        "python -m pipeline.models builds a misspelt model unchecked: torchvision's error, without the close names",
        "    family = family_of(arch)\n    family.check_arch(arch)\n    model = skeleton_model(arch)\n",
        "    family = family_of(arch)\n    model = skeleton_model(arch)\n",
        ("tests/test_errors.py", "-k", "misspelt_model"),
    ),
    Mutation(
        "gallery-rows-multiplied",
        "best/mistakes.png is as many rows of tiles tall as tiles times columns, blank below the mistakes",
        "    rows = -(-len(tiles) // columns)",
        "    rows = -(-len(tiles) * columns)",
        ("tests/test_interpretation.py", "-k", "rows_of_four"),
    ),
]


class MutationError(Exception):
    pass


def copy_repo(target: Path) -> None:
    copy_repo_files(target)
    # The tests copy the project from `git ls-files` (tests/conftest.py): make the copy a repo too.
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)


def apply(mutation: Mutation, root: Path) -> Path:
    """Replace mutation.old with mutation.new in the one pipeline or tools file holding it, once."""
    hits = [
        (path, path.read_text().count(mutation.old))
        for path in sorted([*(root / "pipeline").rglob("*.py"), *(root / "tools").rglob("*.py")])
        if mutation.old in path.read_text()
    ]
    if len(hits) != 1 or hits[0][1] != 1:
        where = ", ".join(f"{p.relative_to(root)} ({n}x)" for p, n in hits) or "nowhere"
        raise MutationError(
            f"mutation {mutation.name}: its old text must occur exactly once under pipeline/ and tools/, "
            f"found {where}; the code changed, update the mutation:\n    {mutation.old}"
        )
    path = hits[0][0]
    path.write_text(path.read_text().replace(mutation.old, mutation.new))
    return path.relative_to(root)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[list[str], int, float]:
    """Run `tests` in `root`: (ids of the failed tests, how many ran, seconds)."""
    report = root / "report.xml"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if not report.exists():
        return ["(pytest wrote no report: collection failed?)"], 0, seconds
    failed, total = [], 0
    for case in ET.parse(report).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            failed.append(f"{module}.py::{case.get('name')}")
    return failed, total, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MUTATIONS], help="run these mutations only")
    parser.add_argument("--baseline", action="store_true", help="first run the same tests unmutated")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies (their paths are printed)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    rows = []  # (name, failed, ran) of each mutated run, for the closing table
    for mutation in chosen:
        for mutated in [False, True] if args.baseline else [True]:
            root = Path(tempfile.mkdtemp(prefix=f"mutation-{mutation.name}-"))
            try:
                copy_repo(root)
                label = f"{mutation.name}: {mutation.what}" if mutated else f"{mutation.name} (baseline, unmutated)"
                if mutated:
                    label += f" [{apply(mutation, root)}]"
                failed, total, seconds = run_tests(root, mutation.tests)
            finally:
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
            print(f"== {label}")
            print(f"   ran {total} tests in {', '.join(mutation.tests)} ({seconds:.0f} s): {len(failed)} failed")
            for test in failed[:SHOWN_FAILURES]:
                print(f"   FAILED {test}")
            if len(failed) > SHOWN_FAILURES:
                print(f"   ... and {len(failed) - SHOWN_FAILURES} more")
            if mutated:
                rows.append((mutation.name, len(failed), total))
                if not failed:
                    print("   NOT CAUGHT: no test failed")
            sys.stdout.flush()
    caught = sum(1 for _, failed, _ in rows if failed)
    print("\n| mutation | tests failed / ran |\n|---|---|")
    for name, failed, total in rows:
        print(f"| `{name}` | {failed} / {total}{'' if failed else ' (not caught)'} |")
    print(f"\ncaught {caught} of {len(rows)}")
    sys.exit(0 if caught == len(rows) else 1)


if __name__ == "__main__":
    try:
        main()
    except MutationError as error:
        sys.exit(f"error: {error}")
