"""A generic ImageFolder tree: one folder per class.

    <root>/<class>/<image>.{jpg,jpeg,png,bmp,tif}

or, with ``dataset.options.split_dirs`` (e.g. ``{train: train, val: val, test: test}``), one such
tree per split, ``<root>/<split_dir>/<class>/<image>``; the index then has a ``fold`` column for
the ``predefined`` protocol. Classes are the sorted folder names unless
``dataset.options.class_names`` lists them (a folder not in that list is an error naming it).
Ids are the image paths relative to the root, without extension. An image file that cannot be
read (a dangling symbolic link, no read permission) is left out, counted and named in the logs
of the image cache and the split; more than 1% of the files is an error naming them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import Source, SourceIndex, register_source
from ._files import (ChannelsOption, FileImagesMixin, check_unreadable, inside, labels_from_names,
                     list_image_names, require_root)


@register_source("imagefolder")
class ImageFolderSource(ChannelsOption, FileImagesMixin, Source):
    options = {"class_names": None, "split_dirs": None, "channels": 3}

    def image_root(self) -> Path:
        return require_root(self.name, self.root)

    def index(self) -> SourceIndex:
        root = self.image_root()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} not found")
        trees = ({None: "."} if self.opts["split_dirs"] is None else dict(self.opts["split_dirs"]))
        class_dirs: dict[object, list[Path]] = {}
        for fold, sub in trees.items():
            base = inside(root, sub, "dataset.options.split_dirs entry")
            if not base.is_dir():
                raise FileNotFoundError(f"image folder {str(base)!r} (split {fold!r}) not found")
            class_dirs[fold] = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        names = self.opts["class_names"] or sorted({d.name for ds in class_dirs.values() for d in ds})
        rows = []
        skipped: list[tuple[str, str]] = []
        for fold, dirs in class_dirs.items():
            for d in dirs:
                label = int(labels_from_names([d.name], names, f"image folder {str(d)!r}")[0])
                prefix = d.relative_to(root).as_posix() + "/"
                for name in list_image_names(d, skipped):
                    rel = prefix + name
                    rows.append((rel.rsplit(".", 1)[0], label, rel, fold))
        if not rows:
            raise ValueError(f"image folder {str(root)!r} has no class folder with images"
                             + (f" that can be read ({len(skipped)} cannot)" if skipped else ""))
        check_unreadable(skipped, len(rows), f"image folder {str(root)!r}")
        table = pd.DataFrame(rows, columns=["id", "label", "path", "fold"])
        if self.opts["split_dirs"] is None:
            table = table.drop(columns="fold")
        return SourceIndex(table, list(names), skipped=skipped)
