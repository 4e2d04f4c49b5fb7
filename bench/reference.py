"""The demo's fine-tune written the plain PyTorch way, as the blog post this project grew from
does it: the yardstick for the pipeline's fixed costs (bench/demo.py times the two).

    python -m bench.reference [--project DIR] [--pretrain] [--out DIR]

Run in a project where `dvc repro prepare weights` has run: it reads the pipeline's split
(data/prepared/manifest.csv, classes.json) and its starting weights (models/start.pt, whose
head it drops), so both start from the same place. Images go through an ImageFolder with
Resize, CenterCrop, ToTensor and Normalize per image and a DataLoader (batch 64, 2
workers); resnet18 gets a new head and trains with the demo's SGD for 8 epochs, saving a
checkpoint after each; the one with the lowest validation loss is loaded and scored on
test once. With --pretrain it first trains the backbone from scratch on the source digits
(data/digits/source, 80/20 split, 6 epochs), as the demo's weights stage does, and starts
from that instead of models/start.pt. Prints one JSON line: its seconds and test accuracy.
"""

import time

STARTED = time.perf_counter()  # before the imports: a user's script pays for them too

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402

# The demo's params.yaml: train.* and pretrain.* (the same SGD settings in both).
EPOCHS, PRETRAIN_EPOCHS, BATCH, WORKERS = 8, 6, 64, 2
LR, MOMENTUM, WEIGHT_DECAY, SEED = 0.01, 0.9, 1e-4, 0


def loader(dataset: torch.utils.data.Dataset, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, num_workers=WORKERS)


def train_epoch(model: nn.Module, data: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total, count = 0.0, 0
    for images, labels in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(labels), count + len(labels)
    return total / count


@torch.no_grad()
def evaluate(model: nn.Module, data: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for images, labels in data:
        outputs = model(images)
        loss += F.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss / count, correct / count


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def pretrain(project: Path, transform: transforms.Compose) -> dict[str, torch.Tensor]:
    """resnet18 trained from scratch on the source digits: its weights but the head."""
    folder = datasets.ImageFolder(project / "data/digits/source", transform)
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(SEED)).tolist()
    cut = int(0.8 * len(order))
    train, val = loader(Subset(folder, order[:cut]), True), loader(Subset(folder, order[cut:]), False)
    model = models.resnet18(num_classes=len(folder.classes))
    optimizer = sgd(model)
    for epoch in range(1, PRETRAIN_EPOCHS + 1):
        loss = train_epoch(model, train, optimizer)
        val_loss, val_accuracy = evaluate(model, val)
        print(f"pretrain epoch {epoch}: loss {loss:.4f}, val loss {val_loss:.4f}, val accuracy {val_accuracy:.3f}")
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--pretrain", action="store_true", help="pretrain on the source digits first")
    parser.add_argument(
        "--out", type=Path, help="where the checkpoints go (default: a temporary folder, removed after)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reference-") as scratch:
        result = fine_tune(args.project, args.out or Path(scratch), args.pretrain)
    print(json.dumps(result))


def fine_tune(project: Path, out: Path, pretrain_first: bool) -> dict[str, float]:
    """The script's work: its seconds (from the start of the imports) and test scores."""
    torch.manual_seed(SEED)

    start = torch.load(project / "models/start.pt", weights_only=True)
    size, resize = start["image_size"], start["resize_size"]
    transform = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(start["mean"], start["std"]),
        ]
    )
    backbone = pretrain(project, transform) if pretrain_first else start["model_state_dict"]

    # The pipeline's split: the manifest's paths, in an ImageFolder of the same data folder.
    classes = json.loads((project / "data/prepared/classes.json").read_text())
    rows = [line.split(",") for line in (project / "data/prepared/manifest.csv").read_text().splitlines()[1:]]
    folder = datasets.ImageFolder(project / "data/digits/target", transform)
    assert folder.classes == classes, (folder.classes, classes)
    index = {Path(path).resolve(): i for i, (path, _) in enumerate(folder.samples)}
    splits = {
        split: Subset(folder, [index[(project / path).resolve()] for path, _, kind, _ in rows if kind == split])
        for split in ("train", "val", "test")
    }
    train, val, test = loader(splits["train"], True), loader(splits["val"], False), loader(splits["test"], False)

    model = models.resnet18(num_classes=len(classes))
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected, (missing, unexpected)
    optimizer = sgd(model)
    val_losses = {}
    for epoch in range(1, EPOCHS + 1):
        loss = train_epoch(model, train, optimizer)
        val_losses[epoch], val_accuracy = evaluate(model, val)
        state = {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": loss,
        }
        torch.save(state, out / f"epoch_{epoch:03d}.pt")
        print(f"epoch {epoch}: loss {loss:.4f}, val loss {val_losses[epoch]:.4f}, val accuracy {val_accuracy:.3f}")

    best = min(val_losses, key=lambda epoch: val_losses[epoch])
    model.load_state_dict(torch.load(out / f"epoch_{best:03d}.pt", weights_only=True)["model_state_dict"])
    test_loss, test_accuracy = evaluate(model, test)
    seconds = time.perf_counter() - STARTED
    return {"seconds": seconds, "best_epoch": best, "test_loss": test_loss, "test_accuracy": test_accuracy}


if __name__ == "__main__":
    main()
