"""``sssc data synth`` and ``sssc data check``.

``sssc data synth --out DIR [--seed N]`` writes the synthetic dataset in the REFER layout under
``DIR/synthetic``. ``sssc data check`` opens a REFER dataset the way training does, also reads every
referenced image's header, prints counts per split and exits 0; on a problem it prints one message
naming the bad file or item and exits 2.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

__all__ = ["add_data_commands"]


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sssc data {synth,check}`` on the ``sssc`` parser's subparsers."""
    from .synthetic import generate

    p = subparsers.add_parser("data", help="prepare and check datasets")
    sub = p.add_subparsers(dest="data_cmd", required=True)

    default = {k: v.default for k, v in inspect.signature(generate).parameters.items()}
    s = sub.add_parser(
        "synth",
        help="write the synthetic dataset (REFER layout)",
        description="With no options: the embedded default's dataset.",
    )
    s.add_argument("--out", required=True, help="dataset root; writes OUT/synthetic/")
    s.add_argument("--seed", type=int, default=default["seed"], help="(default: %(default)s)")
    s.add_argument(
        "--num-images", type=int, default=default["num_images"], help="(default: %(default)s)"
    )
    s.add_argument(
        "--image-size", type=int, default=default["image_size"], help="side (default: %(default)s)"
    )
    s.add_argument(
        "--val-images",
        type=int,
        default=default["val_images"],
        help="val images (default: %(default)s; 0: a tenth)",
    )
    s.add_argument(
        "--test-images",
        type=int,
        default=default["test_images"],
        help="test images (default: %(default)s; 0: a tenth)",
    )
    s.set_defaults(func=_synth)

    c = sub.add_parser(
        "check",
        help="validate a REFER dataset on disk and print counts per split",
        description="Exit 0 when the dataset is valid, 2 with a message naming the bad file or "
        "item when it is not. Give --root/--dataset/--split-by, or a --config whose data section "
        "names them (flags win).",
    )
    c.add_argument("--root", help="folder holding <dataset>/instances.json and refs(*).p")
    c.add_argument("--dataset", help="refcoco | refcoco+ | refcocog | synthetic | ...")
    c.add_argument("--split-by", help="unc | umd | google | synthetic: picks refs(<split_by>).p")
    c.add_argument(
        "--image-dir",
        help="image folder; default <root>/<dataset>/images if it exists, else "
        "<root>/images/mscoco/images/train2014 (the REFER API's layout)",
    )
    c.add_argument("--config", help="take root, dataset, split_by and image_dir from a config")
    c.add_argument(
        "--strict",
        action="store_true",
        help="also fail on counted items (e.g. refs without text, empty GT masks)",
    )
    c.add_argument(
        "--headers-only",
        action="store_true",
        help="read only each image's header (size), not the whole image (faster)",
    )
    c.set_defaults(func=_check)


def _synth(args: argparse.Namespace) -> int:
    from .refer import DatasetError, Refer
    from .synthetic import generate

    t0 = time.perf_counter()
    try:
        folder = generate(
            args.out,
            args.seed,
            args.num_images,
            args.image_size,
            val_images=args.val_images,
            test_images=args.test_images,
        )
        refer = Refer(args.out, "synthetic", "synthetic", folder / "images")
    except (ValueError, OSError, DatasetError) as e:
        print(f"sssc data synth: {e}", file=sys.stderr)
        return 2
    n_refs = len(refer.refs)
    n_sents = sum(len(r.sentences) for r in refer.refs.values())
    print(
        f"wrote {folder}: {len(refer.images)} images, {n_refs} objects, {n_sents} expressions "
        f"in {time.perf_counter() - t0:.1f} s (seed {args.seed})"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..config import ConfigError, DataConfig, load_config
    from .refer import DatasetError, Refer

    root, dataset, split_by, image_dir = args.root, args.dataset, args.split_by, args.image_dir
    data = DataConfig()  # how the reader treats what it counts: the defaults, or the --config's
    if args.config:
        try:
            data = load_config(args.config, []).data
        except ConfigError as e:
            print(f"sssc data check: {e}", file=sys.stderr)
            return 2
        root = root or data.root
        dataset = dataset or data.dataset
        split_by = split_by or data.split_by
        image_dir = image_dir or data.image_dir
    missing = [
        f for f, v in (("--root", root), ("--dataset", dataset), ("--split-by", split_by)) if not v
    ]
    if missing:
        print(f"sssc data check: give {', '.join(missing)} (or --config FILE)", file=sys.stderr)
        return 2
    from .refer import default_image_dir

    image_dir = Path(image_dir) if image_dir else default_image_dir(root, dataset)
    try:
        refer = Refer(
            root,
            dataset,
            split_by,
            image_dir,
            data.polygon_overlap,
            data.empty_gt,
            data.empty_sentences,
        )
        tagged = _check_images(refer, args.headers_only)
    except DatasetError as e:
        print(f"sssc data check: {e}", file=sys.stderr)
        return 2

    print(f"{refer.refs_path}: {len(refer.categories)} categories, images in {image_dir}")
    rows = []
    for split in refer.splits():
        refs = refer.split_refs(split)
        n_img = len(refer.split_image_ids(split))
        rows.append((split, n_img, len(refs), sum(len(r.sentences) for r in refs)))
    rows.append(("total", *(sum(r[i] for r in rows) for i in (1, 2, 3))))
    print(f"{'split':<8} {'images':>8} {'objects':>8} {'expressions':>12}")
    for name, n_img, n_obj, n_expr in rows:
        print(f"{name:<8} {n_img:>8} {n_obj:>8} {n_expr:>12}")
    for kind, n in sorted(refer.warnings.items()):
        examples = "; ".join(refer.warning_examples[kind])
        what = "skipped" if refer.skipped(kind) else "counted, kept"
        print(f"{what} ({kind}): {n}, e.g. {examples}")
        if kind == "empty_mask" and not refer.skipped(kind):
            print(
                "  their expressions score IoU 0 in evaluation, as in the official code "
                "(README row 43); data.empty_gt: skip leaves these refs out everywhere"
            )
        if kind == "empty_sentence":
            print(
                "  the official code tokenizes them as they are ([CLS] [SEP]) and scores them "
                "(README row 44); data.empty_sentences: "
                + ("skip leaves them out" if not refer.skipped(kind) else "keep keeps them so")
            )
    if tagged:
        from .images import turns_shape

        info = refer.images
        turned = sum(turns_shape(t, info[i].height, info[i].width) for i, t in tagged)
        eg = ", ".join(f"{refer.image_path(i).name} (tag {t})" for i, t in tagged[:3])
        print(
            f"EXIF orientation: {len(tagged)} images carry a tag other than 1, {turned} of them "
            f"one that turns them to another shape; e.g. {eg}. sssc reads every image as stored, "
            "as the annotations are drawn on it; the official Stage 1 (cv2.imread) reads them "
            "turned (README row 42, segment.models.image_orientation)"
        )
    if args.strict and refer.warnings:
        kind = sorted(refer.warnings)[0]
        print(
            f"sssc data check: {refer.refs_path}: {sum(refer.warnings.values())} counted items "
            f"(--strict), first: {refer.warning_examples[kind][0]} ({kind})",
            file=sys.stderr,
        )
        return 2
    print("OK")
    return 0


def _check_images(refer, headers_only: bool = False) -> list[tuple[int, int]]:
    """Every referenced image decodes in full (PNG CRCs checked, 8-bit) at the size that
    ``instances.json`` gives; with ``headers_only``, only the size in its header.

    Returns:
        ``(image_id, tag)`` of each image whose EXIF orientation tag is not 1: sssc reads it as
        stored, the official Stage 1 turned (README row 42).
    """
    from PIL import Image
    from tqdm import tqdm

    from .images import ImageReadError, exif_orientation
    from .refer import DatasetError

    ids = sorted({r.image_id for r in refer.refs.values()})
    tagged = []
    for image_id in tqdm(ids, desc="images", unit="img", file=sys.stderr, disable=len(ids) < 500):
        path = refer.image_path(image_id)
        if not headers_only:
            refer.load_image(image_id)  # raises DatasetError naming the file
        else:
            info = refer.images[image_id]
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except (OSError, ValueError) as e:
                raise DatasetError(f"{path}: cannot read image ({e})") from None
            if (h, w) != (info.height, info.width):
                raise DatasetError(
                    f"{path}: image is {h}x{w}, but {refer.instances_path} says "
                    f"{info.height}x{info.width} (image {image_id})"
                )
        try:
            tag = exif_orientation(path)
        except ImageReadError as e:
            raise DatasetError(str(e)) from None
        if tag != 1:
            tagged.append((image_id, tag))
    return tagged
