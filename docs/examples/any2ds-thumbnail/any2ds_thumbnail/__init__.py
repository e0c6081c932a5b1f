"""any2ds plugin: the `thumbnail` processor and the `zip` output format."""

from any2ds import hookimpl

from any2ds_thumbnail.thumbnail import Thumbnail, dhash
from any2ds_thumbnail.zipsink import ZipWriter

ANY2DS_HOOKSPEC = ">=1.1,<2"  # SampleFilesWriter arrived in hook spec 1.1

__all__ = ["Thumbnail", "ZipWriter", "dhash"]


@hookimpl
def any2ds_register_processors(register):
    register(Thumbnail)


@hookimpl
def any2ds_register_writers(register):
    register(ZipWriter)
