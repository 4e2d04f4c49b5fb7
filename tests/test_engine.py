"""Engine: the scores, the non-finite loss guard, and the seeded, repeatable training epoch."""

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import Normalize
from torchvision.transforms.v2.functional import horizontal_flip

from pipeline import engine
from pipeline.augment import Augment
from pipeline.batches import CropBatches, ImageBatches, batch_indices, normalize
from pipeline.cli import UserError
from pipeline.config import Optimizer, OptimParams
from pipeline.distributed import SINGLE, Ranks
from pipeline.engine import (
    LoopOptions,
    NonFiniteLoss,
    batch_logits,
    epoch_generator,
    epoch_order,
    score,
    train_one_epoch,
)
from pipeline.optim import make_optimizer
from tests.helpers import crop_batches_of

SIZE = 8
NUM_CLASSES = 3


def random_batches(n: int, seed: int = 0) -> ImageBatches:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return ImageBatches(images, torch.arange(n), targets, torch.device("cpu"), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def optim_params(lr: float = 0.1, optimizer: Optimizer = Optimizer.sgd) -> OptimParams:
    return OptimParams(epochs=1, batch_size=2, optimizer=optimizer, lr=lr, momentum=0.9, weight_decay=1e-4, seed=0)


def tiny_model() -> nn.Module:
    """Convolution, BatchNorm and dropout: every kind of state and randomness an epoch touches."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, NUM_CLASSES),
    )


# --- score --------------------------------------------------------------------------------


def cross_entropy_by_hand(logits: list[list[float]], targets: list[int]) -> float:
    """Mean softmax cross-entropy, from its definition: log(sum(exp(row))) - row[target]."""
    losses = [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits, targets, strict=True)]
    return sum(losses) / len(losses)


# (logits, targets, accuracy, macro-F1); accuracy and F1 are counted by hand in the comments,
# F1 of a class being 2 TP / (2 TP + FP + FN).
SCORE_CASES = {
    # Predictions 0, 1, 1, 1, 2, 0 against 0, 0, 1, 1, 2, 2: 4 of 6 right. F1: class 0 TP 1, FP 1,
    # FN 1 -> 1/2; class 1 TP 2, FP 1 -> 4/5; class 2 TP 1, FN 1 -> 2/3. Class 3 never appears:
    # it must not drag the macro average down.
    "absent_class": (
        [[2.0, 0.1, 0.3, -1.0], [0.2, 1.5, 0.0, -1.0], [0.0, 3.0, 1.0, -1.0],
         [0.1, 2.0, 0.4, -1.0], [0.0, 0.5, 2.5, -1.0], [1.2, 0.3, 0.2, -1.0]],
        [0, 0, 1, 1, 2, 2],
        4 / 6,
        (1 / 2 + 4 / 5 + 2 / 3) / 3,
    ),
    # Predictions 0, 3, 1, 1, 2, 2, 0 against 0, 0, 1, 1, 2, 2, 1: 5 of 7 right. F1: class 0 TP 1,
    # FP 1, FN 1 -> 1/2; class 1 TP 2, FN 1 -> 4/5; class 2 TP 2 -> 1; class 3 is predicted once
    # but never the target: it counts, with F1 0.
    "predicted_only": (
        [[2.0, 0.1, 0.3, -1.0], [0.2, 0.1, 0.0, 1.0], [0.0, 3.0, 1.0, -1.0],
         [0.1, 2.0, 0.4, -1.0], [0.0, 0.5, 2.5, -1.0], [0.0, 0.3, 4.2, -1.0], [0.5, 0.4, 0.3, 0.2]],
        [0, 0, 1, 1, 2, 2, 1],
        5 / 7,
        (1 / 2 + 4 / 5 + 1 + 0) / 4,
    ),
    "all_right": ([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]], [0, 1, 0], 1.0, 1.0),
}  # fmt: skip


@pytest.mark.parametrize("case", SCORE_CASES)
def test_score_matches_a_hand_count(case: str):
    logits, targets, accuracy, f1 = SCORE_CASES[case]
    actual = score(torch.tensor(logits), torch.tensor(targets), len(logits[0]))
    expected = {"loss": cross_entropy_by_hand(logits, targets), "accuracy": accuracy, "f1": f1}
    assert actual == pytest.approx(expected, rel=1e-6)


def test_normalize_matches_torchvision():
    # batches.normalize takes uint8 pixels; torchvision's Normalize takes [0, 1] floats.
    images = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = Normalize(mean, std)(images.float() / 255)
    torch.testing.assert_close(normalize(images, mean, std), expected, rtol=1e-5, atol=1e-5)


# --- non-finite loss ------------------------------------------------------------------------


class NaNOnCall(nn.Module):
    """A linear classifier whose output is NaN on the `bad_call`-th forward pass."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.linear = nn.Linear(3 * SIZE * SIZE, NUM_CLASSES)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.linear(images.flatten(1))
        return logits * float("nan") if self.calls == self.bad_call else logits


@pytest.mark.parametrize("bad_call", [1, 2, 3])
def test_nan_loss_names_epoch_and_batch(bad_call: int):
    model = NaNOnCall(bad_call)
    data = random_batches(6)
    with pytest.raises(NonFiniteLoss) as error:
        train_one_epoch(model, data, make_optimizer(optim_params(), model, "6"), LoopOptions(batch_size=2), 7)
    assert isinstance(error.value, UserError)  # shown as one line, exit code 2
    message = str(error.value)
    assert f"training loss became nan in epoch 7, batch {bad_call} of 3" in message
    assert "Checkpoints of earlier epochs are kept" in message


def test_finite_epoch_returns_the_size_weighted_mean_loss():
    # lr 0 and no BatchNorm: each item's loss does not depend on its batch, so the epoch's loss
    # over batches of 2, 2 and 1 must be the plain mean over the 5 items (an unweighted mean of
    # the three batch means would differ).
    model = NaNOnCall(bad_call=0)
    data = random_batches(5)
    with torch.no_grad():
        images, targets = data.load(torch.arange(5))
        expected = nn.functional.cross_entropy(model(images), targets).item()
    batch_means = [
        nn.functional.cross_entropy(model.linear(images[i].flatten(1)), targets[i]).item()
        for i in ([0, 1], [2, 3], [4])
    ]
    assert sum(batch_means) / 3 != pytest.approx(expected, rel=1e-6)  # the weighting matters here

    loss = train_one_epoch(model, data, make_optimizer(optim_params(lr=0.0), model, "6"), LoopOptions(batch_size=2), 1)
    assert loss == pytest.approx(expected, rel=1e-6)


# --- seeding and repeatability ---------------------------------------------------------------


def test_epoch_generator_is_a_function_of_seed_and_epoch():
    def order(seed: int, epoch: int) -> torch.Tensor:
        return torch.randperm(100, generator=epoch_generator(seed, epoch))

    assert torch.equal(order(3, 1), order(3, 1))
    assert not torch.equal(order(3, 1), order(3, 2))
    assert not torch.equal(order(3, 1), order(4, 1))
    # Neighbouring seeds share no epoch: seed 3's second epoch is not seed 4's first (seeds
    # 0, 1, 2 of one recipe would otherwise train on the same orders, one epoch apart).
    assert not torch.equal(order(3, 2), order(4, 1)) and not torch.equal(order(3, 1), order(2, 2))
    # The epoch's batches are that permutation, split.
    batches = batch_indices(100, 32, epoch_generator(3, 1))
    assert torch.equal(torch.cat(batches), order(3, 1))


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> CropBatches:
    """12 pictures of several shapes, as random resized crops of 8 px (cut on threads)."""
    shapes = [(12, 9), (9, 12), (10, 10), (20, 8)] * 3
    return crop_batches_of(tmp_path_factory.mktemp("crops"), shapes, SIZE)


def run_epoch(
    initial: nn.Module, data: CropBatches, seed: int, epoch: int, optimizer: Optimizer, global_seed: int
) -> tuple[nn.Module, float]:
    model = copy.deepcopy(initial)
    torch.manual_seed(global_seed)  # the epoch must not depend on the global RNG's state (dropout)
    loss = train_one_epoch(
        model,
        data,
        make_optimizer(optim_params(optimizer=optimizer), model, "6"),
        LoopOptions(batch_size=4, seed=seed, hflip=True, min_scale=0.5),
        epoch,
    )
    return model, loss


@pytest.mark.parametrize("optimizer", list(Optimizer))
def test_same_seed_and_epoch_give_bit_identical_weights(crops: CropBatches, optimizer: Optimizer):
    torch.manual_seed(0)
    initial = tiny_model()
    first, first_loss = run_epoch(initial, crops, seed=5, epoch=2, optimizer=optimizer, global_seed=1)
    second, second_loss = run_epoch(initial, crops, seed=5, epoch=2, optimizer=optimizer, global_seed=2)
    other, _ = run_epoch(initial, crops, seed=5, epoch=3, optimizer=optimizer, global_seed=1)

    state, second_state = first.state_dict(), second.state_dict()
    assert first_loss == second_loss
    for name, tensor in state.items():
        assert torch.equal(tensor, second_state[name]), name
    # Controls: training did change the weights, and another epoch's order changes them differently.
    assert not torch.equal(state["0.weight"], initial.state_dict()["0.weight"])
    assert not torch.equal(state["0.weight"], other.state_dict()["0.weight"])


def accumulated_epoch(initial: nn.Module, batch_size: int, accumulate: int, clip: float = 0) -> tuple[nn.Module, float]:
    model = copy.deepcopy(initial)
    loss = train_one_epoch(
        model,
        random_batches(10),
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        LoopOptions(batch_size=batch_size, accumulate=accumulate, clip_grad_norm=clip),
        1,
    )
    return model, loss


@pytest.mark.parametrize("clip", [0.0, 0.05], ids=["unclipped", "clipped"])
def test_accumulated_batches_take_the_step_of_their_whole_batch(clip: float):
    """2 accumulated batches of 4 step as one batch of 8, the ragged last step included (10
    items: 4 + 4, then 2), gradient clipping too: the step's whole gradient is clipped (0.05
    binds: the unclipped gradients' norms are larger). No BatchNorm or dropout here: those
    see each batch apart."""
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    whole, whole_loss = accumulated_epoch(initial, batch_size=8, accumulate=1, clip=clip)
    parts, parts_loss = accumulated_epoch(initial, batch_size=8, accumulate=2, clip=clip)
    if clip:
        unclipped, _ = accumulated_epoch(initial, batch_size=8, accumulate=1)
        assert not torch.allclose(unclipped.state_dict()["4.weight"], whole.state_dict()["4.weight"], atol=1e-4)
    assert parts_loss == pytest.approx(whole_loss, rel=1e-6)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(parts.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)
    # Control: stepping on each batch of 4 is another training.
    small, _ = accumulated_epoch(initial, batch_size=4, accumulate=1)
    assert not torch.allclose(small.state_dict()["4.weight"], whole.state_dict()["4.weight"], atol=1e-4)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_each_step_takes_only_its_own_batches_gradient(accumulate: int):
    """Each optimizer step starts from zero gradients, not from the sum of the epoch's earlier
    steps. Twelve copies of one image and label make every batch alike whatever the order, so
    the epoch is plain SGD steps written here with torch alone (a run compared with another
    run of the loop would share any slip in when it zeroes): 3 of 4 images, or with 2 batches
    accumulated, one of 8 and a ragged one of 4 (whose mean gradient is a batch of 4's). A
    small rate, so that the logits stay far from saturating and each step still moves them."""
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, NUM_CLASSES))
    image = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    data = ImageBatches(
        image.expand(12, -1, -1, -1).contiguous(), torch.arange(12), torch.full((12,), 1), torch.device("cpu"),
        [0.5, 0.5, 0.5], [0.25, 0.25, 0.25],
    )  # fmt: skip
    model = copy.deepcopy(initial)
    options = LoopOptions(batch_size=4 * accumulate, accumulate=accumulate)
    train_one_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.002), options, 1)

    reference = copy.deepcopy(initial)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.002)
    inputs = (image.float() / 255 - 0.5) / 0.25
    for _ in range(math.ceil(12 / (4 * accumulate))):
        sgd.zero_grad()
        nn.functional.cross_entropy(reference(inputs.expand(4, -1, -1, -1)), torch.full((4,), 1)).backward()
        sgd.step()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_clipping_bounds_each_step_to_the_gradient_norm_given(accumulate: int):
    """SGD without momentum or decay moves the weights by lr x the gradient: clipped, by at most lr x the bound."""
    torch.manual_seed(0)
    initial = tiny_model()

    def change(clip: float) -> float:
        model = copy.deepcopy(initial)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_one_epoch(
            model,
            random_batches(8),
            torch.optim.SGD(model.parameters(), lr=1.0),
            LoopOptions(batch_size=8, accumulate=accumulate, clip_grad_norm=clip),
            1,
        )
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    assert change(0.0) > 0.1  # the bound below is far under the unclipped step
    assert change(0.01) == pytest.approx(0.01, rel=1e-4)


def test_flip_tta_is_the_mean_of_the_two_views_logits() -> None:
    """evaluate.tta: hflip, against torchvision's horizontal_flip on a model that sees where
    each pixel is (so a vertical flip, or none, would give other logits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, NUM_CLASSES)).eval()
    images = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        plain, mirrored = model(images), model(horizontal_flip(images))
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    torch.testing.assert_close(batch_logits(model, images, flip=True), (plain + mirrored) / 2)


class InputRecorder(nn.Module):
    """A linear classifier that keeps each batch it is given: what the loop's augmentation made."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * SIZE * SIZE, NUM_CLASSES)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        return self.linear(images.flatten(1))


def test_hflip_without_crops_mirrors_half_the_images_as_random_horizontal_flip_does() -> None:
    """train.augment.hflip alone (no crops: the loop flips the decoded inputs): each visit of an
    epoch is its image, normalised as torchvision's Normalize does, either as it is or as
    torchvision's horizontal_flip mirrors it (not upside down), each drawn apart with
    RandomHorizontalFlip's default probability. 400 visits: a share within 0.08 of it is
    3 standard deviations wide, and one draw for the whole epoch gives 0 or 1."""
    data = random_batches(400)
    model = InputRecorder()
    # lr 0: the weights stay, only the inputs matter here.
    train_one_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.0), LoopOptions(100, hflip=True), 1)
    visits = torch.cat(model.seen)
    images = Normalize(data.mean, data.std)(data.images.float() / 255)
    mirrored = horizontal_flip(images)
    assert not torch.allclose(images, mirrored)

    # Which image each visit is: its nearest, as it is or mirrored (the images are random, so far apart).
    plain_distance, plain_index = torch.cdist(visits.flatten(1), images.flatten(1)).min(dim=1)
    mirror_distance, mirror_index = torch.cdist(visits.flatten(1), mirrored.flatten(1)).min(dim=1)
    flipped = mirror_distance < plain_distance
    index = torch.where(flipped, mirror_index, plain_index)
    assert torch.equal(index.sort().values, torch.arange(len(data)))  # each image visited once
    torch.testing.assert_close(visits, torch.where(flipped.view(-1, 1, 1, 1), mirrored[index], images[index]))
    assert flipped.float().mean().item() == pytest.approx(v2.RandomHorizontalFlip().p, abs=0.08)


def test_turning_a_recipe_on_keeps_the_epochs_order_crops_and_flips() -> None:
    """docs/design.md: an epoch's order, boxes and flips come from the seed and the epoch alone,
    the recipes' per-image seeds drawn after them: the same with the seeds drawn (a policy,
    erasing or mixing on) as without, for crops over pictures of several sizes; those seeds
    change with the epoch."""
    sizes = torch.tensor([[40, 30], [30, 40], [64, 64]]).repeat(20, 1)
    plain = epoch_order(len(sizes), epoch_generator(3, 2), True, 0.2, 4 / 3, sizes, keys=False)
    keyed = epoch_order(len(sizes), epoch_generator(3, 2), True, 0.2, 4 / 3, sizes, keys=True)
    assert plain.keys is None and keyed.keys is not None and keyed.keys.unique().numel() == len(sizes)
    assert torch.equal(plain.order, keyed.order)
    assert torch.equal(plain.draws.boxes, keyed.draws.boxes) and torch.equal(plain.draws.flips, keyed.draws.flips)
    # Each image's seed is drawn anew each epoch (a policy's op, an erasing box): the next epoch
    # gives every image another one.
    following = epoch_order(len(sizes), epoch_generator(3, 3), True, 0.2, 4 / 3, sizes, keys=True)
    by_image = [plan.keys[torch.argsort(plan.order)] for plan in (keyed, following)]
    assert (by_image[0] != by_image[1]).all()


def test_the_loop_hands_each_image_new_recipe_keys_each_epoch() -> None:
    """docs/design.md: the recipes' per-image seeds are drawn per epoch, so an image gets another
    policy op and erasing box each epoch. Seen where the loop hands them to the augmentation:
    the keys each image arrives with, by its pixels, over two epochs of train_one_epoch."""
    data = random_batches(8)
    seen: list[dict[bytes, int]] = [{}, {}]

    def recording(epoch: int) -> Augment:
        def augment(
            images: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            assert len(keys) == len(images)
            seen[epoch].update((image.numpy().tobytes(), key) for image, key in zip(images, keys.tolist(), strict=True))
            return images, targets

        return augment

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, NUM_CLASSES))
    optimizer = make_optimizer(optim_params(), model, "6")
    for epoch in range(2):
        train_one_epoch(model, data, optimizer, LoopOptions(batch_size=4, seed=3, augment=recording(epoch)), epoch + 1)
    assert len(seen[0]) == len(seen[1]) == len(data)  # every image visited, each told apart by its pixels
    assert seen[0].keys() == seen[1].keys()
    assert all(seen[0][image] != seen[1][image] for image in seen[0])
    assert len(set(seen[0].values())) == len(data)  # and no two images share a draw


class SeedRecorder(nn.Module):
    """A linear model that records torch's global RNG seed each time it runs, which dropout
    and MixUp/CutMix draw from."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * SIZE * SIZE, NUM_CLASSES)
        self.seeds: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seeds.append(torch.initial_seed())
        return self.linear(images.flatten(1))


def test_dropout_and_mixing_draw_per_epoch_and_process_and_rank_0_as_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/distributed.md: what draws from torch's global RNG is seeded per (seed, epoch,
    process): process 0 draws what one process draws, the others their own, each epoch anew.
    The epoch run as rank 0 and rank 1 of 2 (their losses summed as one process's alone: no
    other process here), and as one process."""
    monkeypatch.setattr(engine, "all_sum", lambda values, ranks: values)
    seen = {}
    for name, ranks, epoch in [("one", SINGLE, 1), ("rank 0", Ranks(0, 2), 1), ("rank 1", Ranks(1, 2), 1),
                               ("one, epoch 2", SINGLE, 2)]:  # fmt: skip
        model = SeedRecorder()
        optimizer = make_optimizer(optim_params(), model, "6")
        train_one_epoch(model, random_batches(8), optimizer, LoopOptions(batch_size=4, seed=3, ranks=ranks), epoch)
        assert len(set(model.seeds)) == 1  # seeded once, at the epoch's start
        seen[name] = model.seeds[0]
    assert seen["rank 0"] == seen["one"]
    assert len({seen["one"], seen["rank 1"], seen["one, epoch 2"]}) == 3
