"""Convert image datasets (CIFAR-10, MNIST, LSUN, FFHQ, AFHQv2, ImageNet, image folders and ZIPs) into
the ZIP (or folder) layout that training/dataset.py reads; dataprep/conversion.py does the work."""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

from typing import Optional  # noqa: E402

import click  # noqa: E402

from dataprep import conversion  # noqa: E402
from torch_utils import cli  # noqa: E402

#----------------------------------------------------------------------------

@click.command(context_settings=cli.CONTEXT_SETTINGS)

# Input and output.
@click.option('--source',       help='Folder, ZIP, LSUN *_lmdb folder, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz', metavar='PATH', type=str, required=True)
@click.option('--dest',         help='Output ZIP (ends in .zip) or folder', metavar='PATH', type=str, required=True)
@click.option('--max-images',   help='Convert at most this many images', metavar='INT', type=click.IntRange(min=1), default=None)

# Geometry.
@click.option('--transform',    help='Crop before resizing', type=click.Choice(conversion.TRANSFORMS), default=None)
@click.option('--resolution',   help='Output resolution, e.g. 64x64', metavar='WxH', type=str, callback=cli.click_list(conversion.parse_resolution), default=None)

# Diagnostics.
@cli.debug_option

def cmdline(source: str, dest: str, max_images: Optional[int], transform: Optional[str], resolution: Optional[tuple[int, int]], debug: bool) -> None:
    """Convert an image dataset into the ZIP (or folder) layout used for training.

    \b
    Examples:
    python dataset_tool.py --source=downloads/cifar10/cifar-10-python.tar.gz --dest=datasets/cifar10-32x32.zip
    python dataset_tool.py --source=downloads/ffhq/images1024x1024 --dest=datasets/ffhq-64x64.zip --resolution=64x64
    python dataset_tool.py --source=downloads/imagenet/ILSVRC/Data/CLS-LOC/train \\
        --dest=datasets/imagenet-64x64.zip --resolution=64x64 --transform=center-crop

    \b
    Folder and ZIP sources are read recursively in sorted order. Labels come from a dataset.json
    in the source ({"labels": [[relpath, class], ...]}); without one, from the names of the
    top-level folders when all images sit in two or more of them; otherwise there are none.

    \b
    Output images must be square with a power-of-two side: use --resolution to resize, with
    --transform=center-crop to crop the largest centred square first. --transform=center-crop-wide
    (EDM's LSUN recipe, e.g. --resolution=512x384) keeps the full width w and the centred
    round(W*h/w) rows of a w x h image, resizes them to WxH and pads to WxW with black bars; images
    narrower than W or wider than W:H are skipped and counted.
    """
    with cli.one_line_errors(debug):
        result = conversion.convert_dataset(source=source, dest=dest, max_images=max_images, transform=transform, resolution=resolution)
    click.echo(f'Wrote {result.written} images to {dest}')
    if result.skipped:
        click.echo(f'Skipped {result.skipped} images smaller than {resolution[0]}x{resolution[1]} ({conversion.skip_reason(resolution)}).')

main = cmdline  # The name tests and tools/make_help_docs.py import.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
