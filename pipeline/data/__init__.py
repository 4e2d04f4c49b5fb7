"""Images in, arrays out: find and decode images, split them, and cache the decoded pixels.

Every image is read and decoded once, in the pass that also checks and hashes it
(`split.usable_images`), into the model's inputs (a uint8 array on disk) and a training copy
of the whole picture (a JPEG), both keyed by the manifest, the sizing and the code that
decodes them. Epochs read those, so no epoch decodes a file; random resized crops are cut from
the copies (batches.CropBatches), the recipes run on tensors (pipeline.augment).

The modules, each importing only those listed above it:

    scan.py        the class folders' image files, and why anything else there is skipped
    decode.py      one file to the model's input (`Sizing`, `load_image`): libjpeg-turbo or
                   Pillow, upright, RGB, resized and centre-cropped as the weights state
    copies.py      the training copy of a decoded image, and crops cut from it (`make_copy`,
                   `TrainingCopies`)
    inspection.py  one read of each file, on every core: sha1, perceptual hash, a check
                   that it decodes, its pixels and its copy (`inspect_file`, `inspect_all`)
    cache.py       the decoded-image cache: a manifest's inputs at one sizing as one
                   memory-mapped array file, and its training copies (`decoded_images`,
                   `training_copies`, `code_version`)
    split.py       the manifest's rows: usable images, duplicate groups, the stratified
                   split (`usable_images`, `stratified_split`, `read_manifest`); enough
                   classes for a classifier, from the scan alone (`scan_classes`)
"""
