"""A folder of your own images as a dataset: ``load_dataset("folder:PATH")`` (notebook 01).

Layouts (torchvision's ImageFolder): ``PATH/train/<class>/*`` with ``PATH/test/<class>/*`` (or
``val/``), or one ``PATH/<class>/*`` tree, split into train and test in each class
(``test_fraction``, seeded by ``split_seed``). Every image is decoded once (``scan``) to
``size x size`` and 1 or 3 channels; mean/std come from the training split; the uint8 images are
cached on disk (``cache``) keyed by the folder's file list (paths, sizes, modification times) and
the settings, so the second load only lists the folder and maps the cache.

Bad input: an unreadable image (not an image, truncated, corrupt, over ``max_pixels``) is skipped
and named in a ``FolderWarning`` with the count (``FolderOptions(skip_bad=False)`` refuses
instead); files without an image extension are ignored and counted in the same warning. A folder
that is not a dataset (no classes, one class, an empty class, a class missing from ``test/``, a
symlink loop) is a ``DataError`` of one line. A read-only folder is cached elsewhere, and the
warning says where.
"""
from distill_utils.folders.load import FolderOptions, FolderWarning, load_folder
from distill_utils.folders.scan import PREFIX, absolute_name, dataset_problem, scan_folder

__all__ = ["PREFIX", "FolderOptions", "FolderWarning", "absolute_name", "dataset_problem", "load_folder",
           "scan_folder"]
