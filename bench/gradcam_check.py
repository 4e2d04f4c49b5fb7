"""The pipeline's Grad-CAM (pipeline.heatmaps) against pytorch-grad-cam's, on the same layer.

    pip install grad-cam==1.5.7     # not the pipeline's: MIT; brings OpenCV, matplotlib, scikit-learn, SciPy
    python -m bench.gradcam_check

For a few models of each family, with random weights, on three random images and the
classes the model predicts for them: the layer `heatmaps.feature_layer` picks is handed to
pytorch-grad-cam's `GradCAM` (a transformer's tokens through its `reshape_transform`, as its
documentation does for ViTs, with `FeatureLayer.as_maps`). pytorch-grad-cam scales each map
to [0, 1] by its minimum and maximum, the pipeline by its maximum alone, so the pipeline's
maps are scaled its way first. Prints, per model, the largest difference and the correlation.

Where the two differ, the CAM column says which is right: for a network that ends in global
average pooling and one linear layer, Grad-CAM equals CAM (Zhou et al., 2016),
ReLU(sum_k W[c, k] A_k), which needs no gradient; it is the pipeline's map's largest
difference from CAM computed from the head's weights.
"""

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pipeline.heatmaps import feature_layer, grad_cam
from pipeline.models import new_model

# (arch, input size, constructor arguments): random weights, small inputs, so it runs in a minute on a CPU.
MODELS = [
    ("resnet18", 224, {}),
    ("mobilenet_v3_small", 96, {}),
    ("efficientnet_b0", 128, {}),
    ("densenet121", 128, {}),
    ("swin_t", 64, {}),
    ("timm/test_vit", 64, {"img_size": 64}),
    ("timm/deit_tiny_distilled_patch16_224", 64, {"img_size": 64}),
    ("timm/swin_tiny_patch4_window7_224", 224, {}),
    ("timm/convnext_atto", 64, {}),
]

# The linear head right after global average pooling, where there is one. (DenseNet applies a
# ReLU in place to its `features` before pooling; the map kept from the hook is that tensor.)
CAM_HEADS = {"resnet18": "fc", "efficientnet_b0": "classifier.1", "densenet121": "classifier"}


class Input(torch.nn.Identity):
    """A module whose output is a block's input, for GradCAM's `target_layers`."""


def cam_difference(
    model: torch.nn.Module, head: str, layer_name: str, images: torch.Tensor, ours: torch.Tensor
) -> float:
    """The largest difference between `ours` and CAM from the weights of `head`."""
    maps: list[torch.Tensor] = []
    handle = model.get_submodule(layer_name).register_forward_hook(lambda module, args, output: maps.append(output))
    with torch.no_grad():
        classes = model(images).argmax(dim=1)
    handle.remove()
    cam = F.relu(torch.einsum("nk,nkhw->nhw", model.get_submodule(head).weight[classes], maps[0]))
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return float((ours - cam / cam.amax(dim=(1, 2), keepdim=True)).abs().max())


def compare(arch: str, size: int, kwargs: dict) -> tuple[str, float, float, float | None]:
    torch.manual_seed(0)
    model = new_model(arch, kwargs).eval()
    layer = feature_layer(model, size)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        classes = model(images).argmax(dim=1)
    ours = grad_cam(model, images, classes, layer)
    versus_cam = cam_difference(model, CAM_HEADS[arch], layer.name, images, ours) if arch in CAM_HEADS else None
    ours = ours.numpy()
    low = ours.min(axis=(1, 2), keepdims=True)
    ours = (ours - low) / (ours.max(axis=(1, 2), keepdims=True) - low + 1e-7)
    module = model.get_submodule(layer.name)
    if layer.layout == "tokens":  # GradCAM hooks a module's output: give the block's input one
        hook, forward = Input(), module.forward
        module.forward = lambda x, *args, **kw: forward(hook(x), *args, **kw)
        module = hook
    reshape = None if layer.layout == "NCHW" else layer.as_maps
    cam = GradCAM(model=model, target_layers=[module], reshape_transform=reshape)
    theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    correlation = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    return layer.name, float(np.abs(ours - theirs).max()), correlation, versus_cam


def main() -> None:
    print(f"{'model':40} {'layer':12} {'max |difference|':>17} {'correlation':>12} {'CAM':>8}")
    for arch, size, kwargs in MODELS:
        name, difference, correlation, cam = compare(arch, size, kwargs)
        versus_cam = "" if cam is None else f"{cam:8.1e}"
        print(f"{arch:40} {name:12} {difference:17.4f} {correlation:12.5f} {versus_cam:>8}", flush=True)


if __name__ == "__main__":
    main()
