"""dlio_benchmark.common.enumerations (stand-in): the two enums a storage backend returns/uses."""
from enum import Enum


class MetadataType(Enum):
    """What a storage node is (DataStorage.get_node's answer)."""
    FILE = "file"
    DIRECTORY = "directory"
    S3_OBJECT = "s3_object"

    def __str__(self):
        return self.value


class NamespaceType(Enum):
    """Flat (object store) or hierarchical (file system) namespace."""
    FLAT = "flat"
    HIERARCHICAL = "Hierarchical"

    def __str__(self):
        return self.value
