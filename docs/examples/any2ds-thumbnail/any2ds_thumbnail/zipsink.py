"""`output_format: zip`: one `<shard>.zip` per shard holding each successful sample's files."""

import zipfile

from any2ds import SampleFilesWriter


class ZipWriter(SampleFilesWriter):
    name = "zip"
    container_suffix = ".zip"

    def open_container(self, fs, path):
        file = fs.open(path, "wb")
        return file, zipfile.ZipFile(file, "w")

    def add_file(self, container, name, data):
        container[1].writestr(name, data)

    def close_container(self, container):
        container[1].close()
        container[0].close()

    def read_container(self, fs, path):
        with fs.open(path, "rb") as file, zipfile.ZipFile(file) as archive:
            for name in archive.namelist():
                yield name, archive.read(name)
