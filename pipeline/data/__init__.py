"""Images in, arrays out: find and decode images, split them, and cache the decoded pixels.

Every image is read and decoded once, in the pass that also checks and hashes it
(`split.usable_images`), into a uint8 array on disk keyed by the manifest, the sizing and
the preprocessing version. Epochs read that array, so no epoch decodes a file; augmentation
then runs on tensors (engine.apply_augmentation).

The modules, each importing only those listed above it:

    scan.py        the class folders' image files, and why anything else there is skipped
    decode.py      one file to the model's input (`Sizing`, `load_image`): libjpeg-turbo or
                   Pillow, upright, RGB, resized and kept as a square around the centre crop
    inspection.py  one read of each file, on every core: sha1, perceptual hash, a check
                   that it decodes, and its pixels (`inspect_file`, `inspect_all`)
    cache.py       the decoded-image cache: a manifest's pixels at one sizing as one
                   memory-mapped array file (`decoded_images`, PREPROCESSING_VERSION)
    split.py       the manifest's rows: usable images, duplicate groups, the stratified
                   split (`usable_images`, `stratified_split`, `read_manifest`); enough
                   classes for a classifier, from the scan alone (`scan_classes`)
"""
