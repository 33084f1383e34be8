"""dlio_benchmark.storage.storage_handler (stand-in): Namespace and the DataStorage base class
every DLIO storage backend subclasses (its abstract methods, the config read in __init__)."""
from abc import ABC, abstractmethod

from dlio_benchmark.utils.config import ConfigArguments


class Namespace:
    def __init__(self, name, type):
        self.name = name
        self.type = type


class DataStorage(ABC):
    def __init__(self, framework=None):
        self._args = ConfigArguments.get_instance()
        # the real class asks FrameworkFactory for native I/O; no framework here
        self.framework = None
        self.is_framework_nativeio_available = False

    @abstractmethod
    def get_uri(self, id):
        pass

    @abstractmethod
    def create_namespace(self, exist_ok=False):
        pass

    @abstractmethod
    def get_namespace(self):
        pass

    @abstractmethod
    def create_node(self, id, exist_ok=False):
        return True

    @abstractmethod
    def get_node(self, id):
        return None

    @abstractmethod
    def walk_node(self, id, use_pattern=False):
        return None

    @abstractmethod
    def delete_node(self, id):
        return False

    def put_data(self, id, data, offset=None, length=None):
        return False

    def get_data(self, id, data, offset=None, length=None):
        return None

    def isfile(self, id):
        return False
