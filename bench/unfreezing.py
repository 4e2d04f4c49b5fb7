"""The optimizer steps right after gradual unfreezing, one at a time: what makes a run blow up there.

    python -m bench.unfreezing CHECKPOINT [--steps 10] [--trunk-scale 0.1] [--bn-eval] [--clip 1.0]

Run it in a project whose prepare stage has run, with params.yaml as the run had it
(`freeze: all_but_head`, `train.unfreeze_after`, `train.unfreeze_to`...), on the checkpoint of
the run's last head-only epoch (`checkpoints/epoch_002.pt` for `unfreeze_after: 2`). It
rebuilds the model and the optimizer (with the head's optimizer state) as the train stage
does, unfreezes, and takes the next epoch's steps in the train stage's order and learning
rates (no augmentation), printing for each: the training loss, the gradient norm of the trunk
and of the head, the largest logit, and then the validation loss and accuracy in eval mode
(BatchNorm's running statistics), which the train stage records once per epoch. The options
change one thing at a time: the trunk's rates, BatchNorm kept in inference mode while
training, gradient clipping.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

from pipeline.batches import images_on, split_batches
from pipeline.checkpoints import load_checkpoint
from pipeline.config import load_params
from pipeline.data.cache import decoded_images
from pipeline.data.split import read_manifest
from pipeline.engine import epoch_generator, predict, score
from pipeline.freezing import freeze, parse_freeze, set_train_mode, trainable_names
from pipeline.models import ModelSpec, model_from_checkpoint
from pipeline.optim import lr_factor, make_optimizer, training_loss
from pipeline.paths import PREPARED_DIR


def norm(params: list[nn.Parameter]) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the checkpoint of the last epoch before unfreezing")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trunk-scale", type=float, default=1.0, help="multiply the trunk's learning rates")
    parser.add_argument("--bn-eval", action="store_true", help="BatchNorm in inference mode while training")
    parser.add_argument("--clip", type=float, default=0.0, help="clip the gradients' total norm to this")
    args = parser.parse_args()

    config = (params := load_params()).train
    checkpoint = load_checkpoint(args.checkpoint)
    spec, model = ModelSpec.from_checkpoint(checkpoint), model_from_checkpoint(checkpoint)
    manifest, classes = read_manifest(PREPARED_DIR)
    device = torch.device("cpu")
    images = images_on(decoded_images(manifest, spec.sizing), device)
    train, val = (split_batches(images, manifest, split, spec, device) for split in ("train", "val"))

    unfrozen = parse_freeze(config.unfreeze_to, "train.unfreeze_to")
    later = trainable_names(model, unfrozen, spec.head)
    freeze(model, parse_freeze(params.freeze), spec.head)
    optimizer = make_optimizer(
        config,
        model,
        spec.head,
        config.trunk_lr_scale,
        later,
        decay_norms_and_biases=config.decay_norms_and_biases,
        layer_decay=config.layer_decay,
    )
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    frozen = freeze(model, unfrozen, spec.head)
    epoch = checkpoint["epoch"] + 1
    schedule = (config.schedule, config.warmup_epochs, config.step_every, config.step_gamma)
    factor = lr_factor(epoch, config.epochs, *schedule)
    head = [p for name, p in model.named_parameters() if name.startswith(f"{spec.head}.")]
    trunk = [p for name, p in model.named_parameters() if not name.startswith(f"{spec.head}.")]
    for group in optimizer.param_groups:
        in_head = any(param is group["params"][0] for param in head)
        group["lr"] = group["initial_lr"] * factor * (1 if in_head else args.trunk_scale)

    def validation() -> str:
        scores = score(predict(model, val, 256), val.targets, len(classes))
        return f"val loss {scores['loss']:8.3f}, accuracy {scores['accuracy']:.3f}"

    print(f"epoch {epoch}, rates {[round(group['lr'], 5) for group in optimizer.param_groups]}; before: {validation()}")
    order = torch.randperm(len(train), generator=epoch_generator(config.seed, epoch))
    for step, index in enumerate(order.split(config.batch_size)[: args.steps], start=1):
        set_train_mode(model, frozen)
        if args.bn_eval:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        inputs, targets = train.load(index)
        logits = model(inputs)
        loss = training_loss(logits, targets, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trunk_norm, head_norm = norm(trunk), norm(head)
        if args.clip:
            torch.nn.utils.clip_grad_norm_(trunk + head, args.clip)
        optimizer.step()
        print(
            f"step {step:2d}: loss {loss.item():7.3f}, gradient norm trunk {trunk_norm:7.2f} head {head_norm:6.2f}, "
            f"largest logit {logits.abs().max().item():6.1f}; {validation()}"
        )


if __name__ == "__main__":
    main()
