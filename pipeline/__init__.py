"""Transfer learning of torchvision and timm image classifiers as a DVC pipeline (see README.md)."""

import os

# Every torch.load in this process, torchvision's download cache included (torch.hub passes
# weights_only=False), loads tensors only and refuses pickled code. The opposite switch
# would make torch refuse to load anything, so it is dropped.
# Set here, on import, rather than in cli.run_stage: it must hold before the first
# torch.load, and every entry point (each stage, tools.predict, bench, the tests) imports
# this package before it loads anything.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
